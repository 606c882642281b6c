-- werkfluss 0007: retrying failed runs, pruning finished ones, and telling
-- a stored early payload from a delivered one.
--
-- Lock order, everywhere: a hook's advisory lock, then a run's queue row,
-- then its runs row; children before their parents.

-- _send: 'stored' (instead of 'delivered') when the token has no hook yet and
-- the payload is kept for the hook that will claim it.
CREATE OR REPLACE FUNCTION werkfluss._send(token text, payload jsonb) RETURNS text
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
        RETURN 'stored';
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

CREATE OR REPLACE FUNCTION werkfluss.send(token text, payload jsonb DEFAULT 'null') RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF send.token IS NULL OR btrim(send.token, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.send: the token is %',
                CASE WHEN send.token IS NULL THEN 'NULL' ELSE 'empty' END
            USING ERRCODE = '22023',
                  HINT = 'pass the token the workflow handed out (hook().token)';
    END IF;
    IF length(send.token) > 500 THEN
        RAISE EXCEPTION 'werkfluss.send: the token is % characters long; the limit is 500',
                length(send.token)
            USING ERRCODE = '22023',
                  HINT = 'no hook can have this token: hook tokens are at most 500 characters';
    END IF;
    RETURN werkfluss._send(send.token, send.payload) IN ('delivered', 'stored');
END
$$;

-- Retry a failed or cancelled run: it resumes from where it failed.
--
-- The records of failed steps and failed child runs are removed, with every
-- record the run made from the first of them on (their finished_at is the
-- order the run saw things in): a replay then reaches that point again and
-- executes the failed step anew. Payloads those records had received are
-- available again; children they had received are delivered again, and
-- children that failed or were cancelled without being received are retried
-- too. A run that failed in its own code (or a NonDeterminismError after a
-- fix is deployed) keeps its whole log and simply runs again from it. The
-- run's timeout is cleared. Returns false (and changes nothing) if the run
-- is not failed or cancelled; an unknown id is an error.
CREATE FUNCTION werkfluss.retry_run(run_id text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r      werkfluss.runs%ROWTYPE;
    cutoff timestamptz;
    child  text;
BEGIN
    IF retry_run.run_id IS NULL OR btrim(retry_run.run_id, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.retry_run: the run id is %',
                CASE WHEN retry_run.run_id IS NULL THEN 'NULL' ELSE 'empty' END
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO r FROM werkfluss.runs x WHERE x.id = retry_run.run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'werkfluss.retry_run: no run with id %', retry_run.run_id
            USING ERRCODE = 'P0002';
    END IF;
    IF r.status NOT IN ('failed', 'cancelled') THEN
        RETURN false;
    END IF;
    SELECT min(e.finished_at) INTO cutoff FROM werkfluss.events e
     WHERE e.run_id = r.id AND e.status = 'failed' AND e.kind IN ('step', 'child');
    IF cutoff IS NOT NULL THEN
        UPDATE werkfluss.runs c SET delivered = false
          FROM werkfluss.events e
         WHERE e.run_id = r.id AND e.kind = 'child' AND e.finished_at >= cutoff
           AND c.id = (e.output ->> 'run_id');
        UPDATE werkfluss.hook_payloads p SET consumed_run = NULL, consumed_seq = NULL
          FROM werkfluss.events e
         WHERE e.run_id = r.id AND e.kind = 'receive' AND e.finished_at >= cutoff
           AND p.consumed_run = r.id AND p.consumed_seq = e.seq;
        DELETE FROM werkfluss.events e WHERE e.run_id = r.id AND e.finished_at >= cutoff;
    END IF;
    FOR child IN
        SELECT c.id FROM werkfluss.runs c
         WHERE c.parent_id = r.id AND c.status IN ('failed', 'cancelled') AND NOT c.delivered
         ORDER BY c.id
    LOOP
        PERFORM werkfluss.retry_run(child);
    END LOOP;
    UPDATE werkfluss.runs x
       SET status = 'pending', result = NULL, error = NULL, finished_at = NULL, deadline = NULL,
           wake_at = NULL, waiting_on = NULL, updated_at = now()
     WHERE x.id = r.id;
    INSERT INTO werkfluss.queue (run_id, workflow) VALUES (r.id, r.workflow)
        ON CONFLICT (run_id) DO NOTHING;
    PERFORM pg_notify('werkfluss_queue', r.workflow);
    RETURN true;
END
$$;

-- Finished runs by age: what retention deletes first.
CREATE INDEX runs_finished_at_idx ON werkfluss.runs (finished_at) WHERE finished_at IS NOT NULL;

-- Delete finished runs older than older_than, at most batch_size of them,
-- with their log, hooks and payloads. A child whose outcome its (unfinished)
-- parent has not received yet is kept. Also deletes payloads sent to tokens
-- no hook ever claimed, and rows of workers stopped or dead, older than that.
-- One pruner at a time: with wait => false a second caller returns -1 at
-- once (workers use that); otherwise it waits its turn. Returns the number
-- of runs deleted.
CREATE FUNCTION werkfluss.prune_runs(older_than interval, batch_size integer DEFAULT 500,
                                     wait boolean DEFAULT true)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    victims text[];
    deleted integer;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'werkfluss.prune_runs: older_than must be a positive interval, got %',
                coalesce(older_than::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'e.g. interval ''14 days''';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
        RAISE EXCEPTION 'werkfluss.prune_runs: batch_size must be from 1 to 10000, got %',
                coalesce(batch_size::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF wait THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('werkfluss.prune', 0));
    ELSIF NOT pg_try_advisory_xact_lock(hashtextextended('werkfluss.prune', 0)) THEN
        RETURN -1;
    END IF;
    SELECT coalesce(array_agg(v.id), '{}') INTO victims FROM (
        SELECT r.id FROM werkfluss.runs r
         WHERE r.finished_at IS NOT NULL AND r.finished_at < now() - older_than
           AND r.status IN ('completed', 'failed', 'cancelled')
           AND (r.parent_id IS NULL OR r.delivered OR NOT EXISTS (
                    SELECT 1 FROM werkfluss.runs p WHERE p.id = r.parent_id AND p.finished_at IS NULL))
         ORDER BY r.finished_at
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED
    ) v;
    DELETE FROM werkfluss.hook_payloads p USING werkfluss.hooks h
     WHERE h.run_id = ANY(victims) AND p.token = h.token;
    DELETE FROM werkfluss.hooks h WHERE h.run_id = ANY(victims);
    DELETE FROM werkfluss.events e WHERE e.run_id = ANY(victims);
    DELETE FROM werkfluss.queue q WHERE q.run_id = ANY(victims);
    DELETE FROM werkfluss.runs r WHERE r.id = ANY(victims);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    DELETE FROM werkfluss.hook_payloads p
     WHERE p.id IN (SELECT x.id FROM werkfluss.hook_payloads x
                     WHERE x.received_at < now() - older_than AND x.consumed_seq IS NULL
                       AND NOT EXISTS (SELECT 1 FROM werkfluss.hooks h WHERE h.token = x.token)
                     LIMIT batch_size);
    DELETE FROM werkfluss.workers w
     WHERE w.state IN ('stopped', 'dead') AND coalesce(w.stopped_at, w.heartbeat_at) < now() - older_than;
    RETURN deleted;
END
$$;

REVOKE EXECUTE ON FUNCTION werkfluss.retry_run(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION werkfluss.prune_runs(interval, integer, boolean) FROM PUBLIC;

-- Roles that run workers (they may add to the queue) may retry and prune.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT DISTINCT r.rolname
          FROM pg_catalog.pg_class c
         CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
          JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE c.oid = 'werkfluss.queue'::regclass
           AND a.privilege_type = 'INSERT'
           AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION werkfluss.retry_run(text) TO %I', grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION werkfluss.prune_runs(interval, integer, boolean) TO %I',
                       grantee);
    END LOOP;
END
$$;

-- _cancel_tree, again until nothing is left: a child run started while its
-- parent was being cancelled (its start waited for the parent's queue row,
-- which the cancel then deleted) is created after the first look at the
-- tree; a second look, in a later statement, sees it and cancels it too.
CREATE OR REPLACE FUNCTION werkfluss._cancel_tree(roots text[]) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    tree      text[];
    cancelled text[] := '{}';
    done      text[];
    targets   text[] := roots;
    pass      integer := 0;
BEGIN
    LOOP
        pass := pass + 1;
        WITH RECURSIVE t(id, depth) AS (
            SELECT r.id, 0 FROM werkfluss.runs r
             WHERE r.id = ANY(targets) AND r.status NOT IN ('completed', 'failed', 'cancelled')
            UNION
            SELECT c.id, t.depth + 1 FROM werkfluss.runs c JOIN t ON c.parent_id = t.id
             WHERE c.status NOT IN ('completed', 'failed', 'cancelled')
        )
        SELECT coalesce(array_agg(id ORDER BY depth DESC, id), '{}') INTO tree FROM t;
        EXIT WHEN cardinality(tree) = 0 OR pass > 10;
        PERFORM 1 FROM werkfluss.queue q WHERE q.run_id = ANY(tree)
         ORDER BY array_position(tree, q.run_id) FOR UPDATE;
        DELETE FROM werkfluss.queue q WHERE q.run_id = ANY(tree);
        WITH d AS (
            UPDATE werkfluss.runs r
               SET status = 'cancelled', finished_at = now(), updated_at = now(),
                   wake_at = NULL, waiting_on = NULL
             WHERE r.id = ANY(tree) AND r.status NOT IN ('completed', 'failed', 'cancelled')
            RETURNING r.id
        )
        SELECT coalesce(array_agg(id), '{}') INTO done FROM d;
        cancelled := cancelled || done;
        -- Next pass: children of what was just cancelled that a concurrent
        -- start created meanwhile.
        targets := ARRAY(SELECT c.id FROM werkfluss.runs c
                          WHERE c.parent_id = ANY(tree)
                            AND c.status NOT IN ('completed', 'failed', 'cancelled'));
        EXIT WHEN cardinality(targets) = 0;
    END LOOP;
    IF cardinality(cancelled) > 0 THEN
        PERFORM pg_notify('werkfluss_runs',
            CASE WHEN length(array_to_string(cancelled, ',')) <= 7900
                      AND NOT EXISTS (SELECT 1 FROM unnest(cancelled) x WHERE strpos(x, ',') > 0)
                 THEN array_to_string(cancelled, ',') ELSE '*' END);
    END IF;
    RETURN cancelled;
END
$$;
