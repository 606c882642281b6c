-- werkfluss 0002: durable time and outside events — hooks, their payloads,
-- wake-ups of waiting runs, child runs, cascading cancel.
--
-- Lock order, everywhere: a hook's advisory lock, then a run's queue row,
-- then its runs row; children before their parents.

-- A run keeps its queue row from start to finish: while it sleeps or waits,
-- available_at is its wake-up time ('infinity' when only an event can wake
-- it). wakeups counts events that may unblock it (a hook payload, a child
-- finishing); a worker suspending a run compares the count it has seen, so an
-- event that arrives while the run is being suspended is never lost.
ALTER TABLE werkfluss.queue ADD COLUMN wakeups integer NOT NULL DEFAULT 0;

-- A hook exists from the moment the workflow calls hook(); its token is
-- owned by that run for good.
CREATE TABLE werkfluss.hooks (
    token      text PRIMARY KEY,
    run_id     text NOT NULL,
    seq        integer NOT NULL,
    multi      boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX hooks_run_id_seq_idx ON werkfluss.hooks (run_id, seq);

-- Payloads sent to hooks, kept until a wait consumes them (consumed_seq is
-- the seq of the log record that holds the payload).
CREATE TABLE werkfluss.hook_payloads (
    id           bigserial PRIMARY KEY,
    token        text NOT NULL,
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    consumed_run text,
    consumed_seq integer
);
CREATE INDEX hook_payloads_token_idx ON werkfluss.hook_payloads (token, id);

CREATE INDEX runs_parent_active_idx ON werkfluss.runs (parent_id)
    WHERE parent_id IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled');

-- Something a run may be waiting for happened: make it claimable now if no
-- worker holds it, else tell the worker that holds it.
CREATE FUNCTION werkfluss._wake(run_id text) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    claimable boolean;
    wf        text;
BEGIN
    UPDATE werkfluss.queue q
       SET wakeups = q.wakeups + 1,
           available_at = CASE WHEN q.lease_id IS NULL THEN now() ELSE q.available_at END
     WHERE q.run_id = _wake.run_id
    RETURNING q.lease_id IS NULL, q.workflow INTO claimable, wf;
    IF FOUND THEN
        IF claimable THEN
            PERFORM pg_notify('werkfluss_queue', wf);
        ELSE
            PERFORM pg_notify('werkfluss_wake', _wake.run_id);
        END IF;
    END IF;
END
$$;

-- Deliver a payload to a hook. Returns what happened:
--   'delivered'   stored for the hook's run (or, for a token the user chose
--                 and no hook exists yet, kept until a hook claims it);
--   'unknown_token'           a generated token (wfh_...) never issued;
--   'already_used'            a single-use hook that already has its payload;
--   'run_ended'               the hook's run has finished;
--   'duplicate_early_payload' a second payload before the hook exists.
-- Anything but 'delivered' stores nothing.
CREATE FUNCTION werkfluss._send(token text, payload jsonb) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    h      werkfluss.hooks%ROWTYPE;
    status text;
BEGIN
    IF _send.token IS NULL OR _send.token = '' THEN
        RAISE EXCEPTION 'werkfluss.send: the token is empty' USING ERRCODE = '22023';
    END IF;
    -- Serializes sends for one token with the creation of its hook.
    PERFORM pg_advisory_xact_lock(hashtextextended('werkfluss.hook:' || _send.token, 0));
    SELECT * INTO h FROM werkfluss.hooks WHERE hooks.token = _send.token;
    IF NOT FOUND THEN
        IF _send.token LIKE 'wfh\_%' THEN
            RETURN 'unknown_token';
        END IF;
        IF EXISTS (SELECT 1 FROM werkfluss.hook_payloads p WHERE p.token = _send.token) THEN
            RETURN 'duplicate_early_payload';
        END IF;
        INSERT INTO werkfluss.hook_payloads (token, payload)
        VALUES (_send.token, coalesce(_send.payload, 'null'::jsonb));
        RETURN 'delivered';
    END IF;
    PERFORM 1 FROM werkfluss.queue q WHERE q.run_id = h.run_id FOR UPDATE;
    SELECT r.status INTO status FROM werkfluss.runs r WHERE r.id = h.run_id FOR UPDATE;
    IF status IS NULL OR status IN ('completed', 'failed', 'cancelled') THEN
        RETURN 'run_ended';
    END IF;
    IF NOT h.multi AND EXISTS (SELECT 1 FROM werkfluss.hook_payloads p WHERE p.token = h.token) THEN
        RETURN 'already_used';
    END IF;
    INSERT INTO werkfluss.hook_payloads (token, payload)
    VALUES (h.token, coalesce(_send.payload, 'null'::jsonb));
    PERFORM werkfluss._wake(h.run_id);
    RETURN 'delivered';
