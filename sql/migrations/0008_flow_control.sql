-- werkfluss 0008: flow control. Queues with concurrency limits (across all
-- workers, per worker, per concurrency key), start and step rate limits,
-- priorities that age, delayed and debounced starts, and why a pending run
-- has not started yet.
--
-- Lock order, everywhere: a hook's advisory lock; then the advisory locks of
-- concurrency keys, in the order of their number; then queue rows; then runs
-- rows; children before their parents. Claims take the advisory locks of
-- queues first, in the order of the queues' names, and only *try* the locks
-- of keys: a claim never waits for a key, and nothing that holds a key lock
-- waits for a queue lock.
--
-- What counts against a limit: runs that hold a worker (lease_id IS NOT
-- NULL). A sleeping or waiting run holds none. A run held by a worker that
-- died counts until that worker is reaped (its heartbeat is older than its
-- lease), when its runs are released like any other.
--
-- How limits stay cheap with many blocked runs:
-- * runs in a queue at its concurrency limit are not looked at: a claim
--   reads, per queue, how many runs are held, and takes at most the rest;
-- * a run whose concurrency key is at its limit is *parked* by the claim
--   that meets it (with every other ready run of that key), which takes it
--   out of the claim index; when a run of the key leaves its worker
--   (finishes, suspends, is released or reaped) or a ready one is cancelled,
--   a trigger unparks as many as the key has free slots, in line order;
-- * sleeping and delayed runs wait outside the claim index (ready = false)
--   until their time comes; each claim first lets in those now due.
--
-- Line order: sort_at = available_at + priority * priority_aging of the
-- queue (60 s for runs in no queue). Lower priority numbers go first, FIFO
-- within a priority, and a run of priority p is never overtaken by runs of
-- priority 0 that became ready more than p * priority_aging after it.

-- --- tables --------------------------------------------------------------------------

-- Queues, declared by the workers that serve their workflows (Queue(...) in
-- Python) or with werkfluss.declare_queue from SQL. NULL: no limit.
CREATE TABLE werkfluss.queues (
    name               text PRIMARY KEY,
    concurrency        integer CHECK (concurrency BETWEEN 1 AND 1000000),
    per_key            integer CHECK (per_key BETWEEN 1 AND 1000000),
    worker_concurrency integer CHECK (worker_concurrency BETWEEN 1 AND 10000),
    -- At most rate_limit runs of the queue start per rate_period seconds.
    rate_limit         integer CHECK (rate_limit BETWEEN 1 AND 1000000000),
    rate_period        double precision CHECK (rate_period > 0 AND rate_period <= 2678400),
    priority_aging     double precision NOT NULL DEFAULT 60
                       CHECK (priority_aging > 0 AND priority_aging <= 86400),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

-- Which queues hold runs of which workflow (so a claim looks only at queues
-- that may have runs for it), and each workflow's default queue.
CREATE TABLE werkfluss.workflow_queues (
    workflow   text NOT NULL,
    queue_name text NOT NULL,
    is_default boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workflow, queue_name)
);
CREATE UNIQUE INDEX workflow_queues_default_idx ON werkfluss.workflow_queues (workflow) WHERE is_default;

