-- The werkfluss schema as the migrations in sql/migrations leave it (a snapshot:
-- tests/integration/test_schema.py checks they agree; that file says how to rewrite it).
-- Install with `werkfluss migrate`, never from this file: migrate records what it applied.

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

CREATE SCHEMA werkfluss;

CREATE FUNCTION werkfluss._break_schedule(name text, revision bigint, error text) RETURNS boolean
    LANGUAGE sql
    AS $$
    UPDATE werkfluss.schedules x
       SET error = _break_schedule.error, revision = x.revision + 1, updated_at = now()
     WHERE x.name = _break_schedule.name AND x.revision = _break_schedule.revision
    RETURNING true
$$;

CREATE FUNCTION werkfluss._bucket(name text, capacity integer, period double precision) RETURNS double precision
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._cancel_tree(roots text[]) RETURNS text[]
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._check_schedule_name(caller text, name text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $$
DECLARE
    problem text := werkfluss._schedule_name_problem(name);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'werkfluss.%: the schedule name %', caller, problem
            USING ERRCODE = '22023',
                  HINT = 'schedule names are up to 200 characters without '':'' or whitespace, '
                         'e.g. ''nightly-report''';
    END IF;
END
$$;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE werkfluss.runs (
    id text NOT NULL,
    workflow text NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    args jsonb DEFAULT '[]'::jsonb NOT NULL,
    kwargs jsonb DEFAULT '{}'::jsonb NOT NULL,
    result jsonb,
    error jsonb,
    parent_id text,
    wake_at timestamp with time zone,
    waiting_on text,
    deadline timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    delivered boolean DEFAULT false NOT NULL,
    queue_name text,
    concurrency_key text,
    priority integer DEFAULT 0 NOT NULL,
    traceparent text,
    CONSTRAINT runs_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'sleeping'::text, 'waiting'::text, 'completed'::text, 'failed'::text, 'cancelled'::text])))
)
WITH (fillfactor='80');

CREATE FUNCTION werkfluss._claim(workflows text[], lim integer, worker text) RETURNS TABLE(run werkfluss.runs, lease_id uuid, claims integer, previous_lease_id uuid, previous_worker_id text, waited_s double precision, wakeups integer, inbox jsonb, children jsonb, db_now timestamp with time zone, has_log boolean)
    LANGUAGE sql
    AS $$
    SELECT c.run, c.lease_id, c.claims, c.previous_lease_id, c.previous_worker_id, c.waited_s,
           c.wakeups, c.inbox, c.children, c.db_now, c.has_log
      FROM werkfluss._claim_runs(workflows, lim, worker) c
     WHERE c.lease_id IS NOT NULL
$$;

CREATE FUNCTION werkfluss._claim_runs(workflows text[], lim integer, worker text) RETURNS TABLE(run werkfluss.runs, lease_id uuid, claims integer, previous_lease_id uuid, previous_worker_id text, waited_s double precision, wakeups integer, inbox jsonb, children jsonb, db_now timestamp with time zone, has_log boolean, next_due double precision)
    LANGUAGE plpgsql
    SET enable_bitmapscan TO 'off'
    SET enable_seqscan TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
#variable_conflict use_column
DECLARE
    ids      text[];
    prev_ids uuid[];
    prev_wks text[];
    dues     timestamptz[];
    due      double precision;
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
                  FOR UPDATE SKIP LOCKED)
            || ARRAY(
               SELECT y.run_id FROM werkfluss.queue y
                WHERE y.lease_id IS NOT NULL AND y.available_at <= now() AND y.available_at < 'infinity'
                  AND NOT y.ready
                LIMIT 1000
                  FOR UPDATE SKIP LOCKED));

    IF EXISTS (SELECT 1 FROM werkfluss.workflow_queues w WHERE w.workflow = ANY(workflows)) THEN
        SELECT l.ids, l.prev_ids, l.prev_wks, l.dues INTO ids, prev_ids, prev_wks, dues
          FROM werkfluss._lease_queued(workflows, lim, worker) l;
        IF cardinality(ids) > 0 THEN
            UPDATE werkfluss.runs r
               SET status = 'running', started_at = coalesce(r.started_at, now()),
                   updated_at = now(), wake_at = NULL, waiting_on = NULL
             WHERE r.id = ANY(ids);
        END IF;
    ELSE
        -- No queue has runs of these workflows: the line of runs in no queue,
        -- leased and marked running in one statement.
        WITH picked AS (
            SELECT y.run_id, y.lease_id AS previous_lease_id, y.worker_id AS previous_worker_id,
                   y.available_at AS due_at
              FROM werkfluss.queue y
             WHERE y.queue_name IS NULL AND y.ready AND NOT y.parked AND y.available_at <= now()
               AND y.workflow = ANY(workflows)
             ORDER BY y.sort_at
             LIMIT lim
               FOR UPDATE SKIP LOCKED
        ), leased AS (
            UPDATE werkfluss.queue x
               SET lease_id = gen_random_uuid(), worker_id = worker, available_at = 'infinity',
                   ready = false, claims = x.claims + 1, debounce_key = NULL
              FROM picked p
             WHERE x.run_id = p.run_id
            RETURNING x.run_id, p.previous_lease_id, p.previous_worker_id, p.due_at
        ), started AS (  -- runs as a data-modifying WITH does, read or not
            UPDATE werkfluss.runs r
               SET status = 'running', started_at = coalesce(r.started_at, now()),
                   updated_at = now(), wake_at = NULL, waiting_on = NULL
              FROM leased l
             WHERE r.id = l.run_id
            RETURNING r.id
        )
        SELECT coalesce(array_agg(l.run_id), '{}'), coalesce(array_agg(l.previous_lease_id), '{}'),
               coalesce(array_agg(l.previous_worker_id), '{}'), coalesce(array_agg(l.due_at), '{}')
          INTO ids, prev_ids, prev_wks, dues
          FROM leased l;
    END IF;

    IF cardinality(ids) < lim THEN
        due := werkfluss._next_due(workflows);
    END IF;
    IF cardinality(ids) = 0 THEN
        RETURN QUERY SELECT NULL::werkfluss.runs, NULL::uuid, NULL::integer, NULL::uuid, NULL::text,
                            NULL::double precision, NULL::integer, NULL::jsonb, NULL::jsonb,
                            clock_timestamp(), NULL::boolean, due;
        RETURN;
    END IF;

    -- A worker that kept the run in its cache compares claims to know whether
    -- anyone else ran it since. The wake-up count comes from the same
    -- snapshot as the inputs: an event newer than what is read here shows as
    -- a higher count later (see suspend_runs). The run's whole row: columns
    -- later migrations add come with it.
    RETURN QUERY
    SELECT r, q.lease_id, q.claims, p.previous_lease_id, p.previous_worker_id,
           greatest(extract(epoch FROM now() - p.due_at), 0)::double precision,
           coalesce(inputs.wakeups, q.wakeups), coalesce(inputs.inbox, '[]'::jsonb),
           coalesce(inputs.children, '[]'::jsonb), clock_timestamp(), had.any, due
      FROM unnest(ids, prev_ids, prev_wks, dues) AS p(run_id, previous_lease_id, previous_worker_id, due_at)
      JOIN werkfluss.runs r ON r.id = p.run_id
      JOIN werkfluss.queue q ON q.run_id = p.run_id
     -- One probe of the log's index per run (an EXISTS here may be planned
     -- as one pass over the whole log, hashed: a claim then cost as much as
     -- the log is long).
     CROSS JOIN LATERAL (SELECT count(*) > 0 AS any
                           FROM (SELECT 1 FROM werkfluss.events e WHERE e.run_id = p.run_id LIMIT 1) x) had
     -- _run_inputs is STABLE: it reads in this statement's snapshot, as q does.
     -- Not called for a run that never ran before this claim (OFFSET 0 keeps
     -- the condition a filter before the call, not a join condition after it).
      LEFT JOIN LATERAL (SELECT i.wakeups, i.inbox, i.children FROM werkfluss._run_inputs(p.run_id) i
                          WHERE had.any OR r.started_at < now() OFFSET 0) inputs ON true;
