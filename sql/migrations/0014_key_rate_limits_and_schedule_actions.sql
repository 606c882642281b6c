-- werkfluss 0014: start rate limits per concurrency key, and the dashboard's
-- schedule actions.
--
-- Per-key start rate limits: Queue("exports", key_rate_limit="10/min") (or
-- declare_queue(..., key_rate_limit => 10, key_rate_period => '1 minute')):
-- at most that many runs of each concurrency key of the queue *start* per
-- period (a resume after a sleep is not a start). Each key has its own token
-- bucket in werkfluss.rate_limits, named 'queue:<queue>[<key>]' (queue names
-- and step rate-limit names may not contain '[' or ']', so no bucket of
-- another kind has such a name). The claim takes the token when it meets a
-- start of the key. When there is none it puts the key's waiting starts
-- aside, out of the line like a delayed start (ready = false, available_at =
-- when its token comes, throttled_until = the same time), reserving a token
-- for each from the bucket (it goes below zero) in line order: each comes
-- back when its token does, and is claimed without taking another. So a
-- claim meets a key without a token once, not once per waiting run, and the
-- claims of other keys do not slow down however many runs wait.
--
-- Dashboard: the audit trail also records pause, resume, trigger and delete
-- of schedules (the schedule's name in detail->>'schedule').

-- --- tables --------------------------------------------------------------------------

ALTER TABLE werkfluss.queues
    ADD COLUMN key_rate_limit  integer CHECK (key_rate_limit BETWEEN 1 AND 1000000000),
    ADD COLUMN key_rate_period double precision
               CHECK (key_rate_period > 0 AND key_rate_period <= 2678400),
    ADD CONSTRAINT queues_key_rate_check CHECK ((key_rate_limit IS NULL) = (key_rate_period IS NULL));

-- A start put aside for its key's token: when the token comes (= available_at
-- while it waits for it; a run whose available_at still equals it when it is
-- met again holds a token reserved for it). Stale values are harmless: they
-- match available_at no more once the run is claimed or rescheduled.
ALTER TABLE werkfluss.queue ADD COLUMN throttled_until timestamptz;

ALTER TABLE werkfluss.audit DROP CONSTRAINT audit_action_check;
ALTER TABLE werkfluss.audit ADD CONSTRAINT audit_action_check
    CHECK (action IN ('cancel', 'retry', 'send', 'pause', 'resume', 'trigger', 'delete'));

-- --- the claim -----------------------------------------------------------------------

-- Whether this start of a key may be claimed now under its queue's per-key
-- start rate limit: true if a token of the key was taken (or one was reserved
-- for the run when it was put aside); false if another claim is deciding
-- about the key, or if there is no token: then the key's waiting starts (this
-- one among them) are put aside, each until its token comes, with that token
-- reserved. At most 1000 at a time; a claim meets the rest after them.
CREATE FUNCTION werkfluss._take_key_start_token(queue_name text, key text, run_id text,
                                                capacity integer, period double precision)
RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- The claim's loop over the queues (0013's werkfluss._lease_queued), with one
-- addition in the loop over a queue's runs: a start of a key asks
-- _take_key_start_token.
CREATE OR REPLACE FUNCTION werkfluss._lease_queued(workflows text[], lim integer, worker text,
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


-- --- declaring queues ----------------------------------------------------------------

-- declare_queue takes the per-key start rate limit (the old signature goes:
-- named calls of it keep working, the new arguments come last).
DROP FUNCTION werkfluss.declare_queue(text, integer, integer, integer, integer, interval, interval);

-- Create a queue or change its limits (NULL: no limit). Returns 'created',
-- 'changed' or 'unchanged'. Raising or removing the per-key limit lets the
-- parked runs of the queue into the line again (claims park them again if
-- their key is still full); changing or removing the per-key start rate
-- limit lets in the starts put aside for their key's token (with fresh
-- buckets: the reservations are dropped).
--   SELECT werkfluss.declare_queue('exports', concurrency => 20, per_key => 5,
--                                  key_rate_limit => 10, key_rate_period => '1 minute');
CREATE FUNCTION werkfluss.declare_queue(
    name               text,
    concurrency        integer  DEFAULT NULL,
    per_key            integer  DEFAULT NULL,
    worker_concurrency integer  DEFAULT NULL,
    rate_limit         integer  DEFAULT NULL,
    rate_period        interval DEFAULT NULL,
    priority_aging     interval DEFAULT interval '1 minute',
    key_rate_limit     integer  DEFAULT NULL,
    key_rate_period    interval DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
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

-- --- why a pending run has not started -----------------------------------------------

-- As in 0008, and: a start put aside for its key's token says until when
-- ({"kind": "rate", "name": "queue exports key customer-42", "queue": ...,
-- "key": ..., "until": ...}); so does a start of a key whose bucket is empty
-- that no claim has met yet.
CREATE OR REPLACE VIEW werkfluss.pending_reasons AS
SELECT q.run_id,
       CASE
           WHEN q.throttled_until = q.available_at AND q.available_at > now() THEN
               jsonb_build_object('kind', 'rate', 'name', 'queue ' || q.queue_name || ' key ' || q.concurrency_key,
                                  'queue', q.queue_name, 'key', q.concurrency_key, 'until', q.available_at)
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
           WHEN k.key_rate_limit IS NOT NULL AND q.concurrency_key IS NOT NULL AND q.claims = 0
                AND q.throttled_until IS DISTINCT FROM q.available_at AND kt.tokens < 1 THEN
               jsonb_build_object('kind', 'rate', 'name', 'queue ' || k.name || ' key ' || q.concurrency_key,
                                  'queue', k.name, 'key', q.concurrency_key,
                                  'until', now() + make_interval(secs => (1 - kt.tokens) * kb.period / kb.capacity))
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
  LEFT JOIN werkfluss.rate_limits kb
         ON kb.name = 'queue:' || q.queue_name || '[' || q.concurrency_key || ']'
  LEFT JOIN LATERAL (
      SELECT least(kb.capacity, kb.tokens + greatest(0, extract(epoch FROM now() - kb.refreshed_at))
                                            * kb.capacity / kb.period) AS tokens
  ) kt ON kb.name IS NOT NULL
 WHERE q.lease_id IS NULL;

-- --- privileges ----------------------------------------------------------------------

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA werkfluss FROM PUBLIC;

-- Roles that run workers (they may add to the queue) get the new functions,
-- so that existing workers keep running after this migration (the audit
-- trail's grants of 0010 stay as they are).
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
        EXECUTE format('GRANT EXECUTE ON FUNCTION'
                       ' werkfluss.declare_queue(text, integer, integer, integer, integer, interval, interval,'
                       ' integer, interval),'
                       ' werkfluss._take_key_start_token(text, text, text, integer, double precision) TO %I',
                       grantee);
    END LOOP;
END
$$;