-- Token buckets: step rate limits (@step(rate_limit="api:100/min"), by
-- their name) and start rate limits of queues ('queue:<name>').
CREATE TABLE werkfluss.rate_limits (
    name         text PRIMARY KEY,
    capacity     integer NOT NULL CHECK (capacity >= 1),
    period       double precision NOT NULL CHECK (period > 0),
    tokens       double precision NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

ALTER TABLE werkfluss.runs
    ADD COLUMN queue_name      text,
    ADD COLUMN concurrency_key text,
    ADD COLUMN priority        integer NOT NULL DEFAULT 0;

ALTER TABLE werkfluss.queue
    ADD COLUMN queue_name      text,
    ADD COLUMN concurrency_key text,
    -- priority * the queue's priority_aging, in seconds
    ADD COLUMN priority_lag    double precision NOT NULL DEFAULT 0,
    -- due (available_at has come) and in line; false while it sleeps, waits
    -- for its delayed start, or is held
    ADD COLUMN ready           boolean NOT NULL DEFAULT true,
    -- its concurrency key is at its limit
    ADD COLUMN parked          boolean NOT NULL DEFAULT false,
    -- a debounced start not yet claimed: later starts with the key join it
    ADD COLUMN debounce_key    text;
-- available_at + priority_lag, written with immutable operators only.
ALTER TABLE werkfluss.queue
    ADD COLUMN sort_at timestamptz GENERATED ALWAYS AS (
        ((available_at AT TIME ZONE INTERVAL '0') + make_interval(secs => priority_lag))
            AT TIME ZONE INTERVAL '0') STORED;

UPDATE werkfluss.queue SET ready = false WHERE available_at > now() OR lease_id IS NOT NULL;

-- The line: ready runs not parked, in order; for runs in no queue, and per
-- queue. (Two indexes: a btree orders by sort_at under "queue_name = x",
-- not under "queue_name IS NULL".)
CREATE INDEX queue_line_idx ON werkfluss.queue (sort_at)
    WHERE ready AND NOT parked AND queue_name IS NULL;
CREATE INDEX queue_line_queued_idx ON werkfluss.queue (queue_name, sort_at)
    WHERE ready AND NOT parked AND queue_name IS NOT NULL;
-- Runs waiting for their time (sleeps, delayed starts) and for events
-- ('infinity'): the claim lets in those now due; next_due reads the first.
DROP INDEX werkfluss.queue_available_at_idx;
CREATE INDEX queue_due_idx ON werkfluss.queue (available_at) WHERE NOT ready AND lease_id IS NULL;
-- A held run whose available_at is finite: a lease that runs out then (rows
-- written that way by hand or by releases before 0006; claims write
-- 'infinity', so this index is empty in practice).
CREATE INDEX queue_lease_expiry_idx ON werkfluss.queue (available_at)
    WHERE lease_id IS NOT NULL AND available_at < 'infinity';
-- Held runs per queue and key: what counts against the limits.
CREATE INDEX queue_held_idx ON werkfluss.queue (queue_name, concurrency_key)
    WHERE lease_id IS NOT NULL AND queue_name IS NOT NULL;
-- Parked runs per key, in line order: who is next when a slot frees.
CREATE INDEX queue_parked_idx ON werkfluss.queue (queue_name, concurrency_key, sort_at) WHERE parked;
-- Ready runs of a key that are not parked: slots already spoken for.
CREATE INDEX queue_key_ready_idx ON werkfluss.queue (queue_name, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND ready AND NOT parked;
-- One debounced run per workflow and key at a time.
CREATE UNIQUE INDEX queue_debounce_idx ON werkfluss.queue (workflow, debounce_key)
    WHERE debounce_key IS NOT NULL;

-- --- locks ---------------------------------------------------------------------------

-- The advisory lock of a queue is hashtextextended('werkfluss.queue:' || name, 0);
-- that of a concurrency key hashtextextended('werkfluss.key:' || queue || chr(31) || key, 0).
-- (Written out where used: a role allowed to call a function needs no grant
-- on helpers.)

-- Take the locks of the concurrency keys of these runs (those in a queue
-- with a per-key limit), in order, before anything else of a transaction
-- that releases them: releasing a run of a key unparks the next one under
-- the key's lock, and two transactions releasing runs of the same keys
-- must not wait for each other in a circle.
CREATE FUNCTION werkfluss._lock_flow_keys(run_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    lock_id bigint;
    taken   integer := 0;
BEGIN
    FOR lock_id IN
        SELECT DISTINCT hashtextextended('werkfluss.key:' || y.queue_name || chr(31) || y.concurrency_key, 0)
          FROM werkfluss.queue y
          JOIN werkfluss.queues k ON k.name = y.queue_name AND k.per_key IS NOT NULL
         WHERE y.run_id = ANY(run_ids) AND y.concurrency_key IS NOT NULL
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
        taken := taken + 1;
    END LOOP;
    RETURN taken;
END
$$;

-- --- rate limits ---------------------------------------------------------------------

-- The tokens of a bucket now (refilled, not taken), creating or reconfiguring
-- it; locks its row for the rest of the transaction.
CREATE FUNCTION werkfluss._bucket(name text, capacity integer, period double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    available double precision;
BEGIN
    INSERT INTO werkfluss.rate_limits AS b (name, capacity, period, tokens, refreshed_at)
    VALUES (_bucket.name, _bucket.capacity, _bucket.period, _bucket.capacity, now())
    ON CONFLICT (name) DO UPDATE
       SET capacity = excluded.capacity, period = excluded.period,
           tokens = least(excluded.capacity::double precision,
                          b.tokens + greatest(0, extract(epoch FROM now() - b.refreshed_at))
                                     * excluded.capacity / excluded.period),
           refreshed_at = greatest(b.refreshed_at, now())
    RETURNING b.tokens INTO available;
    RETURN available;
END
$$;

-- Take one token of a step's rate limit: 0 if taken, else the seconds until
-- one is there (nothing taken). While a run waits for a token its
-- waiting_on says so ("rate limit api until 12:00:03 UTC"); waited => true
-- clears that once the token is taken.
CREATE FUNCTION werkfluss._take_token(name text, capacity integer, period double precision,
                                      run_id text DEFAULT NULL, waited boolean DEFAULT false)
RETURNS double precision
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    available double precision := werkfluss._bucket(_take_token.name, _take_token.capacity,
                                                    _take_token.period);
    wait      double precision;
BEGIN
    IF available >= 1 THEN
        UPDATE werkfluss.rate_limits b SET tokens = b.tokens - 1 WHERE b.name = _take_token.name;
        IF waited AND _take_token.run_id IS NOT NULL THEN
            UPDATE werkfluss.runs r SET waiting_on = NULL
             WHERE r.id = _take_token.run_id AND r.waiting_on LIKE 'rate limit %';
        END IF;
        RETURN 0;
    END IF;
    wait := (1 - available) * _take_token.period / _take_token.capacity;
    IF _take_token.run_id IS NOT NULL THEN
        UPDATE werkfluss.runs r
           SET waiting_on = format('rate limit %s until %s', _take_token.name,
                                   to_char((now() + make_interval(secs => wait)) AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
         WHERE r.id = _take_token.run_id AND r.status = 'running';
    END IF;
    RETURN wait;
END
$$;

-- --- claiming ------------------------------------------------------------------------

-- Claim up to lim ready runs of these workflows for a worker, within every
-- limit: lease them, mark them running, and return each with what may
-- unblock it, read after the leases (a start committed while the claim ran
-- is seen whole, or not at all). The claim_runs query is this function.
--
-- Streams: the runs in no queue, and each queue that has runs of these
-- workflows, taken in the order of the run at the head of each. A queue
-- with a concurrency limit or a start rate limit is locked (all of them
-- first, by name) so that claims agree on what is held; its free slots are
-- the limit minus the runs held. Runs of a key at its limit are parked.
CREATE FUNCTION werkfluss._claim(workflows text[], lim integer, worker text)
RETURNS TABLE (run werkfluss.runs, lease_id uuid, claims integer, previous_lease_id uuid,
               previous_worker_id text, waited_s double precision, wakeups integer, inbox jsonb,
               children jsonb, db_now timestamptz, has_log boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ids       text[] := '{}';
    prev_ids  uuid[] := '{}';
    prev_wks  text[] := '{}';
    dues      timestamptz[] := '{}';
    more_ids  text[];
    more_prev uuid[];
    more_wks  text[];
    more_dues timestamptz[];
    taken     integer := 0;
    names     text[];
    i         integer;
    k         werkfluss.queues%ROWTYPE;
    c         record;
    got       text;
    free      integer;
    qtaken    integer;
    fresh     integer;
    held      integer;
    tokens    double precision;
BEGIN
    IF lim IS NULL OR lim <= 0 THEN
        RETURN;
    END IF;
    -- Sleeping and delayed runs whose time has come join the line, and so do
    -- runs whose lease ran out.
    UPDATE werkfluss.queue x SET ready = true
     WHERE x.run_id = ANY(ARRAY(
               SELECT y.run_id FROM werkfluss.queue y
                WHERE NOT y.ready AND y.lease_id IS NULL AND y.available_at <= now()
                ORDER BY y.available_at
                LIMIT 1000
                  FOR UPDATE SKIP LOCKED));
    UPDATE werkfluss.queue x SET ready = true
     WHERE x.run_id = ANY(ARRAY(
               SELECT y.run_id FROM werkfluss.queue y
                WHERE y.lease_id IS NOT NULL AND y.available_at <= now() AND y.available_at < 'infinity'
                  AND NOT y.ready
                LIMIT 1000
                  FOR UPDATE SKIP LOCKED));

    -- The streams with a run ready for this worker, best head first ('' is
    -- the stream of runs in no queue). No queue has runs of these workflows:
    -- only that stream.
    SELECT array_agg(DISTINCT w.queue_name) INTO names FROM werkfluss.workflow_queues w
     WHERE w.workflow = ANY(workflows);
    IF names IS NULL THEN
        names := ARRAY[''];
    ELSE
        SELECT array_agg(h.name ORDER BY h.head, h.name) INTO names FROM (
            SELECT '' AS name,
                   (SELECT y.sort_at FROM werkfluss.queue y
                     WHERE y.queue_name IS NULL AND y.ready AND NOT y.parked AND y.available_at <= now()
                       AND y.workflow = ANY(workflows)
                     ORDER BY y.sort_at LIMIT 1) AS head
            UNION ALL
            SELECT q.name,
                   (SELECT y.sort_at FROM werkfluss.queue y
                     WHERE y.queue_name = q.name AND y.ready AND NOT y.parked
                       AND y.available_at <= now() AND y.workflow = ANY(workflows)
                     ORDER BY y.sort_at LIMIT 1)
              FROM unnest(names) AS q(name)
        ) h
         WHERE h.head IS NOT NULL;
        IF names IS NULL THEN
            RETURN;
        END IF;
    END IF;

    -- Queues whose limits need an agreed count: locked by name, all first.
    FOR k IN
        SELECT * FROM werkfluss.queues q
         WHERE q.name = ANY(names) AND (q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)
         ORDER BY q.name
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('werkfluss.queue:' || k.name, 0));
    END LOOP;

    FOR i IN 1 .. cardinality(names) LOOP
        EXIT WHEN taken >= lim;
        IF names[i] = '' THEN
            WITH picked AS (
                SELECT y.run_id, y.lease_id AS previous_lease_id, y.worker_id AS previous_worker_id,
                       y.available_at AS due_at
                  FROM werkfluss.queue y
                 WHERE y.queue_name IS NULL AND y.ready AND NOT y.parked AND y.available_at <= now()
                   AND y.workflow = ANY(workflows)
                 ORDER BY y.sort_at
                 LIMIT lim - taken
                   FOR UPDATE SKIP LOCKED
            ), leased AS (
                UPDATE werkfluss.queue x
                   SET lease_id = gen_random_uuid(), worker_id = worker, available_at = 'infinity',
                       ready = false, claims = x.claims + 1, debounce_key = NULL
                  FROM picked p
                 WHERE x.run_id = p.run_id
                RETURNING x.run_id, p.previous_lease_id, p.previous_worker_id, p.due_at
            )
            SELECT coalesce(array_agg(l.run_id), '{}'), coalesce(array_agg(l.previous_lease_id), '{}'),
                   coalesce(array_agg(l.previous_worker_id), '{}'), coalesce(array_agg(l.due_at), '{}')
              INTO more_ids, more_prev, more_wks, more_dues
              FROM leased l;
            ids := ids || more_ids;
            prev_ids := prev_ids || more_prev;
            prev_wks := prev_wks || more_wks;
            dues := dues || more_dues;
            taken := taken + cardinality(more_ids);
            CONTINUE;
        END IF;

        SELECT * INTO k FROM werkfluss.queues q WHERE q.name = names[i];
        IF NOT FOUND THEN
            k.name := names[i];  -- a queue no longer declared: no limits
        END IF;
        free := lim - taken;
        IF k.concurrency IS NOT NULL THEN
            SELECT count(*) INTO held FROM werkfluss.queue y
             WHERE y.queue_name = k.name AND y.lease_id IS NOT NULL;
            free := least(free, k.concurrency - held);
        END IF;
        IF k.worker_concurrency IS NOT NULL THEN
            SELECT count(*) INTO held FROM werkfluss.queue y
             WHERE y.worker_id = worker AND y.lease_id IS NOT NULL AND y.queue_name = k.name;
            free := least(free, k.worker_concurrency - held);
        END IF;
        CONTINUE WHEN free <= 0;
        tokens := NULL;
        IF k.rate_limit IS NOT NULL THEN
            tokens := werkfluss._bucket('queue:' || k.name, k.rate_limit, k.rate_period);
        END IF;
        qtaken := 0;
        fresh := 0;
        FOR c IN
            SELECT y.run_id, y.concurrency_key, y.claims, y.lease_id, y.worker_id, y.available_at
              FROM werkfluss.queue y
             WHERE y.queue_name = k.name AND y.ready AND NOT y.parked AND y.available_at <= now()
               AND y.workflow = ANY(workflows)
             ORDER BY y.sort_at
               FOR UPDATE SKIP LOCKED
        LOOP
            EXIT WHEN qtaken >= free OR taken >= lim;
            -- A start needs a token; the queue waits for the next one (runs
            -- resuming after a sleep behind it wait with it).
            EXIT WHEN tokens IS NOT NULL AND c.claims = 0 AND tokens - fresh < 1;
            IF k.per_key IS NOT NULL AND c.concurrency_key IS NOT NULL THEN
                -- Another claim or a release is deciding about this key: leave it.
                CONTINUE WHEN NOT pg_try_advisory_xact_lock(
                    hashtextextended('werkfluss.key:' || k.name || chr(31) || c.concurrency_key, 0));
                SELECT count(*) INTO held FROM werkfluss.queue y
                 WHERE y.queue_name = k.name AND y.concurrency_key = c.concurrency_key
                   AND y.lease_id IS NOT NULL;
                IF held >= k.per_key THEN
                    UPDATE werkfluss.queue x SET parked = true
                     WHERE x.run_id = ANY(ARRAY(
                               SELECT y.run_id FROM werkfluss.queue y
                                WHERE y.queue_name = k.name AND y.concurrency_key = c.concurrency_key
                                  AND y.ready AND NOT y.parked
                                  FOR UPDATE SKIP LOCKED));
                    CONTINUE;
                END IF;
            END IF;
            got := NULL;
            UPDATE werkfluss.queue x
               SET lease_id = gen_random_uuid(), worker_id = worker, available_at = 'infinity',
                   ready = false, claims = x.claims + 1, debounce_key = NULL
             WHERE x.run_id = c.run_id AND x.ready AND NOT x.parked AND x.available_at <= now()
            RETURNING x.run_id INTO got;
            CONTINUE WHEN got IS NULL;
            ids := ids || got;
            prev_ids := prev_ids || c.lease_id;
            prev_wks := prev_wks || c.worker_id;
            dues := dues || c.available_at;
            taken := taken + 1;
            qtaken := qtaken + 1;
            IF c.claims = 0 THEN
                fresh := fresh + 1;
            END IF;
        END LOOP;
        IF fresh > 0 AND tokens IS NOT NULL THEN
            UPDATE werkfluss.rate_limits b SET tokens = b.tokens - fresh WHERE b.name = 'queue:' || k.name;
        END IF;
    END LOOP;
    IF taken = 0 THEN
        RETURN;
    END IF;

    UPDATE werkfluss.runs r
       SET status = 'running', started_at = coalesce(r.started_at, now()),
           updated_at = now(), wake_at = NULL, waiting_on = NULL
     WHERE r.id = ANY(ids);
    -- A worker that kept the run in its cache compares claims to know whether
    -- anyone else ran it since. The wake-up count comes from the same
    -- snapshot as the inputs: an event newer than what is read here shows as
    -- a higher count later (see suspend_runs).
    -- The run's whole row: columns later migrations add come with it.
    RETURN QUERY
    SELECT r, q.lease_id, q.claims, p.previous_lease_id, p.previous_worker_id,
           greatest(extract(epoch FROM now() - p.due_at), 0)::double precision,
           inputs.wakeups, inputs.inbox, inputs.children, clock_timestamp(),
           EXISTS (SELECT 1 FROM werkfluss.events e WHERE e.run_id = r.id)
      FROM unnest(ids, prev_ids, prev_wks, dues) AS p(run_id, previous_lease_id, previous_worker_id, due_at)
      JOIN werkfluss.runs r ON r.id = p.run_id
      JOIN werkfluss.queue q ON q.run_id = p.run_id
     CROSS JOIN LATERAL werkfluss._run_inputs(p.run_id) AS inputs;
END
$$;

-- A run of a queue left its worker, or a ready run left the line: wake idle
-- workers if the queue was at its limit, and unpark as many runs of its key
-- as the key has free slots (under the key's lock: a claim deciding to park
-- a run of the key is either seen or sees this release).
CREATE FUNCTION werkfluss._queue_slot_freed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k        werkfluss.queues%ROWTYPE;
    held     integer;
    waiting  integer;
    free     integer;
    unparked integer;
BEGIN
    SELECT * INTO k FROM werkfluss.queues q WHERE q.name = OLD.queue_name;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF OLD.lease_id IS NOT NULL AND k.concurrency IS NOT NULL THEN
        SELECT count(*) INTO held FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND y.lease_id IS NOT NULL;
        IF held >= k.concurrency - 1 THEN
            PERFORM pg_notify('werkfluss_queue', '');
        END IF;
    END IF;
    IF k.per_key IS NOT NULL AND OLD.concurrency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('werkfluss.key:' || k.name || chr(31) || OLD.concurrency_key, 0));
        SELECT count(*) INTO held FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND y.concurrency_key = OLD.concurrency_key
           AND y.lease_id IS NOT NULL;
        SELECT count(*) INTO waiting FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND y.concurrency_key = OLD.concurrency_key
           AND y.ready AND NOT y.parked;
        free := k.per_key - held - waiting;
        IF free > 0 THEN
            UPDATE werkfluss.queue x SET parked = false
             WHERE x.run_id = ANY(ARRAY(
                       SELECT y.run_id FROM werkfluss.queue y
                        WHERE y.queue_name = k.name AND y.concurrency_key = OLD.concurrency_key
                          AND y.parked
                        ORDER BY y.sort_at
                        LIMIT free
                          FOR UPDATE SKIP LOCKED));
            GET DIAGNOSTICS unparked = ROW_COUNT;
            IF unparked > 0 THEN
                PERFORM pg_notify('werkfluss_queue', '');
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER queue_released AFTER UPDATE OF lease_id ON werkfluss.queue
    FOR EACH ROW
    WHEN (OLD.queue_name IS NOT NULL AND OLD.lease_id IS NOT NULL AND NEW.lease_id IS NULL)
    EXECUTE FUNCTION werkfluss._queue_slot_freed();

CREATE TRIGGER queue_removed AFTER DELETE ON werkfluss.queue
    FOR EACH ROW
    WHEN (OLD.queue_name IS NOT NULL AND NOT OLD.parked)
    EXECUTE FUNCTION werkfluss._queue_slot_freed();

-- --- the paths that make runs claimable again, with the new columns ------------------

CREATE OR REPLACE FUNCTION werkfluss._wake(run_id text) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    claimable boolean;
    wf        text;
BEGIN
    UPDATE werkfluss.queue q
       SET wakeups = q.wakeups + 1,
           available_at = CASE WHEN q.lease_id IS NULL THEN now() ELSE q.available_at END,
           ready = CASE WHEN q.lease_id IS NULL THEN true ELSE q.ready END
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

CREATE OR REPLACE FUNCTION werkfluss._reap_workers() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    dead     text[];
    released integer;
    victim   integer;
BEGIN
    WITH d AS (
        SELECT w.id FROM werkfluss.workers w
         WHERE w.state IN ('running', 'stopping')
           AND w.heartbeat_at < now() - make_interval(secs => w.lease_seconds)
           FOR UPDATE SKIP LOCKED
    ), marked AS (
        UPDATE werkfluss.workers w SET state = 'dead', stopped_at = now()
          FROM d WHERE w.id = d.id
        RETURNING w.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO dead FROM marked;
    IF cardinality(dead) = 0 THEN
        RETURN 0;
    END IF;
    -- End what the dead workers left open; their row locks go with them. A
    -- role that may not signal those sessions (another role, not a member of
    -- pg_signal_backend) leaves them be: the runs are then taken over once
    -- the frozen worker resumes or its connection ends.
    FOR victim IN
        SELECT a.pid
          FROM pg_stat_activity a
          JOIN werkfluss.workers w ON w.app_name = a.application_name
         WHERE w.id = ANY(dead) AND a.datname = current_database() AND a.pid <> pg_backend_pid()
    LOOP
        BEGIN
            PERFORM pg_terminate_backend(victim);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END LOOP;
    -- The keys of the runs set free, in order, before their rows (see the top).
    PERFORM pg_advisory_xact_lock(l.id) FROM (
        SELECT DISTINCT hashtextextended('werkfluss.key:' || q.queue_name || chr(31) || q.concurrency_key, 0) AS id
          FROM werkfluss.queue q
         WHERE q.worker_id = ANY(dead) AND q.lease_id IS NOT NULL AND q.concurrency_key IS NOT NULL
           AND q.queue_name IS NOT NULL
         ORDER BY 1) l;
    -- worker_id stays: the next claim reports whose run it took over.
    WITH freed AS (
        UPDATE werkfluss.queue q
           SET lease_id = NULL, available_at = now(), ready = true
         WHERE q.worker_id = ANY(dead) AND q.lease_id IS NOT NULL
        RETURNING q.run_id
    ), reset AS (
        UPDATE werkfluss.runs r SET status = 'pending', updated_at = now()
          FROM freed f WHERE r.id = f.run_id AND r.status = 'running'
        RETURNING r.id
    )
    SELECT count(*) INTO released FROM freed;
    IF released > 0 THEN
        PERFORM pg_notify('werkfluss_queue', '');
    END IF;
    RETURN released;
END
$$;

-- _cancel_tree: the keys of the tree's runs are locked before their rows.
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
        PERFORM pg_advisory_xact_lock(l.id) FROM (
            SELECT DISTINCT hashtextextended('werkfluss.key:' || q.queue_name || chr(31) || q.concurrency_key, 0) AS id
              FROM werkfluss.queue q
             WHERE q.run_id = ANY(tree) AND q.concurrency_key IS NOT NULL AND q.queue_name IS NOT NULL
             ORDER BY 1) l;
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

-- retry_run: the run goes back to its queue, with its key and priority.
CREATE OR REPLACE FUNCTION werkfluss.retry_run(run_id text) RETURNS boolean
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
    INSERT INTO werkfluss.queue (run_id, workflow, queue_name, concurrency_key, priority_lag)
    VALUES (r.id, r.workflow, r.queue_name, r.concurrency_key,
            r.priority * coalesce((SELECT k.priority_aging FROM werkfluss.queues k
                                    WHERE k.name = r.queue_name), 60))
        ON CONFLICT (run_id) DO NOTHING;
    PERFORM pg_notify('werkfluss_queue', r.workflow);
    RETURN true;
END
$$;

-- --- starting runs -------------------------------------------------------------------

-- start_run gains the flow-control options as named arguments; positional
-- calls with the first five arguments keep working. (A new signature: the
-- old function goes, its grants are given again below.)
DROP FUNCTION werkfluss.start_run(text, jsonb, text, jsonb, interval);

-- Start a run. Takes part in the caller's transaction: a rolled-back start
-- leaves nothing behind and wakes nobody (NOTIFY is delivered on commit).
--   SELECT werkfluss.start_run('app.export', '["c-42"]', queue => 'exports',
--                              concurrency_key => 'c-42', priority => 1, delay => '10 minutes');
-- * run_id: idempotency key; starting again with it returns the existing
--   run, unchanged (first arguments, queue and start time win).
-- * queue: default, the workflow's default queue (declared by its workers);
--   concurrency_key: the key of the queue's per-key limit; priority: 0
--   (first) to 1000000.
-- * start_at / delay: the run starts no earlier (one of them); timeout
--   counts from then.
-- * debounce (with debounce_key, else concurrency_key, else none: the whole
--   workflow): a start joins the debounced run of its workflow and key that
--   has not started yet, replacing its arguments and pushing its start to
--   debounce from now; else it starts one. It returns that run's id, so it
--   cannot be combined with run_id.
CREATE FUNCTION werkfluss.start_run(
    name            text,
    args            jsonb       DEFAULT '[]',
    run_id          text        DEFAULT NULL,
    kwargs          jsonb       DEFAULT '{}',
    timeout         interval    DEFAULT NULL,
    queue           text        DEFAULT NULL,
    concurrency_key text        DEFAULT NULL,
    priority        integer     DEFAULT NULL,
    start_at        timestamptz DEFAULT NULL,
    delay           interval    DEFAULT NULL,
    debounce        interval    DEFAULT NULL,
    debounce_key    text        DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    new_id   text := coalesce(start_run.run_id, pg_catalog.gen_random_uuid()::text);
    existing text;
    qname    text := start_run.queue;
    k        werkfluss.queues%ROWTYPE;
    prio     integer := coalesce(start_run.priority, 0);
    due      timestamptz;
    dkey     text;
    lag      double precision;
BEGIN
    IF start_run.name IS NULL OR btrim(start_run.name, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.start_run: the workflow name is %',
                CASE WHEN start_run.name IS NULL THEN 'NULL' ELSE 'empty' END
            USING ERRCODE = '22023',
                  HINT = 'pass the registered name, e.g. ''app.onboard''';
    END IF;
    IF length(start_run.name) > 255 THEN
        RAISE EXCEPTION 'werkfluss.start_run: the workflow name is % characters long; the limit is 255',
                length(start_run.name)
            USING ERRCODE = '22023',
                  HINT = 'register the workflow under a shorter name with @workflow(name=...)';
    END IF;
    IF start_run.args IS NULL OR jsonb_typeof(start_run.args) <> 'array' THEN
        RAISE EXCEPTION 'werkfluss.start_run: args must be a JSON array, got %',
                coalesce(jsonb_typeof(start_run.args), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'pass the positional arguments as an array, e.g. ''["user-123"]''::jsonb';
    END IF;
    IF start_run.kwargs IS NULL OR jsonb_typeof(start_run.kwargs) <> 'object' THEN
        RAISE EXCEPTION 'werkfluss.start_run: kwargs must be a JSON object, got %',
                coalesce(jsonb_typeof(start_run.kwargs), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'pass keyword arguments as an object, e.g. ''{"dry_run": true}''::jsonb';
    END IF;
    IF btrim(new_id, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.start_run: run_id is empty'
            USING ERRCODE = '22023', HINT = 'pass NULL to get a generated id';
    END IF;
    IF length(new_id) > 255 THEN
        RAISE EXCEPTION 'werkfluss.start_run: run_id is % characters long; the limit is 255',
                length(new_id)
            USING ERRCODE = '22023',
                  HINT = 'use a shorter idempotency key, e.g. a hash of the long one';
    END IF;
    IF strpos(new_id, '::') > 0 THEN
        RAISE EXCEPTION 'werkfluss.start_run: run_id % contains ''::'', which is reserved for child runs',
                quote_literal(new_id)
            USING ERRCODE = '22023',
                  HINT = 'child runs get the id ''<parent id>::<seq>''; use another separator, e.g. ''order:42''';
    END IF;
    IF start_run.timeout IS NOT NULL AND start_run.timeout <= interval '0' THEN
        RAISE EXCEPTION 'werkfluss.start_run: timeout must be positive, got %', start_run.timeout
            USING ERRCODE = '22023', HINT = 'pass NULL for no time limit';
    END IF;
    IF qname IS NOT NULL AND (btrim(qname, E' \t\n\r\v\f') = '' OR length(qname) > 255) THEN
        RAISE EXCEPTION 'werkfluss.start_run: the queue name is %',
                CASE WHEN length(qname) > 255 THEN format('%s characters long; the limit is 255', length(qname))
                     ELSE 'empty' END
            USING ERRCODE = '22023', HINT = 'pass NULL for the workflow''s default queue';
    END IF;
    IF start_run.concurrency_key IS NOT NULL
       AND (btrim(start_run.concurrency_key, E' \t\n\r\v\f') = '' OR length(start_run.concurrency_key) > 255) THEN
        RAISE EXCEPTION 'werkfluss.start_run: concurrency_key is %',
                CASE WHEN length(start_run.concurrency_key) > 255
                     THEN format('%s characters long; the limit is 255', length(start_run.concurrency_key))
                     ELSE 'empty' END
            USING ERRCODE = '22023', HINT = 'e.g. a customer id: ''customer-42''';
    END IF;
    IF start_run.debounce_key IS NOT NULL
       AND (btrim(start_run.debounce_key, E' \t\n\r\v\f') = '' OR length(start_run.debounce_key) > 255) THEN
        RAISE EXCEPTION 'werkfluss.start_run: debounce_key is %',
                CASE WHEN length(start_run.debounce_key) > 255
                     THEN format('%s characters long; the limit is 255', length(start_run.debounce_key))
                     ELSE 'empty' END
            USING ERRCODE = '22023';
    END IF;
    IF prio < 0 OR prio > 1000000 THEN
        RAISE EXCEPTION 'werkfluss.start_run: priority must be from 0 (first) to 1000000, got %', prio
            USING ERRCODE = '22023', HINT = 'lower numbers start first; the default is 0';
    END IF;
    IF start_run.start_at IS NOT NULL AND start_run.delay IS NOT NULL THEN
        RAISE EXCEPTION 'werkfluss.start_run: pass start_at or delay, not both'
            USING ERRCODE = '22023';
    END IF;
    IF start_run.start_at IS NOT NULL AND NOT isfinite(start_run.start_at) THEN
        RAISE EXCEPTION 'werkfluss.start_run: start_at must be a finite time, got %', start_run.start_at
            USING ERRCODE = '22023';
    END IF;
    IF start_run.delay IS NOT NULL AND start_run.delay < interval '0' THEN
        RAISE EXCEPTION 'werkfluss.start_run: delay must not be negative, got %', start_run.delay
            USING ERRCODE = '22023';
    END IF;
    IF start_run.debounce IS NOT NULL AND start_run.debounce <= interval '0' THEN
        RAISE EXCEPTION 'werkfluss.start_run: debounce must be positive, got %', start_run.debounce
            USING ERRCODE = '22023';
    END IF;
    IF start_run.debounce IS NULL AND start_run.debounce_key IS NOT NULL THEN
        RAISE EXCEPTION 'werkfluss.start_run: debounce_key needs debounce'
            USING ERRCODE = '22023', HINT = 'e.g. debounce => ''30 seconds''';
    END IF;
    IF start_run.debounce IS NOT NULL AND start_run.run_id IS NOT NULL THEN
        RAISE EXCEPTION 'werkfluss.start_run: a debounced start cannot choose its run_id'
            USING ERRCODE = '22023',
                  HINT = 'a debounced start returns the id of the pending run of its key; '
                         'use run_id or debounce, not both';
    END IF;

    IF qname IS NULL THEN
        SELECT wq.queue_name INTO qname FROM werkfluss.workflow_queues wq
         WHERE wq.workflow = start_run.name AND wq.is_default;
    END IF;
    IF qname IS NOT NULL THEN
        SELECT * INTO k FROM werkfluss.queues q WHERE q.name = qname;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'werkfluss.start_run: no queue named %', quote_literal(qname)
                USING ERRCODE = '42704',
                      HINT = 'declare it: Queue(...) in the code of the workers that serve the workflow, '
                             'or SELECT werkfluss.declare_queue(...)';
        END IF;
    ELSIF start_run.concurrency_key IS NOT NULL THEN
        RAISE EXCEPTION 'werkfluss.start_run: concurrency_key needs a queue, and % has none',
                quote_literal(start_run.name)
            USING ERRCODE = '22023',
                  HINT = 'pass queue => ..., or give the workflow a default queue: @workflow(queue=...)';
    END IF;

    due := coalesce(start_run.start_at, now() + coalesce(start_run.delay, interval '0'));
    IF start_run.debounce IS NOT NULL THEN
        due := greatest(due, now() + start_run.debounce);
        dkey := coalesce(start_run.debounce_key, start_run.concurrency_key, '');
    END IF;
    due := greatest(due, now());
    lag := prio * coalesce(k.priority_aging, 60);

    LOOP
        IF dkey IS NOT NULL THEN
            -- The debounced run of this key that has not started: it takes
            -- these arguments and starts debounce from now.
            SELECT q.run_id INTO existing FROM werkfluss.queue q
             WHERE q.workflow = start_run.name AND q.debounce_key = dkey
               FOR UPDATE;
            IF FOUND THEN
                UPDATE werkfluss.runs r
                   SET args = start_run.args, kwargs = start_run.kwargs,
                       deadline = due + start_run.timeout, wake_at = due, updated_at = now()
                 WHERE r.id = existing;
                UPDATE werkfluss.queue q SET available_at = due, ready = false
                 WHERE q.run_id = existing;
                PERFORM pg_notify('werkfluss_queue', start_run.name);
                RETURN existing;
            END IF;
        END IF;
        BEGIN
            INSERT INTO werkfluss.runs (id, workflow, args, kwargs, deadline, wake_at,
                                        queue_name, concurrency_key, priority)
            VALUES (new_id, start_run.name, start_run.args, start_run.kwargs, due + start_run.timeout,
                    CASE WHEN due > now() THEN due END, qname, start_run.concurrency_key, prio)
            ON CONFLICT (id) DO NOTHING;
            IF NOT FOUND THEN
                SELECT r.workflow INTO existing FROM werkfluss.runs r WHERE r.id = new_id;
                IF existing IS DISTINCT FROM start_run.name THEN
                    RAISE EXCEPTION 'werkfluss.start_run: run id % already belongs to workflow %',
                            new_id, existing
                        USING ERRCODE = '23505',
                              HINT = 'use a run id that names the workflow, e.g. ''onboard:user-123''';
                END IF;
                RETURN new_id;
            END IF;
            INSERT INTO werkfluss.queue (run_id, workflow, available_at, ready, queue_name,
                                         concurrency_key, priority_lag, debounce_key)
            VALUES (new_id, start_run.name, due, due <= now(), qname, start_run.concurrency_key, lag, dkey);
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            IF dkey IS NULL THEN
                RAISE;
            END IF;
            -- A concurrent start of the same debounce key won: join its run.
        END;
    END LOOP;

    IF qname IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM werkfluss.workflow_queues wq
         WHERE wq.workflow = start_run.name AND wq.queue_name = qname
    ) THEN
        INSERT INTO werkfluss.workflow_queues (workflow, queue_name) VALUES (start_run.name, qname)
            ON CONFLICT DO NOTHING;
    END IF;
    -- Only the workflow name: ids, never payloads (NOTIFY caps at 8000 bytes),
    -- and identical notifications in one transaction collapse into one. (A
    -- delayed start too: workers learn when to look next.)
    PERFORM pg_notify('werkfluss_queue', start_run.name);
    RETURN new_id;
END
$$;

-- --- declaring queues ----------------------------------------------------------------

-- Create a queue or change its limits (NULL: no limit). Returns 'created',
-- 'changed' or 'unchanged'. Raising or removing the per-key limit lets the
-- parked runs of the queue into the line again (claims park them again if
-- their key is still full).
--   SELECT werkfluss.declare_queue('exports', concurrency => 20, per_key => 5);
CREATE FUNCTION werkfluss.declare_queue(
    name               text,
    concurrency        integer  DEFAULT NULL,
    per_key            integer  DEFAULT NULL,
    worker_concurrency integer  DEFAULT NULL,
    rate_limit         integer  DEFAULT NULL,
    rate_period        interval DEFAULT NULL,
    priority_aging     interval DEFAULT interval '1 minute'
) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    old     werkfluss.queues%ROWTYPE;
    period  double precision := extract(epoch FROM declare_queue.rate_period);
    aging   double precision := extract(epoch FROM declare_queue.priority_aging);
BEGIN
    IF declare_queue.name IS NULL OR btrim(declare_queue.name, E' \t\n\r\v\f') = ''
       OR length(declare_queue.name) > 255 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: the queue name is %',
                CASE WHEN declare_queue.name IS NULL THEN 'NULL'
                     WHEN length(declare_queue.name) > 255
                     THEN format('%s characters long; the limit is 255', length(declare_queue.name))
                     ELSE 'empty' END
            USING ERRCODE = '22023', HINT = 'e.g. ''exports''';
    END IF;
    IF declare_queue.concurrency IS NOT NULL AND declare_queue.concurrency NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: concurrency must be from 1 to 1000000 (or NULL: no limit), got %',
                declare_queue.concurrency USING ERRCODE = '22023';
    END IF;
    IF declare_queue.per_key IS NOT NULL AND declare_queue.per_key NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: per_key must be from 1 to 1000000 (or NULL: no limit), got %',
                declare_queue.per_key USING ERRCODE = '22023';
    END IF;
    IF declare_queue.worker_concurrency IS NOT NULL
       AND declare_queue.worker_concurrency NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: worker_concurrency must be from 1 to 10000 (or NULL: no limit), got %',
                declare_queue.worker_concurrency USING ERRCODE = '22023';
    END IF;
    IF (declare_queue.rate_limit IS NULL) <> (declare_queue.rate_period IS NULL) THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: rate_limit and rate_period go together'
            USING ERRCODE = '22023', HINT = 'e.g. rate_limit => 100, rate_period => ''1 minute''';
    END IF;
    IF declare_queue.rate_limit IS NOT NULL AND declare_queue.rate_limit NOT BETWEEN 1 AND 1000000000 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: rate_limit must be from 1 to 1000000000, got %',
                declare_queue.rate_limit USING ERRCODE = '22023';
    END IF;
    IF period IS NOT NULL AND (period <= 0 OR period > 2678400) THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: rate_period must be from 1 microsecond to 31 days, got %',
                declare_queue.rate_period USING ERRCODE = '22023';
    END IF;
    IF aging IS NULL OR aging <= 0 OR aging > 86400 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: priority_aging must be from 1 microsecond to 1 day, got %',
                coalesce(declare_queue.priority_aging::text, 'NULL') USING ERRCODE = '22023';
    END IF;

    SELECT * INTO old FROM werkfluss.queues q WHERE q.name = declare_queue.name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO werkfluss.queues (name, concurrency, per_key, worker_concurrency, rate_limit,
                                      rate_period, priority_aging)
        VALUES (declare_queue.name, declare_queue.concurrency, declare_queue.per_key,
                declare_queue.worker_concurrency, declare_queue.rate_limit, period, aging)
        ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            RETURN 'created';
        END IF;
        SELECT * INTO old FROM werkfluss.queues q WHERE q.name = declare_queue.name FOR UPDATE;
    END IF;
    IF (old.concurrency, old.per_key, old.worker_concurrency, old.rate_limit, old.rate_period,
        old.priority_aging)
       IS NOT DISTINCT FROM (declare_queue.concurrency, declare_queue.per_key,
                             declare_queue.worker_concurrency, declare_queue.rate_limit, period, aging) THEN
        RETURN 'unchanged';
    END IF;
    UPDATE werkfluss.queues q
       SET concurrency = declare_queue.concurrency, per_key = declare_queue.per_key,
           worker_concurrency = declare_queue.worker_concurrency, rate_limit = declare_queue.rate_limit,
           rate_period = period, priority_aging = aging, updated_at = now()
     WHERE q.name = declare_queue.name;
    IF old.per_key IS NOT NULL
       AND (declare_queue.per_key IS NULL OR declare_queue.per_key > old.per_key) THEN
        UPDATE werkfluss.queue y SET parked = false WHERE y.queue_name = declare_queue.name AND y.parked;
    END IF;
    PERFORM pg_notify('werkfluss_queue', '');
    RETURN 'changed';
END
$$;

-- A workflow's default queue (NULL: none), as the workers that serve it
-- declare it. Returns whether anything changed.
CREATE FUNCTION werkfluss._declare_workflow_queue(workflow text, queue_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    current text;
BEGIN
    SELECT wq.queue_name INTO current FROM werkfluss.workflow_queues wq
     WHERE wq.workflow = _declare_workflow_queue.workflow AND wq.is_default;
    IF current IS NOT DISTINCT FROM _declare_workflow_queue.queue_name THEN
        RETURN false;
    END IF;
    UPDATE werkfluss.workflow_queues wq SET is_default = false
     WHERE wq.workflow = _declare_workflow_queue.workflow AND wq.is_default;
    IF _declare_workflow_queue.queue_name IS NOT NULL THEN
        INSERT INTO werkfluss.queues (name) VALUES (_declare_workflow_queue.queue_name)
            ON CONFLICT (name) DO NOTHING;
        INSERT INTO werkfluss.workflow_queues (workflow, queue_name, is_default)
        VALUES (_declare_workflow_queue.workflow, _declare_workflow_queue.queue_name, true)
        ON CONFLICT (workflow, queue_name) DO UPDATE SET is_default = true;
    END IF;
    RETURN true;
END
$$;

-- --- why a pending run has not started -----------------------------------------------

-- For each pending run that no worker holds: what it waits for, as JSON
-- ({"kind": "scheduled", "at": ...}, {"kind": "key", "queue": ..., "key": ...,
-- "held": 5, "limit": 5}, {"kind": "queue", "queue": ..., "held": 20,
-- "limit": 20}, {"kind": "worker_limit", "queue": ..., "limit": 2},
-- {"kind": "rate", "name": ..., "until": ...}), or NULL when it is next in
-- line for a worker (whether a live worker serves its workflow is another
-- question: werkfluss runs says so in a note). A view
-- (not a function), so that a role that may only read the tables reads it
-- too; read it for one run at a time (WHERE run_id = ...), its counts are
-- per run.
CREATE VIEW werkfluss.pending_reasons AS
SELECT q.run_id,
       CASE
           WHEN q.available_at > now() AND q.available_at < 'infinity' THEN
               jsonb_build_object('kind', 'scheduled', 'at', q.available_at)
           WHEN k.per_key IS NOT NULL AND q.concurrency_key IS NOT NULL
                AND (q.parked OR (SELECT count(*) FROM werkfluss.queue x
                                   WHERE x.queue_name = q.queue_name AND x.concurrency_key = q.concurrency_key
                                     AND x.lease_id IS NOT NULL) >= k.per_key) THEN
               jsonb_build_object('kind', 'key', 'queue', k.name, 'key', q.concurrency_key, 'limit', k.per_key,
                                  'held', (SELECT count(*) FROM werkfluss.queue x
                                            WHERE x.queue_name = q.queue_name
                                              AND x.concurrency_key = q.concurrency_key
                                              AND x.lease_id IS NOT NULL))
           WHEN k.concurrency IS NOT NULL
                AND (SELECT count(*) FROM werkfluss.queue x
                      WHERE x.queue_name = q.queue_name AND x.lease_id IS NOT NULL) >= k.concurrency THEN
               jsonb_build_object('kind', 'queue', 'queue', k.name, 'limit', k.concurrency,
                                  'held', (SELECT count(*) FROM werkfluss.queue x
                                            WHERE x.queue_name = q.queue_name AND x.lease_id IS NOT NULL))
           WHEN k.rate_limit IS NOT NULL AND q.claims = 0 AND t.tokens < 1 THEN
               jsonb_build_object('kind', 'rate', 'name', 'queue ' || k.name,
                                  'until', now() + make_interval(secs => (1 - t.tokens) * b.period / b.capacity))
           WHEN k.worker_concurrency IS NOT NULL
                AND EXISTS (SELECT 1 FROM werkfluss.workers w
                             WHERE w.state = 'running' AND q.workflow = ANY(w.workflows)
                               AND w.heartbeat_at >= now() - make_interval(secs => w.lease_seconds))
                AND NOT EXISTS (
                    SELECT 1 FROM werkfluss.workers w
                     WHERE w.state = 'running' AND q.workflow = ANY(w.workflows)
                       AND w.heartbeat_at >= now() - make_interval(secs => w.lease_seconds)
                       AND (SELECT count(*) FROM werkfluss.queue x
                             WHERE x.worker_id = w.id AND x.lease_id IS NOT NULL
                               AND x.queue_name = q.queue_name) < k.worker_concurrency) THEN
               jsonb_build_object('kind', 'worker_limit', 'queue', k.name, 'limit', k.worker_concurrency)
       END AS blocked
  FROM werkfluss.queue q
  JOIN werkfluss.runs r ON r.id = q.run_id AND r.status = 'pending'
  LEFT JOIN werkfluss.queues k ON k.name = q.queue_name
  LEFT JOIN werkfluss.rate_limits b ON b.name = 'queue:' || q.queue_name
  LEFT JOIN LATERAL (
      SELECT least(b.capacity, b.tokens + greatest(0, extract(epoch FROM now() - b.refreshed_at))
                                          * b.capacity / b.period) AS tokens
  ) t ON b.name IS NOT NULL
 WHERE q.lease_id IS NULL;

-- --- privileges ----------------------------------------------------------------------

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA werkfluss FROM PUBLIC;

-- Roles that run workers (they may add to the queue) get the new tables and
-- functions, so that existing workers keep running after this migration.
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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON werkfluss.queues, werkfluss.workflow_queues,'
                       ' werkfluss.rate_limits TO %I', grantee);
        EXECUTE format('GRANT SELECT ON werkfluss.pending_reasons TO %I', grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION werkfluss.start_run(text, jsonb, text, jsonb, interval,'
                       ' text, text, integer, timestamptz, interval, interval, text),'
                       ' werkfluss.declare_queue(text, integer, integer, integer, integer, interval, interval),'
                       ' werkfluss._declare_workflow_queue(text, text),'
                       ' werkfluss._claim(text[], integer, text),'
                       ' werkfluss._lock_flow_keys(text[]),'
                       ' werkfluss._bucket(text, integer, double precision),'
                       ' werkfluss._take_token(text, integer, double precision, text, boolean),'
                       ' werkfluss._queue_slot_freed() TO %I', grantee);
    END LOOP;
END
$$;

-- What werkfluss_client may do, if the role exists: start runs (now with
-- the flow-control options), as before.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'werkfluss_client') THEN
        GRANT EXECUTE ON FUNCTION
            werkfluss.start_run(text, jsonb, text, jsonb, interval, text, text, integer, timestamptz,
                                interval, interval, text)
        TO werkfluss_client;
    END IF;
END
$$;