END
$$;

CREATE FUNCTION werkfluss._declare_workflow_queue(workflow text, queue_name text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._fire_schedule(name text, revision bigint, ticks timestamp with time zone[], next_tick timestamp with time zone, skipped integer) RETURNS text[]
    LANGUAGE plpgsql
    AS $$
DECLARE
    s        werkfluss.schedules%ROWTYPE;
    busy     boolean := false;
    started  text[] := '{}';
    missed   integer := coalesce(_fire_schedule.skipped, 0);
    tick     timestamptz;
    id       text;
BEGIN
    UPDATE werkfluss.schedules x
       SET next_tick = _fire_schedule.next_tick, revision = x.revision + 1, updated_at = now()
     WHERE x.name = _fire_schedule.name AND x.revision = _fire_schedule.revision AND NOT x.paused
    RETURNING x.* INTO s;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF cardinality(ticks) > 0 THEN
        IF s.overlap = 'skip' AND s.last_run_id IS NOT NULL THEN
            SELECT r.status NOT IN ('completed', 'failed', 'cancelled') INTO busy
              FROM werkfluss.runs r WHERE r.id = s.last_run_id;
            busy := coalesce(busy, false);
        END IF;
        FOREACH tick IN ARRAY ticks LOOP
            IF busy THEN
                missed := missed + 1;
                CONTINUE;
            END IF;
            id := 'schedule:' || s.name || ':' || to_char(tick AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
            BEGIN
                PERFORM werkfluss.start_run(
                    name => s.workflow,
                    args => jsonb_build_array(werkfluss._scheduled_at(tick, s.timezone)) || s.args,
                    run_id => id,
                    kwargs => s.kwargs);
            EXCEPTION WHEN unique_violation THEN
                missed := missed + 1;  -- the id belongs to a run of another workflow
                CONTINUE;
            END;
            started := started || id;
            busy := s.overlap = 'skip';
        END LOOP;
        UPDATE werkfluss.schedules x
           SET last_tick = ticks[cardinality(ticks)],
               last_run_id = coalesce(started[cardinality(started)], x.last_run_id),
               skipped = x.skipped + missed
         WHERE x.name = s.name;
    ELSIF missed > 0 THEN
        UPDATE werkfluss.schedules x SET skipped = x.skipped + missed WHERE x.name = s.name;
    END IF;
    RETURN started;
END
$$;

CREATE FUNCTION werkfluss._lease_queued(workflows text[], lim integer, worker text, OUT ids text[], OUT prev_ids uuid[], OUT prev_wks text[], OUT dues timestamp with time zone[]) RETURNS record
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
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
    ids := '{}';
    prev_ids := '{}';
    prev_wks := '{}';
    dues := '{}';
    -- The streams with a run ready for this worker, best head first ('' is
    -- the stream of runs in no queue).
    SELECT array_agg(DISTINCT w.queue_name) INTO names FROM werkfluss.workflow_queues w
     WHERE w.workflow = ANY(workflows);
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
          FROM unnest(coalesce(names, '{}')) AS q(name)
    ) h
     WHERE h.head IS NOT NULL;
    IF names IS NULL THEN
        RETURN;
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
            -- A start of a key needs a token of the key's start rate limit
            -- (one reserved for it counts); without one the key's starts are
            -- put aside until their tokens come.
            CONTINUE WHEN k.key_rate_limit IS NOT NULL AND c.claims = 0 AND c.concurrency_key IS NOT NULL
                      AND NOT werkfluss._take_key_start_token(k.name, c.concurrency_key, c.run_id,
                                                              k.key_rate_limit, k.key_rate_period);
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
END
$$;

CREATE FUNCTION werkfluss._lock_flow_keys(run_ids text[]) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE TABLE werkfluss.schedules (
    name text NOT NULL,
    workflow text NOT NULL,
    cron text NOT NULL,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    args jsonb DEFAULT '[]'::jsonb NOT NULL,
    kwargs jsonb DEFAULT '{}'::jsonb NOT NULL,
    catchup text DEFAULT 'latest'::text NOT NULL,
    catchup_limit integer DEFAULT 10 NOT NULL,
    overlap text DEFAULT 'skip'::text NOT NULL,
    origin text DEFAULT 'api'::text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    since timestamp with time zone DEFAULT now() NOT NULL,
    next_tick timestamp with time zone,
    last_tick timestamp with time zone,
    last_run_id text,
    skipped bigint DEFAULT 0 NOT NULL,
    error text,
    revision bigint DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schedules_catchup_check CHECK ((catchup = ANY (ARRAY['skip'::text, 'latest'::text, 'all'::text]))),
    CONSTRAINT schedules_catchup_limit_check CHECK (((catchup_limit >= 1) AND (catchup_limit <= 1000))),
    CONSTRAINT schedules_origin_check CHECK ((origin = ANY (ARRAY['code'::text, 'api'::text]))),
    CONSTRAINT schedules_overlap_check CHECK ((overlap = ANY (ARRAY['skip'::text, 'allow'::text])))
);

CREATE FUNCTION werkfluss._lock_schedule(caller text, name text) RETURNS werkfluss.schedules
    LANGUAGE plpgsql
    AS $$
DECLARE
    s werkfluss.schedules%ROWTYPE;
BEGIN
    PERFORM werkfluss._check_schedule_name(caller, name);
    SELECT * INTO s FROM werkfluss.schedules x WHERE x.name = _lock_schedule.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'werkfluss.%: no schedule named %', caller, quote_literal(name)
            USING ERRCODE = 'P0002', HINT = 'list the schedules with `werkfluss schedules`';
    END IF;
    RETURN s;
END
$$;

CREATE FUNCTION werkfluss._next_due(workflows text[]) RETURNS double precision
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN least(
        (SELECT extract(epoch FROM min(q.available_at) - clock_timestamp())
           FROM werkfluss.queue q
          WHERE NOT q.ready AND q.lease_id IS NULL AND q.available_at < 'infinity'
            AND q.workflow = ANY(workflows)),
        (SELECT extract(epoch FROM min(q.available_at) - clock_timestamp())
           FROM werkfluss.queue q
          WHERE q.lease_id IS NOT NULL AND q.available_at < 'infinity'
            AND q.workflow = ANY(workflows)),
        -- A queue whose start rate limit has no token left, with starts waiting.
        (SELECT min((1 - t.tokens) * t.period / t.capacity)
           FROM (SELECT b.capacity, b.period,
                        least(b.capacity, b.tokens + greatest(0, extract(epoch FROM now() - b.refreshed_at))
                                                     * b.capacity / b.period) AS tokens
                   FROM werkfluss.queues k
                   JOIN werkfluss.rate_limits b ON b.name = 'queue:' || k.name
                  WHERE k.rate_limit IS NOT NULL
                    AND EXISTS (SELECT 1 FROM werkfluss.queue q
                                 WHERE q.queue_name = k.name AND q.ready AND NOT q.parked AND q.claims = 0
                                   AND q.workflow = ANY(workflows))) t
          WHERE t.tokens < 1)
    )::double precision;
END
$$;

CREATE FUNCTION werkfluss._queue_slot_freed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._reap_workers() RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._run_inputs(run_id text, OUT wakeups integer, OUT inbox jsonb, OUT children jsonb) RETURNS record
    LANGUAGE plpgsql STABLE
    AS $$
#variable_conflict use_column
BEGIN
    SELECT (SELECT q.wakeups FROM werkfluss.queue q WHERE q.run_id = _run_inputs.run_id),
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'id', p.id, 'token', p.token, 'payload', p.payload,
                       'received_at', p.received_at) ORDER BY p.id), '[]'::jsonb)
              FROM werkfluss.hooks h
              JOIN werkfluss.hook_payloads p ON p.token = h.token AND p.consumed_seq IS NULL
             WHERE h.run_id = _run_inputs.run_id),
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'run_id', c.id, 'status', c.status, 'result', c.result, 'error', c.error,
                       'finished_at', c.finished_at) ORDER BY c.finished_at, c.id), '[]'::jsonb)
              FROM werkfluss.runs c
             WHERE c.parent_id = _run_inputs.run_id AND c.finished_at IS NOT NULL AND NOT c.delivered)
      INTO wakeups, inbox, children;