END
$$;

-- The public form: true if the payload was delivered (or kept), else false.
CREATE FUNCTION werkfluss.send(token text, payload jsonb DEFAULT 'null') RETURNS boolean
LANGUAGE sql AS $$
    SELECT werkfluss._send(token, payload) = 'delivered'
$$;

-- Cancel runs and everything below them that has not finished, children
-- first (the order in which finishing children take their locks).
CREATE FUNCTION werkfluss._cancel_tree(roots text[]) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    tree      text[];
    cancelled text[];
BEGIN
    WITH RECURSIVE t(id, depth) AS (
        SELECT r.id, 0 FROM werkfluss.runs r
         WHERE r.id = ANY(roots) AND r.status NOT IN ('completed', 'failed', 'cancelled')
        UNION
        SELECT c.id, t.depth + 1 FROM werkfluss.runs c JOIN t ON c.parent_id = t.id
         WHERE c.status NOT IN ('completed', 'failed', 'cancelled')
    )
    SELECT coalesce(array_agg(id ORDER BY depth DESC, id), '{}') INTO tree FROM t;
    IF cardinality(tree) = 0 THEN
        RETURN tree;
    END IF;
    PERFORM 1 FROM werkfluss.queue q WHERE q.run_id = ANY(tree)
     ORDER BY array_position(tree, q.run_id) FOR UPDATE;
    DELETE FROM werkfluss.queue q WHERE q.run_id = ANY(tree);
    WITH done AS (
        UPDATE werkfluss.runs r
           SET status = 'cancelled', finished_at = now(), updated_at = now(),
               wake_at = NULL, waiting_on = NULL
         WHERE r.id = ANY(tree) AND r.status NOT IN ('completed', 'failed', 'cancelled')
        RETURNING r.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO cancelled FROM done;
    IF cardinality(cancelled) > 0 THEN
        PERFORM pg_notify('werkfluss_runs',
            CASE WHEN length(array_to_string(cancelled, ',')) <= 7900
                      AND NOT EXISTS (SELECT 1 FROM unnest(cancelled) x WHERE strpos(x, ',') > 0)
                 THEN array_to_string(cancelled, ',') ELSE '*' END);
    END IF;
    RETURN cancelled;
END
$$;

-- Cancel a run that has not finished, with its child runs. Returns true if
-- it was cancelled, false if it had already finished; an unknown id is an
-- error. A parent waiting on the cancelled run is woken (it sees RunCancelled).
CREATE OR REPLACE FUNCTION werkfluss.cancel_run(run_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    parent    text;
    cancelled text[];
BEGIN
    SELECT r.parent_id INTO parent FROM werkfluss.runs r WHERE r.id = cancel_run.run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'werkfluss.cancel_run: no run with id %', cancel_run.run_id
            USING ERRCODE = 'P0002';
    END IF;
    cancelled := werkfluss._cancel_tree(ARRAY[cancel_run.run_id]);
    IF NOT cancel_run.run_id = ANY(cancelled) THEN
        RETURN false;
    END IF;
    IF parent IS NOT NULL THEN
        PERFORM werkfluss._wake(parent);
    END IF;
    RETURN true;
END
$$;
