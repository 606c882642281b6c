-- werkfluss 0013: a claim in one round trip, and a short path for runs in no
-- queue.
--
-- werkfluss._claim_runs is what a worker's claim is now: it leases runs like
-- werkfluss._claim did and returns, on every row, how many seconds remain
-- until the next run of these workflows becomes claimable (next_due; the
-- worker used to ask for that in a second round trip). When it leases nothing
-- it returns one row whose run is NULL, carrying only next_due.
--
-- Workers whose workflows have no queue (nothing in workflow_queues names
-- them) lease in one statement: no lookup of queues, no locks, no per-run
-- loop. Runs of queues go through werkfluss._lease_queued, the per-queue loop
-- of 0008 unchanged.
--
-- What may unblock a run (its wake-up count, hook payloads not yet received,
-- children ended and not delivered) is read in the statement that returns the
-- rows, after the leases, in one snapshot as before; for a run that never ran
-- before this claim (started_at is this transaction's) and has no log it
-- cannot hold anything (hooks and children are made by the run) and is not
-- looked up. (A log alone would not tell: a parent waiting for its first
-- child has none yet, and a retried run may have lost its log.)
--
-- werkfluss._claim keeps its signature and rows for anyone who calls it (the
-- workers of 0.2 before this migration, tests, operators' scripts).

-- --- the queued streams (0008's per-queue loop, without the final read) --------------

CREATE FUNCTION werkfluss._lease_queued(workflows text[], lim integer, worker text,
                                        OUT ids text[], OUT prev_ids uuid[], OUT prev_wks text[],
                                        OUT dues timestamptz[])
LANGUAGE plpgsql AS $$
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

-- --- seconds until the next run of these workflows is claimable ----------------------

-- A sleep ending, a delayed start, a lease running out, the next token of a
-- queue's start rate limit; NULL if none is scheduled, 0 or less if one is
-- due and not in line yet. Counted from the moment it is computed
-- (clock_timestamp(), not the claim's transaction start): the worker waits
-- that long from when it receives the answer. (plpgsql, not sql: a session plans its query
-- once, where an sql function called from the claim was planned anew on
-- every claim.)
CREATE FUNCTION werkfluss._next_due(workflows text[]) RETURNS double precision
LANGUAGE plpgsql STABLE AS $$
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

-- What may unblock a run a worker holds (the run_inputs query), now plpgsql
-- for the same reason: its three reads are planned once per session.
CREATE OR REPLACE FUNCTION werkfluss._run_inputs(
    run_id text, OUT wakeups integer, OUT inbox jsonb, OUT children jsonb
)
LANGUAGE plpgsql STABLE AS $$
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

-- --- the claim -----------------------------------------------------------------------

CREATE FUNCTION werkfluss._claim_runs(workflows text[], lim integer, worker text)
RETURNS TABLE (run werkfluss.runs, lease_id uuid, claims integer, previous_lease_id uuid,
               previous_worker_id text, waited_s double precision, wakeups integer, inbox jsonb,
               children jsonb, db_now timestamptz, has_log boolean, next_due double precision)
LANGUAGE plpgsql AS $$
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
-- Read indexes in order and by key (see 0011), with plans made once per
-- session: the statements of a claim are planned the same whatever their
-- parameters (index scans in order, by key), and planning them anew on each
-- call (a custom plan for each of the first calls and whenever the planner
-- hesitates) cost more than running them: 1.3 ms against 0.8 ms for a claim
-- of one run. The settings hold for the functions the claim calls.
ALTER FUNCTION werkfluss._claim_runs(text[], integer, text) SET enable_bitmapscan = off;
ALTER FUNCTION werkfluss._claim_runs(text[], integer, text) SET enable_seqscan = off;
ALTER FUNCTION werkfluss._claim_runs(text[], integer, text) SET plan_cache_mode = force_generic_plan;

-- The claim of 0008, same rows, for callers written against it.
CREATE OR REPLACE FUNCTION werkfluss._claim(workflows text[], lim integer, worker text)
RETURNS TABLE (run werkfluss.runs, lease_id uuid, claims integer, previous_lease_id uuid,
               previous_worker_id text, waited_s double precision, wakeups integer, inbox jsonb,
               children jsonb, db_now timestamptz, has_log boolean)
LANGUAGE sql AS $$
    SELECT c.run, c.lease_id, c.claims, c.previous_lease_id, c.previous_worker_id, c.waited_s,
           c.wakeups, c.inbox, c.children, c.db_now, c.has_log
      FROM werkfluss._claim_runs(workflows, lim, worker) c
     WHERE c.lease_id IS NOT NULL
$$;

-- --- privileges ----------------------------------------------------------------------

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA werkfluss FROM PUBLIC;

-- Roles that run workers (they may add to the queue) get the new functions.
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
        EXECUTE format('GRANT EXECUTE ON FUNCTION werkfluss._claim_runs(text[], integer, text),'
                       ' werkfluss._lease_queued(text[], integer, text),'
                       ' werkfluss._next_due(text[]) TO %I', grantee);
    END LOOP;
END
$$;