END
$$;

CREATE FUNCTION werkfluss._runs_traceparent() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
BEGIN
    IF NEW.traceparent IS NULL THEN
        NEW.traceparent := nullif(current_setting('werkfluss.traceparent', true), '');
    END IF;
    IF NEW.traceparent IS NOT NULL AND (
           NEW.traceparent !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
           OR left(NEW.traceparent, 2) = 'ff'
           OR substr(NEW.traceparent, 4, 32) = repeat('0', 32)
           OR substr(NEW.traceparent, 37, 16) = repeat('0', 16)) THEN
        RAISE EXCEPTION 'werkfluss.start_run: werkfluss.traceparent must be a W3C traceparent, got %',
                quote_literal(left(NEW.traceparent, 100))
            USING ERRCODE = '22023',
                  HINT = 'version-traceid-spanid-flags in lowercase hex, e.g. '
                         '''00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01''; '
                         'or leave the setting empty';
    END IF;
    RETURN NEW;
END
$_$;

CREATE FUNCTION werkfluss._schedule_name_problem(name text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE
        WHEN name IS NULL THEN 'is NULL'
        WHEN btrim(name, E' \t\n\r\v\f') = '' THEN 'is empty'
        WHEN length(name) > 200 THEN format('is %s characters long; the limit is 200', length(name))
        WHEN strpos(name, ':') > 0 THEN format('%s contains '':''', quote_literal(name))
        WHEN name ~ '[[:space:][:cntrl:]]' THEN format('%s contains whitespace', quote_literal(name))
    END
$$;

CREATE FUNCTION werkfluss._scheduled_at(tick timestamp with time zone, tz text) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        '__werkfluss__', 'datetime',
        'v', to_char(local, 'YYYY-MM-DD"T"HH24:MI:SS')
             || CASE WHEN off < interval '0' THEN '-' ELSE '+' END
             || to_char(CASE WHEN off < interval '0' THEN -off ELSE off END, 'HH24:MI'))
      FROM (SELECT date_trunc('second', tick) AT TIME ZONE tz AS local,
                   (date_trunc('second', tick) AT TIME ZONE tz)
                   - (date_trunc('second', tick) AT TIME ZONE 'UTC') AS off) t
$$;

CREATE FUNCTION werkfluss._send(token text, payload jsonb) RETURNS text
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._take_key_start_token(queue_name text, key text, run_id text, capacity integer, period double precision) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    bucket    text := 'queue:' || _take_key_start_token.queue_name || '[' || _take_key_start_token.key || ']';
    run       record;
    available double precision;
    aside     text[];
BEGIN
    -- The key's lock, as the per-key concurrency limit takes it: only a claim
    -- holding it touches the key's bucket, so claims never wait for a bucket.
    IF NOT pg_try_advisory_xact_lock(hashtextextended(
            'werkfluss.key:' || _take_key_start_token.queue_name || chr(31) || _take_key_start_token.key, 0)) THEN
        RETURN false;
    END IF;
    SELECT q.ready, q.parked, q.available_at, q.throttled_until INTO run
      FROM werkfluss.queue q WHERE q.run_id = _take_key_start_token.run_id;
    IF NOT FOUND OR NOT run.ready OR run.parked THEN
        RETURN false;  -- put aside or parked by this claim since its loop read the run
    END IF;
    IF run.throttled_until = run.available_at THEN
        RETURN true;  -- its token was reserved when it was put aside
    END IF;
    available := werkfluss._bucket(bucket, _take_key_start_token.capacity, _take_key_start_token.period);
    IF available >= 1 THEN
        UPDATE werkfluss.rate_limits b SET tokens = b.tokens - 1 WHERE b.name = bucket;
        RETURN true;
    END IF;
    aside := ARRAY(
        SELECT q.run_id FROM werkfluss.queue q
         WHERE q.queue_name = _take_key_start_token.queue_name AND q.concurrency_key = _take_key_start_token.key
           AND q.ready AND NOT q.parked AND q.claims = 0 AND q.lease_id IS NULL
           AND q.throttled_until IS DISTINCT FROM q.available_at
         ORDER BY q.sort_at
         LIMIT 1000
           FOR UPDATE SKIP LOCKED);
    -- The n-th waits for the n-th token from now: (n - available) tokens' time.
    UPDATE werkfluss.queue x
       SET ready = false, available_at = t.due, throttled_until = t.due
      FROM (SELECT a.run_id,
                   now() + make_interval(secs => (a.n - available) * _take_key_start_token.period
                                                 / _take_key_start_token.capacity) AS due
              FROM unnest(aside) WITH ORDINALITY AS a(run_id, n)) t
     WHERE x.run_id = t.run_id;
    UPDATE werkfluss.rate_limits b SET tokens = b.tokens - cardinality(aside) WHERE b.name = bucket;
    RETURN false;
END
$$;

CREATE FUNCTION werkfluss._take_token(name text, capacity integer, period double precision, run_id text DEFAULT NULL::text, waited boolean DEFAULT false) RETURNS double precision
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss._upsert_schedule(name text, workflow text, cron text, timezone text, args jsonb, kwargs jsonb, catchup text, overlap text, catchup_limit integer, origin text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
DECLARE
    changed boolean;
BEGIN
    INSERT INTO werkfluss.schedules AS s
           (name, workflow, cron, timezone, args, kwargs, catchup, overlap, catchup_limit, origin)
    VALUES (_upsert_schedule.name, _upsert_schedule.workflow, _upsert_schedule.cron,
            _upsert_schedule.timezone, _upsert_schedule.args, _upsert_schedule.kwargs,
            _upsert_schedule.catchup, _upsert_schedule.overlap, _upsert_schedule.catchup_limit,
            _upsert_schedule.origin)
    ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
       SET workflow = excluded.workflow, cron = excluded.cron, timezone = excluded.timezone,
           args = excluded.args, kwargs = excluded.kwargs, catchup = excluded.catchup,
           overlap = excluded.overlap, catchup_limit = excluded.catchup_limit,
           origin = excluded.origin,
           since = CASE WHEN (s.cron, s.timezone) = (excluded.cron, excluded.timezone)
                        THEN s.since ELSE now() END,
           next_tick = CASE WHEN (s.cron, s.timezone) = (excluded.cron, excluded.timezone)
                            THEN s.next_tick END,
           error = NULL, revision = s.revision + 1, updated_at = now()
     WHERE (s.workflow, s.cron, s.timezone, s.args, s.kwargs, s.catchup, s.overlap,
            s.catchup_limit, s.origin, s.error)
           IS DISTINCT FROM (excluded.workflow, excluded.cron, excluded.timezone, excluded.args,
                             excluded.kwargs, excluded.catchup, excluded.overlap,
                             excluded.catchup_limit, excluded.origin, NULL::text)
    RETURNING true INTO changed;
    IF coalesce(changed, false) THEN
        -- Workers serving the workflow look at their schedules again.
        PERFORM pg_notify('werkfluss_queue', 'schedule:' || _upsert_schedule.workflow);
    END IF;
    RETURN coalesce(changed, false);
END
$$;

CREATE FUNCTION werkfluss._wake(run_id text) RETURNS void
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION werkfluss.cancel_run(run_id text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
    parent    text;
    cancelled text[];
BEGIN
    IF cancel_run.run_id IS NULL OR btrim(cancel_run.run_id, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.cancel_run: run_id is %',
                CASE WHEN cancel_run.run_id IS NULL THEN 'NULL' ELSE 'empty' END
            USING ERRCODE = '22023', HINT = 'pass the id start_run returned';
    END IF;
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

CREATE FUNCTION werkfluss.create_schedule(name text, workflow text, cron text, timezone text DEFAULT 'UTC'::text, args jsonb DEFAULT '[]'::jsonb, kwargs jsonb DEFAULT '{}'::jsonb, catchup text DEFAULT 'latest'::text, overlap text DEFAULT 'skip'::text, catchup_limit integer DEFAULT 10) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    fields text[];
BEGIN
    PERFORM werkfluss._check_schedule_name('create_schedule', create_schedule.name);
    IF create_schedule.workflow IS NULL OR btrim(create_schedule.workflow, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: the workflow name is %',
                CASE WHEN create_schedule.workflow IS NULL THEN 'NULL' ELSE 'empty' END
            USING ERRCODE = '22023', HINT = 'pass the registered name, e.g. ''app.reports.nightly''';
    END IF;
    IF length(create_schedule.workflow) > 255 THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: the workflow name is % characters long; the limit is 255',
                length(create_schedule.workflow)
            USING ERRCODE = '22023';
    END IF;
    fields := regexp_split_to_array(btrim(coalesce(create_schedule.cron, ''), E' \t\n\r\v\f'), '\s+');
    IF create_schedule.cron IS NULL OR length(create_schedule.cron) > 200
       OR cardinality(fields) NOT IN (5, 6)
       OR EXISTS (SELECT 1 FROM unnest(fields) f WHERE f !~ '^[0-9A-Za-z*/,#-]+$') THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: % is not a cron expression',
                coalesce(quote_literal(create_schedule.cron), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'five fields, minute hour day-of-month month day-of-week, e.g. ''0 2 * * *'' '
                         '(or six, with seconds first)';
    END IF;
    BEGIN
        PERFORM now() AT TIME ZONE create_schedule.timezone;
    EXCEPTION WHEN invalid_parameter_value OR null_value_not_allowed THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: unknown time zone %',
                coalesce(quote_literal(create_schedule.timezone), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'use an IANA name such as ''Europe/Berlin'' or ''UTC'' (see pg_timezone_names)';
    END;
    IF create_schedule.timezone IS NULL THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: unknown time zone NULL'
            USING ERRCODE = '22023', HINT = 'use an IANA name such as ''Europe/Berlin'' or ''UTC''';
    END IF;
    IF create_schedule.args IS NULL OR jsonb_typeof(create_schedule.args) <> 'array' THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: args must be a JSON array, got %',
                coalesce(jsonb_typeof(create_schedule.args), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'the arguments after the scheduled time, e.g. ''["eu"]''::jsonb';
    END IF;
    IF create_schedule.kwargs IS NULL OR jsonb_typeof(create_schedule.kwargs) <> 'object' THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: kwargs must be a JSON object, got %',
                coalesce(jsonb_typeof(create_schedule.kwargs), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF create_schedule.catchup IS NULL OR create_schedule.catchup NOT IN ('skip', 'latest', 'all') THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: catchup must be ''skip'', ''latest'' or ''all'', got %',
                coalesce(quote_literal(create_schedule.catchup), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF create_schedule.overlap IS NULL OR create_schedule.overlap NOT IN ('skip', 'allow') THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: overlap must be ''skip'' or ''allow'', got %',
                coalesce(quote_literal(create_schedule.overlap), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF create_schedule.catchup_limit IS NULL OR create_schedule.catchup_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: catchup_limit must be from 1 to 1000, got %',
                coalesce(create_schedule.catchup_limit::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF create_schedule.catchup = 'all' AND create_schedule.overlap = 'skip' THEN
        RAISE EXCEPTION 'werkfluss.create_schedule: catchup ''all'' needs overlap ''allow'''
            USING ERRCODE = '22023',
                  HINT = 'with overlap ''skip'' every missed tick but one would be skipped; '
                         'use catchup ''latest'' for that';
    END IF;
    PERFORM werkfluss._upsert_schedule(
        create_schedule.name, create_schedule.workflow,
        array_to_string(fields, ' '), create_schedule.timezone,
        create_schedule.args, create_schedule.kwargs, create_schedule.catchup,
        create_schedule.overlap, create_schedule.catchup_limit, 'api');
    RETURN create_schedule.name;
END
$_$;

CREATE FUNCTION werkfluss.declare_queue(name text, concurrency integer DEFAULT NULL::integer, per_key integer DEFAULT NULL::integer, worker_concurrency integer DEFAULT NULL::integer, rate_limit integer DEFAULT NULL::integer, rate_period interval DEFAULT NULL::interval, priority_aging interval DEFAULT '00:01:00'::interval, key_rate_limit integer DEFAULT NULL::integer, key_rate_period interval DEFAULT NULL::interval) RETURNS text
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    old        werkfluss.queues%ROWTYPE;
    period     double precision := extract(epoch FROM declare_queue.rate_period);
    key_period double precision := extract(epoch FROM declare_queue.key_rate_period);
    aging      double precision := extract(epoch FROM declare_queue.priority_aging);
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
    IF strpos(declare_queue.name, '[') > 0 OR strpos(declare_queue.name, ']') > 0 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: the queue name % contains ''['' or '']''',
                quote_literal(declare_queue.name)
            USING ERRCODE = '22023',
                  HINT = 'brackets name the rate limit buckets of keys (''queue:exports[customer-42]''); '
                         'use e.g. ''exports.eu''';
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
    IF (declare_queue.key_rate_limit IS NULL) <> (declare_queue.key_rate_period IS NULL) THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: key_rate_limit and key_rate_period go together'
            USING ERRCODE = '22023', HINT = 'e.g. key_rate_limit => 10, key_rate_period => ''1 minute''';
    END IF;
    IF declare_queue.key_rate_limit IS NOT NULL AND declare_queue.key_rate_limit NOT BETWEEN 1 AND 1000000000 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: key_rate_limit must be from 1 to 1000000000, got %',
                declare_queue.key_rate_limit USING ERRCODE = '22023';
    END IF;
    IF key_period IS NOT NULL AND (key_period <= 0 OR key_period > 2678400) THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: key_rate_period must be from 1 microsecond to 31 days, got %',
                declare_queue.key_rate_period USING ERRCODE = '22023';
    END IF;
    IF aging IS NULL OR aging <= 0 OR aging > 86400 THEN
        RAISE EXCEPTION 'werkfluss.declare_queue: priority_aging must be from 1 microsecond to 1 day, got %',
                coalesce(declare_queue.priority_aging::text, 'NULL') USING ERRCODE = '22023';
    END IF;

    SELECT * INTO old FROM werkfluss.queues q WHERE q.name = declare_queue.name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO werkfluss.queues (name, concurrency, per_key, worker_concurrency, rate_limit,
                                      rate_period, priority_aging, key_rate_limit, key_rate_period)
        VALUES (declare_queue.name, declare_queue.concurrency, declare_queue.per_key,
                declare_queue.worker_concurrency, declare_queue.rate_limit, period, aging,
                declare_queue.key_rate_limit, key_period)
        ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            RETURN 'created';
        END IF;
        SELECT * INTO old FROM werkfluss.queues q WHERE q.name = declare_queue.name FOR UPDATE;
    END IF;
    IF (old.concurrency, old.per_key, old.worker_concurrency, old.rate_limit, old.rate_period,
        old.priority_aging, old.key_rate_limit, old.key_rate_period)
       IS NOT DISTINCT FROM (declare_queue.concurrency, declare_queue.per_key,
                             declare_queue.worker_concurrency, declare_queue.rate_limit, period, aging,
                             declare_queue.key_rate_limit, key_period) THEN
        RETURN 'unchanged';
    END IF;
    UPDATE werkfluss.queues q
       SET concurrency = declare_queue.concurrency, per_key = declare_queue.per_key,
           worker_concurrency = declare_queue.worker_concurrency, rate_limit = declare_queue.rate_limit,
           rate_period = period, priority_aging = aging, key_rate_limit = declare_queue.key_rate_limit,
           key_rate_period = key_period, updated_at = now()
     WHERE q.name = declare_queue.name;
    IF old.per_key IS NOT NULL
       AND (declare_queue.per_key IS NULL OR declare_queue.per_key > old.per_key) THEN
        UPDATE werkfluss.queue y SET parked = false WHERE y.queue_name = declare_queue.name AND y.parked;
    END IF;
    IF old.key_rate_limit IS NOT NULL
       AND (old.key_rate_limit, old.key_rate_period)
           IS DISTINCT FROM (declare_queue.key_rate_limit, key_period) THEN
        UPDATE werkfluss.queue y SET available_at = now(), ready = true, throttled_until = NULL
         WHERE y.queue_name = declare_queue.name AND NOT y.ready AND y.lease_id IS NULL
           AND y.throttled_until = y.available_at;
        DELETE FROM werkfluss.rate_limits b
         WHERE left(b.name, length(declare_queue.name) + 7) = 'queue:' || declare_queue.name || '['
           AND right(b.name, 1) = ']';
    END IF;
    PERFORM pg_notify('werkfluss_queue', '');
    RETURN 'changed';
END
$$;

CREATE FUNCTION werkfluss.delete_schedule(name text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    s werkfluss.schedules%ROWTYPE := werkfluss._lock_schedule('delete_schedule', delete_schedule.name);
BEGIN
    DELETE FROM werkfluss.schedules x WHERE x.name = s.name;
    RETURN true;
END
$$;

CREATE FUNCTION werkfluss.pause_schedule(name text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    s werkfluss.schedules%ROWTYPE := werkfluss._lock_schedule('pause_schedule', pause_schedule.name);
BEGIN
    IF s.paused THEN
        RETURN false;
    END IF;
    UPDATE werkfluss.schedules x
       SET paused = true, revision = x.revision + 1, updated_at = now()
     WHERE x.name = s.name;
    RETURN true;
END
$$;

CREATE FUNCTION werkfluss.prune_runs(older_than interval, batch_size integer DEFAULT 500, wait boolean DEFAULT true) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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

CREATE FUNCTION werkfluss.resume_schedule(name text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    s werkfluss.schedules%ROWTYPE := werkfluss._lock_schedule('resume_schedule', resume_schedule.name);
BEGIN
    IF NOT s.paused THEN
        RETURN false;
    END IF;
    UPDATE werkfluss.schedules x
       SET paused = false, since = now(), next_tick = NULL, revision = x.revision + 1,
           updated_at = now()
     WHERE x.name = s.name;
    PERFORM pg_notify('werkfluss_queue', 'schedule:' || s.workflow);
    RETURN true;
END
$$;

CREATE FUNCTION werkfluss.retry_run(run_id text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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

CREATE FUNCTION werkfluss.run_status(run_id text, OUT status text, OUT result jsonb, OUT error jsonb) RETURNS record
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF run_status.run_id IS NULL OR btrim(run_status.run_id, E' \t\n\r\v\f') = '' THEN
        RAISE EXCEPTION 'werkfluss.run_status: run_id is %',
                CASE WHEN run_status.run_id IS NULL THEN 'NULL' ELSE 'empty' END
            USING ERRCODE = '22023', HINT = 'pass the id start_run returned';
    END IF;
    SELECT r.status, r.result, r.error INTO run_status.status, run_status.result, run_status.error
      FROM werkfluss.runs r
     WHERE r.id = run_status.run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'werkfluss.run_status: no run with id %', run_status.run_id
            USING ERRCODE = 'P0002';
    END IF;
END
$$;

CREATE FUNCTION werkfluss.send(token text, payload jsonb DEFAULT 'null'::jsonb) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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

CREATE FUNCTION werkfluss.start_run(name text, args jsonb DEFAULT '[]'::jsonb, run_id text DEFAULT NULL::text, kwargs jsonb DEFAULT '{}'::jsonb, timeout interval DEFAULT NULL::interval, queue text DEFAULT NULL::text, concurrency_key text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, start_at timestamp with time zone DEFAULT NULL::timestamp with time zone, delay interval DEFAULT NULL::interval, debounce interval DEFAULT NULL::interval, debounce_key text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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

CREATE FUNCTION werkfluss.trigger_schedule(name text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    s      werkfluss.schedules%ROWTYPE := werkfluss._lock_schedule('trigger_schedule', trigger_schedule.name);
    run_id text := 'schedule:' || s.name || ':manual:'
                   || to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
BEGIN
    PERFORM werkfluss.start_run(
        name => s.workflow,
        args => jsonb_build_array(werkfluss._scheduled_at(now(), s.timezone)) || s.args,
        run_id => run_id,
        kwargs => s.kwargs);
    UPDATE werkfluss.schedules x SET last_run_id = run_id, updated_at = now() WHERE x.name = s.name;
    RETURN run_id;
END
$$;

CREATE TABLE werkfluss.audit (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    action text NOT NULL,
    run_id text,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL,
    client text,
    CONSTRAINT audit_action_check CHECK ((action = ANY (ARRAY['cancel'::text, 'retry'::text, 'send'::text, 'pause'::text, 'resume'::text, 'trigger'::text, 'delete'::text])))
);

ALTER TABLE werkfluss.audit ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME werkfluss.audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE werkfluss.events (
    run_id text NOT NULL,
    seq integer NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    status text NOT NULL,
    input jsonb,
    output json,
    error jsonb,
    attempts integer DEFAULT 1 NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT events_status_check CHECK ((status = ANY (ARRAY['completed'::text, 'failed'::text])))
);

CREATE TABLE werkfluss.hook_payloads (
    id bigint NOT NULL,
    token text NOT NULL,
    payload jsonb NOT NULL,
    received_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    consumed_run text,
    consumed_seq integer
);

CREATE SEQUENCE werkfluss.hook_payloads_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE werkfluss.hook_payloads_id_seq OWNED BY werkfluss.hook_payloads.id;

CREATE TABLE werkfluss.hooks (
    token text NOT NULL,
    run_id text NOT NULL,
    seq integer NOT NULL,
    multi boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE werkfluss.migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE werkfluss.queue (
    run_id text NOT NULL,
    workflow text NOT NULL,
    available_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_id uuid,
    worker_id text,
    claims integer DEFAULT 0 NOT NULL,
    wakeups integer DEFAULT 0 NOT NULL,
    queue_name text,
    concurrency_key text,
    priority_lag double precision DEFAULT 0 NOT NULL,
    ready boolean DEFAULT true NOT NULL,
    parked boolean DEFAULT false NOT NULL,
    debounce_key text,
    sort_at timestamp with time zone GENERATED ALWAYS AS ((((available_at AT TIME ZONE '00:00:00'::interval) + make_interval(secs => priority_lag)) AT TIME ZONE '00:00:00'::interval)) STORED,
    throttled_until timestamp with time zone
);

CREATE TABLE werkfluss.queues (
    name text NOT NULL,
    concurrency integer,
    per_key integer,
    worker_concurrency integer,
    rate_limit integer,
    rate_period double precision,
    priority_aging double precision DEFAULT 60 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    key_rate_limit integer,
    key_rate_period double precision,
    CONSTRAINT queues_check CHECK (((rate_limit IS NULL) = (rate_period IS NULL))),
    CONSTRAINT queues_concurrency_check CHECK (((concurrency >= 1) AND (concurrency <= 1000000))),
    CONSTRAINT queues_key_rate_check CHECK (((key_rate_limit IS NULL) = (key_rate_period IS NULL))),
    CONSTRAINT queues_key_rate_limit_check CHECK (((key_rate_limit >= 1) AND (key_rate_limit <= 1000000000))),
    CONSTRAINT queues_key_rate_period_check CHECK (((key_rate_period > (0)::double precision) AND (key_rate_period <= (2678400)::double precision))),
    CONSTRAINT queues_per_key_check CHECK (((per_key >= 1) AND (per_key <= 1000000))),
    CONSTRAINT queues_priority_aging_check CHECK (((priority_aging > (0)::double precision) AND (priority_aging <= (86400)::double precision))),
    CONSTRAINT queues_rate_limit_check CHECK (((rate_limit >= 1) AND (rate_limit <= 1000000000))),
    CONSTRAINT queues_rate_period_check CHECK (((rate_period > (0)::double precision) AND (rate_period <= (2678400)::double precision))),
    CONSTRAINT queues_worker_concurrency_check CHECK (((worker_concurrency >= 1) AND (worker_concurrency <= 10000)))
);

CREATE TABLE werkfluss.rate_limits (
    name text NOT NULL,
    capacity integer NOT NULL,
    period double precision NOT NULL,
    tokens double precision NOT NULL,
    refreshed_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT rate_limits_capacity_check CHECK ((capacity >= 1)),
    CONSTRAINT rate_limits_period_check CHECK ((period > (0)::double precision))
)
WITH (fillfactor='50');

CREATE TABLE werkfluss.workers (
    id text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    workflows text[] DEFAULT '{}'::text[] NOT NULL,
    concurrency integer NOT NULL,
    lease_seconds double precision NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    runs_held integer DEFAULT 0 NOT NULL,
    state text DEFAULT 'running'::text NOT NULL,
    stopped_at timestamp with time zone,
    app_name text,
    CONSTRAINT workers_lease_seconds_check CHECK ((lease_seconds > (0)::double precision)),
    CONSTRAINT workers_state_check CHECK ((state = ANY (ARRAY['running'::text, 'stopping'::text, 'stopped'::text, 'dead'::text])))
)
WITH (fillfactor='50');

CREATE VIEW werkfluss.pending_reasons AS
 SELECT q.run_id,
        CASE
            WHEN ((q.throttled_until = q.available_at) AND (q.available_at > now())) THEN jsonb_build_object('kind', 'rate', 'name', ((('queue '::text || q.queue_name) || ' key '::text) || q.concurrency_key), 'queue', q.queue_name, 'key', q.concurrency_key, 'until', q.available_at)
            WHEN ((q.available_at > now()) AND (q.available_at < 'infinity'::timestamp with time zone)) THEN jsonb_build_object('kind', 'scheduled', 'at', q.available_at)
            WHEN ((k.per_key IS NOT NULL) AND (q.concurrency_key IS NOT NULL) AND (q.parked OR (( SELECT count(*) AS count
               FROM werkfluss.queue x
              WHERE ((x.queue_name = q.queue_name) AND (x.concurrency_key = q.concurrency_key) AND (x.lease_id IS NOT NULL))) >= k.per_key))) THEN jsonb_build_object('kind', 'key', 'queue', k.name, 'key', q.concurrency_key, 'limit', k.per_key, 'held', ( SELECT count(*) AS count
               FROM werkfluss.queue x
              WHERE ((x.queue_name = q.queue_name) AND (x.concurrency_key = q.concurrency_key) AND (x.lease_id IS NOT NULL))))
            WHEN ((k.concurrency IS NOT NULL) AND (( SELECT count(*) AS count
               FROM werkfluss.queue x
              WHERE ((x.queue_name = q.queue_name) AND (x.lease_id IS NOT NULL))) >= k.concurrency)) THEN jsonb_build_object('kind', 'queue', 'queue', k.name, 'limit', k.concurrency, 'held', ( SELECT count(*) AS count
               FROM werkfluss.queue x
              WHERE ((x.queue_name = q.queue_name) AND (x.lease_id IS NOT NULL))))
            WHEN ((k.rate_limit IS NOT NULL) AND (q.claims = 0) AND (t.tokens < (1)::double precision)) THEN jsonb_build_object('kind', 'rate', 'name', ('queue '::text || k.name), 'until', (now() + make_interval(secs => ((((1)::double precision - t.tokens) * b.period) / (b.capacity)::double precision))))
            WHEN ((k.key_rate_limit IS NOT NULL) AND (q.concurrency_key IS NOT NULL) AND (q.claims = 0) AND (q.throttled_until IS DISTINCT FROM q.available_at) AND (kt.tokens < (1)::double precision)) THEN jsonb_build_object('kind', 'rate', 'name', ((('queue '::text || k.name) || ' key '::text) || q.concurrency_key), 'queue', k.name, 'key', q.concurrency_key, 'until', (now() + make_interval(secs => ((((1)::double precision - kt.tokens) * kb.period) / (kb.capacity)::double precision))))
            WHEN ((k.worker_concurrency IS NOT NULL) AND (EXISTS ( SELECT 1
               FROM werkfluss.workers w
              WHERE ((w.state = 'running'::text) AND (q.workflow = ANY (w.workflows)) AND (w.heartbeat_at >= (now() - make_interval(secs => w.lease_seconds)))))) AND (NOT (EXISTS ( SELECT 1
               FROM werkfluss.workers w
              WHERE ((w.state = 'running'::text) AND (q.workflow = ANY (w.workflows)) AND (w.heartbeat_at >= (now() - make_interval(secs => w.lease_seconds))) AND (( SELECT count(*) AS count
                       FROM werkfluss.queue x
                      WHERE ((x.worker_id = w.id) AND (x.lease_id IS NOT NULL) AND (x.queue_name = q.queue_name))) < k.worker_concurrency)))))) THEN jsonb_build_object('kind', 'worker_limit', 'queue', k.name, 'limit', k.worker_concurrency)
            ELSE NULL::jsonb
        END AS blocked
   FROM ((((((werkfluss.queue q
     JOIN werkfluss.runs r ON (((r.id = q.run_id) AND (r.status = 'pending'::text))))
     LEFT JOIN werkfluss.queues k ON ((k.name = q.queue_name)))
     LEFT JOIN werkfluss.rate_limits b ON ((b.name = ('queue:'::text || q.queue_name))))
     LEFT JOIN LATERAL ( SELECT LEAST((b.capacity)::double precision, (b.tokens + (((GREATEST((0)::numeric, EXTRACT(epoch FROM (now() - b.refreshed_at))) * (b.capacity)::numeric))::double precision / b.period))) AS tokens) t ON ((b.name IS NOT NULL)))
     LEFT JOIN werkfluss.rate_limits kb ON ((kb.name = (((('queue:'::text || q.queue_name) || '['::text) || q.concurrency_key) || ']'::text))))
     LEFT JOIN LATERAL ( SELECT LEAST((kb.capacity)::double precision, (kb.tokens + (((GREATEST((0)::numeric, EXTRACT(epoch FROM (now() - kb.refreshed_at))) * (kb.capacity)::numeric))::double precision / kb.period))) AS tokens) kt ON ((kb.name IS NOT NULL)))
  WHERE (q.lease_id IS NULL);

CREATE TABLE werkfluss.workflow_queues (
    workflow text NOT NULL,
    queue_name text NOT NULL,
    is_default boolean DEFAULT false NOT NULL
);

ALTER TABLE ONLY werkfluss.hook_payloads ALTER COLUMN id SET DEFAULT nextval('werkfluss.hook_payloads_id_seq'::regclass);

ALTER TABLE ONLY werkfluss.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);

ALTER TABLE ONLY werkfluss.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (run_id, seq);

ALTER TABLE ONLY werkfluss.hook_payloads
    ADD CONSTRAINT hook_payloads_pkey PRIMARY KEY (id);

ALTER TABLE ONLY werkfluss.hooks
    ADD CONSTRAINT hooks_pkey PRIMARY KEY (token);

ALTER TABLE ONLY werkfluss.migrations
    ADD CONSTRAINT migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY werkfluss.queue
    ADD CONSTRAINT queue_pkey PRIMARY KEY (run_id);

ALTER TABLE ONLY werkfluss.queues
    ADD CONSTRAINT queues_pkey PRIMARY KEY (name);

ALTER TABLE ONLY werkfluss.rate_limits
    ADD CONSTRAINT rate_limits_pkey PRIMARY KEY (name);

ALTER TABLE ONLY werkfluss.runs
    ADD CONSTRAINT runs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY werkfluss.schedules
    ADD CONSTRAINT schedules_pkey PRIMARY KEY (name);

ALTER TABLE ONLY werkfluss.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (id);

ALTER TABLE ONLY werkfluss.workflow_queues
    ADD CONSTRAINT workflow_queues_pkey PRIMARY KEY (workflow, queue_name);

CREATE INDEX audit_at_idx ON werkfluss.audit USING btree (at);

CREATE INDEX audit_run_id_idx ON werkfluss.audit USING btree (run_id, at) WHERE (run_id IS NOT NULL);

CREATE INDEX hook_payloads_pending_idx ON werkfluss.hook_payloads USING btree (token, id) WHERE (consumed_seq IS NULL);

CREATE INDEX hook_payloads_token_idx ON werkfluss.hook_payloads USING btree (token);

CREATE UNIQUE INDEX hooks_run_id_seq_idx ON werkfluss.hooks USING btree (run_id, seq);

CREATE UNIQUE INDEX queue_debounce_idx ON werkfluss.queue USING btree (workflow, debounce_key) WHERE (debounce_key IS NOT NULL);

CREATE INDEX queue_due_idx ON werkfluss.queue USING btree (available_at) WHERE ((NOT ready) AND (lease_id IS NULL));

CREATE INDEX queue_held_idx ON werkfluss.queue USING btree (queue_name, concurrency_key) WHERE ((lease_id IS NOT NULL) AND (queue_name IS NOT NULL));

CREATE INDEX queue_key_ready_idx ON werkfluss.queue USING btree (queue_name, concurrency_key) WHERE ((concurrency_key IS NOT NULL) AND ready AND (NOT parked));

CREATE INDEX queue_lease_expiry_idx ON werkfluss.queue USING btree (available_at) WHERE ((lease_id IS NOT NULL) AND (available_at < 'infinity'::timestamp with time zone));

CREATE INDEX queue_line_idx ON werkfluss.queue USING btree (sort_at) WHERE (ready AND (NOT parked) AND (queue_name IS NULL));

CREATE INDEX queue_line_queued_idx ON werkfluss.queue USING btree (queue_name, sort_at) WHERE (ready AND (NOT parked) AND (queue_name IS NOT NULL));

CREATE INDEX queue_parked_idx ON werkfluss.queue USING btree (queue_name, concurrency_key, sort_at) WHERE parked;

CREATE INDEX queue_worker_id_idx ON werkfluss.queue USING btree (worker_id) WHERE (worker_id IS NOT NULL);

CREATE INDEX runs_created_at_idx ON werkfluss.runs USING btree (created_at);

CREATE INDEX runs_finished_at_idx ON werkfluss.runs USING btree (finished_at) WHERE (finished_at IS NOT NULL);

CREATE INDEX runs_parent_id_idx ON werkfluss.runs USING btree (parent_id) WHERE (parent_id IS NOT NULL);

CREATE INDEX runs_undelivered_idx ON werkfluss.runs USING btree (parent_id) WHERE ((parent_id IS NOT NULL) AND (finished_at IS NOT NULL) AND (NOT delivered));

CREATE INDEX schedules_workflow_idx ON werkfluss.schedules USING btree (workflow);

CREATE UNIQUE INDEX workflow_queues_default_idx ON werkfluss.workflow_queues USING btree (workflow) WHERE is_default;

CREATE TRIGGER queue_released AFTER UPDATE OF lease_id ON werkfluss.queue FOR EACH ROW WHEN (((old.queue_name IS NOT NULL) AND (old.lease_id IS NOT NULL) AND (new.lease_id IS NULL))) EXECUTE FUNCTION werkfluss._queue_slot_freed();

CREATE TRIGGER queue_removed AFTER DELETE ON werkfluss.queue FOR EACH ROW WHEN (((old.queue_name IS NOT NULL) AND (NOT old.parked))) EXECUTE FUNCTION werkfluss._queue_slot_freed();

CREATE TRIGGER runs_traceparent BEFORE INSERT ON werkfluss.runs FOR EACH ROW EXECUTE FUNCTION werkfluss._runs_traceparent();

GRANT USAGE ON SCHEMA werkfluss TO werkfluss_client;

REVOKE ALL ON FUNCTION werkfluss._break_schedule(name text, revision bigint, error text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._bucket(name text, capacity integer, period double precision) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._cancel_tree(roots text[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._check_schedule_name(caller text, name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._claim(workflows text[], lim integer, worker text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._claim_runs(workflows text[], lim integer, worker text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._declare_workflow_queue(workflow text, queue_name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._fire_schedule(name text, revision bigint, ticks timestamp with time zone[], next_tick timestamp with time zone, skipped integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._lease_queued(workflows text[], lim integer, worker text, OUT ids text[], OUT prev_ids uuid[], OUT prev_wks text[], OUT dues timestamp with time zone[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._lock_flow_keys(run_ids text[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._lock_schedule(caller text, name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._next_due(workflows text[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._queue_slot_freed() FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._reap_workers() FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._run_inputs(run_id text, OUT wakeups integer, OUT inbox jsonb, OUT children jsonb) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._runs_traceparent() FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._schedule_name_problem(name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._scheduled_at(tick timestamp with time zone, tz text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._send(token text, payload jsonb) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._take_key_start_token(queue_name text, key text, run_id text, capacity integer, period double precision) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._take_token(name text, capacity integer, period double precision, run_id text, waited boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._upsert_schedule(name text, workflow text, cron text, timezone text, args jsonb, kwargs jsonb, catchup text, overlap text, catchup_limit integer, origin text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss._wake(run_id text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.cancel_run(run_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION werkfluss.cancel_run(run_id text) TO werkfluss_client;

REVOKE ALL ON FUNCTION werkfluss.create_schedule(name text, workflow text, cron text, timezone text, args jsonb, kwargs jsonb, catchup text, overlap text, catchup_limit integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.declare_queue(name text, concurrency integer, per_key integer, worker_concurrency integer, rate_limit integer, rate_period interval, priority_aging interval, key_rate_limit integer, key_rate_period interval) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.delete_schedule(name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.pause_schedule(name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.prune_runs(older_than interval, batch_size integer, wait boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.resume_schedule(name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.retry_run(run_id text) FROM PUBLIC;

REVOKE ALL ON FUNCTION werkfluss.run_status(run_id text, OUT status text, OUT result jsonb, OUT error jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION werkfluss.run_status(run_id text, OUT status text, OUT result jsonb, OUT error jsonb) TO werkfluss_client;

REVOKE ALL ON FUNCTION werkfluss.send(token text, payload jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION werkfluss.send(token text, payload jsonb) TO werkfluss_client;

REVOKE ALL ON FUNCTION werkfluss.start_run(name text, args jsonb, run_id text, kwargs jsonb, timeout interval, queue text, concurrency_key text, priority integer, start_at timestamp with time zone, delay interval, debounce interval, debounce_key text) FROM PUBLIC;
GRANT ALL ON FUNCTION werkfluss.start_run(name text, args jsonb, run_id text, kwargs jsonb, timeout interval, queue text, concurrency_key text, priority integer, start_at timestamp with time zone, delay interval, debounce interval, debounce_key text) TO werkfluss_client;

REVOKE ALL ON FUNCTION werkfluss.trigger_schedule(name text) FROM PUBLIC;
