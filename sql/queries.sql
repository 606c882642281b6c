-- Every query werkfluss sends, each under a "-- name: <name>" header with a
-- one-line comment. Python refers to them by name (werkfluss.queries).
-- Lock order everywhere: hook tokens' and concurrency keys' advisory locks, then a run's
-- queue row, then its runs row (see sql/migrations/0008_flow_control.sql).
-- Arrays are sent in binary (%(name)b): the driver's text format escapes every
-- element with regular expressions, ~40 times the cost, in every batch.

-- name: migrations_bootstrap
-- The schema and the table that records which migrations were applied.
CREATE SCHEMA IF NOT EXISTS werkfluss;
CREATE TABLE IF NOT EXISTS werkfluss.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock
-- Serialize concurrent migrators for the rest of the transaction.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: migrations_table_exists
-- Whether the migrations bookkeeping table is there yet.
SELECT to_regclass('werkfluss.migrations') IS NOT NULL AS exists;

-- name: migrations_applied
-- Versions already applied, if the bookkeeping table exists.
SELECT version, name FROM werkfluss.migrations ORDER BY version;

-- name: migrations_record
-- Remember that a migration was applied.
INSERT INTO werkfluss.migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: schema_state
-- Which migration versions exist in this database (empty if none).
SELECT coalesce(array_agg(version ORDER BY version), '{}') AS versions
  FROM werkfluss.migrations;

-- name: start_run
-- Start a run through the same SQL function other languages call. The
-- caller's trace context (a W3C traceparent, or NULL) is handed to the new
-- run through the transaction-local setting werkfluss.traceparent, which a
-- trigger on werkfluss.runs reads (migration 0012).
WITH trace AS MATERIALIZED (
    SELECT set_config('werkfluss.traceparent', coalesce(%(traceparent)s::text, ''), true)
)
SELECT werkfluss.start_run(
    %(name)s, %(args)s::jsonb, %(run_id)s, %(kwargs)s::jsonb,
    %(timeout_seconds)s * interval '1 second',
    queue => %(queue)s::text, concurrency_key => %(concurrency_key)s::text,
    priority => %(priority)s::integer, start_at => %(start_at)s::timestamptz,
    delay => %(delay_seconds)s * interval '1 second',
    debounce => %(debounce_seconds)s * interval '1 second', debounce_key => %(debounce_key)s::text
) AS run_id
  FROM trace;

-- name: cancel_run
-- Cancel a run (true), or report that it had already finished (false).
SELECT werkfluss.cancel_run(%(run_id)s) AS cancelled;

-- name: get_run
-- One run, as users see it (why a pending run has not started: run_blocked).
SELECT id AS run_id, workflow, status, args, kwargs, result, error, parent_id,
       wake_at, waiting_on, deadline, created_at, started_at, finished_at, updated_at,
       queue_name, concurrency_key, priority
  FROM werkfluss.runs
 WHERE id = %(run_id)s;

-- name: run_blocked
-- Why a pending run has not started yet (NULL: it is next in line).
SELECT v.blocked FROM werkfluss.pending_reasons v WHERE v.run_id = %(run_id)s;

-- name: run_outcome
-- What a caller waiting for a run's result needs: its status and outcome.
SELECT status, result, error FROM werkfluss.runs WHERE id = %(run_id)s;

-- name: list_runs
-- The most recent runs, optionally filtered by status and workflow.
SELECT id AS run_id, workflow, status, args, kwargs, result, error, parent_id,
       wake_at, waiting_on, deadline, created_at, started_at, finished_at, updated_at,
       queue_name, concurrency_key, priority, p.blocked
  FROM (SELECT * FROM werkfluss.runs
         WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
           AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s::text)
         ORDER BY created_at DESC, id DESC
         LIMIT %(limit)s) r
  LEFT JOIN LATERAL (SELECT v.blocked FROM werkfluss.pending_reasons v
                      WHERE v.run_id = r.id AND r.status = 'pending') p ON true
 ORDER BY r.created_at DESC, r.id DESC;

-- name: list_events
-- A run's log in seq order.
SELECT seq, kind, name, status, input, output, error, attempts, started_at, finished_at
  FROM werkfluss.events
 WHERE run_id = %(run_id)s
 ORDER BY seq;

-- name: list_steps
-- A run's step records in seq order (no sleeps, hooks, races or child starts).
SELECT seq, kind, name, status, input, output, error, attempts, started_at, finished_at
  FROM werkfluss.events
 WHERE run_id = %(run_id)s AND kind = 'step'
 ORDER BY seq;

-- name: dashboard_list_runs
-- The most recent runs matching the dashboard's filters (no arguments or results: a list stays light).
SELECT id AS run_id, workflow, status, parent_id, wake_at, waiting_on, deadline,
       created_at, started_at, finished_at, updated_at,
       error->>'type' AS error_type, left(error->>'message', 300) AS error_message
  FROM werkfluss.runs
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s::text)
   AND (%(id_prefix)s::text IS NULL OR starts_with(id, %(id_prefix)s::text))
   AND (%(since_seconds)s::float8 IS NULL
        OR created_at >= now() - %(since_seconds)s::float8 * interval '1 second')
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s;

-- name: dashboard_count_runs
-- Runs by status among the newest that match the filters (status aside), at most cap of them: bounded work per poll.
SELECT status, count(*) AS runs
  FROM (SELECT status
          FROM werkfluss.runs
         WHERE (%(workflow)s::text IS NULL OR workflow = %(workflow)s::text)
           AND (%(id_prefix)s::text IS NULL OR starts_with(id, %(id_prefix)s::text))
           AND (%(since_seconds)s::float8 IS NULL
                OR created_at >= now() - %(since_seconds)s::float8 * interval '1 second')
         ORDER BY created_at DESC
         LIMIT %(cap)s) AS newest
 GROUP BY status;

-- name: dashboard_run_children
-- A run's child runs, oldest first.
SELECT id AS run_id, workflow, status, created_at, started_at, finished_at,
       error->>'type' AS error_type, left(error->>'message', 300) AS error_message
  FROM werkfluss.runs
 WHERE parent_id = %(run_id)s
 ORDER BY created_at, id
 LIMIT %(limit)s;

-- name: dashboard_run_hooks
-- A run's hooks, with how many payloads each received and how many wait to be read.
SELECT h.token, h.seq, h.multi, h.created_at,
       count(p.id) AS received,
       count(p.id) FILTER (WHERE p.consumed_seq IS NULL) AS unread
  FROM werkfluss.hooks h
  LEFT JOIN werkfluss.hook_payloads p ON p.token = h.token
 WHERE h.run_id = %(run_id)s
 GROUP BY h.token, h.seq, h.multi, h.created_at
 ORDER BY h.seq;

-- name: dashboard_run_holder
-- A live run's queue row: the worker holding it and until when its heartbeat vouches for it.
SELECT q.worker_id, q.lease_id IS NOT NULL AS held, q.claims,
       CASE WHEN q.available_at = 'infinity' THEN NULL ELSE q.available_at END AS due_at,
       w.host, w.pid, w.state AS worker_state, w.heartbeat_at,
       w.heartbeat_at + make_interval(secs => w.lease_seconds) AS lease_expires_at
  FROM werkfluss.queue q
  LEFT JOIN werkfluss.workers w ON w.id = q.worker_id AND q.lease_id IS NOT NULL
 WHERE q.run_id = %(run_id)s;

-- name: dashboard_run_version
-- What changes when anything on a run's page would: its row, its log, its children, payloads, actions.
SELECT r.status, r.updated_at,
       (SELECT count(*) FROM werkfluss.events e WHERE e.run_id = r.id) AS records,
       (SELECT max(c.updated_at) FROM werkfluss.runs c WHERE c.parent_id = r.id) AS children_at,
       (SELECT count(*) FROM werkfluss.hooks h JOIN werkfluss.hook_payloads p ON p.token = h.token
         WHERE h.run_id = r.id) AS payloads,
       (SELECT count(*) FROM werkfluss.audit a WHERE a.run_id = r.id) AS actions
  FROM werkfluss.runs r
 WHERE r.id = %(run_id)s;

-- name: dashboard_send
-- Send through the public function (werkfluss_client may); the hook as it was before says what happened.
SELECT werkfluss.send(%(token)s, %(payload)s::jsonb) AS accepted,
       h.run_id AS hook_run, r.status AS run_status
  FROM (SELECT 1) AS one
  LEFT JOIN werkfluss.hooks h ON h.token = %(token)s
  LEFT JOIN werkfluss.runs r ON r.id = h.run_id;

-- name: audit_record
-- Record an action taken through the dashboard.
INSERT INTO werkfluss.audit (action, run_id, detail, client)
VALUES (%(action)s, %(run_id)s, %(detail)s::jsonb, %(client)s)
RETURNING id, at;

-- name: audit_list
-- The newest audit records, of one run or of all.
SELECT id, at, action, run_id, detail, client
  FROM werkfluss.audit
 WHERE %(run_id)s::text IS NULL OR run_id = %(run_id)s::text
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s;

-- name: dashboard_privileges
-- What the connected role may read and do, checked when the dashboard starts.
SELECT current_user AS role,
       has_table_privilege('werkfluss.runs', 'SELECT') AS select_runs,
       has_table_privilege('werkfluss.events', 'SELECT') AS select_events,
       has_table_privilege('werkfluss.queue', 'SELECT') AS select_queue,
       has_table_privilege('werkfluss.hooks', 'SELECT') AS select_hooks,
       has_table_privilege('werkfluss.hook_payloads', 'SELECT') AS select_hook_payloads,
       has_table_privilege('werkfluss.workers', 'SELECT') AS select_workers,
       has_table_privilege('werkfluss.pending_reasons', 'SELECT') AS select_pending_reasons,
       has_table_privilege('werkfluss.audit', 'SELECT') AS select_audit,
       has_table_privilege('werkfluss.queues', 'SELECT') AS select_queues,
       has_table_privilege('werkfluss.rate_limits', 'SELECT') AS select_rate_limits,
       has_table_privilege('werkfluss.schedules', 'SELECT') AS select_schedules,
       has_table_privilege('werkfluss.audit', 'INSERT') AS insert_audit,
       has_function_privilege('werkfluss.cancel_run(text)', 'EXECUTE') AS execute_cancel_run,
       has_function_privilege('werkfluss.retry_run(text)', 'EXECUTE') AS execute_retry_run,
       has_function_privilege('werkfluss.send(text, jsonb)', 'EXECUTE') AS execute_send,
       has_function_privilege('werkfluss.pause_schedule(text)', 'EXECUTE') AS execute_pause_schedule,
       has_function_privilege('werkfluss.resume_schedule(text)', 'EXECUTE') AS execute_resume_schedule,
       has_function_privilege('werkfluss.trigger_schedule(text)', 'EXECUTE') AS execute_trigger_schedule,
       has_function_privilege('werkfluss.delete_schedule(text)', 'EXECUTE') AS execute_delete_schedule;

-- name: claim_runs
-- Lease up to %(limit)s due runs of the given workflows to this worker, within
-- the limits of their queues, and mark them running: one statement, one
-- round trip (werkfluss._claim_runs). A held run's available_at is 'infinity'
-- (the worker's heartbeat keeps it; no renewals); claims counts every claim,
-- so a worker that kept the run in its cache knows whether anyone else ran it
-- since. Returns what may unblock each run, how long it was due before this
-- claim (the claim latency), the server's clock (the worker's one clock) and,
-- when fewer than %(limit)s were leased, the seconds until the next run is due
-- (next_due); leasing none, one row with run_id NULL that carries them.
SELECT (c.run).id AS run_id, (c.run).workflow, (c.run).args, (c.run).kwargs, (c.run).deadline,
       (c.run).parent_id, (c.run).started_at, (c.run).traceparent, (c.run).concurrency_key,
       c.lease_id, c.claims, c.previous_lease_id, c.previous_worker_id, c.waited_s,
       c.wakeups, c.inbox, c.children, c.db_now, c.has_log, c.next_due
  FROM werkfluss._claim_runs(%(workflows)b::text[], %(limit)s, %(worker_id)s) AS c;

-- name: read_logs
-- The logs of runs a worker claimed and has not in its cache.
SELECT run_id, seq, kind, name, status, input, output, error, attempts, started_at, finished_at
  FROM werkfluss.events
 WHERE run_id = ANY(%(run_ids)b::text[])
 ORDER BY run_id, seq;

-- name: run_inputs
-- What may have unblocked a run this worker holds: its undelivered hook
-- payloads, its ended and undelivered children, and the wake-up count.
SELECT wakeups, inbox, children FROM werkfluss._run_inputs(%(run_id)s);

-- name: append_events
-- Record log entries, fenced by the lease: an entry whose run this lease no
-- longer holds is dropped (FOR SHARE waits out a concurrent takeover, then
-- sees the new lease). An entry that holds a hook payload marks it consumed,
-- one that holds a child's outcome marks that child delivered, in the same
-- statement. Returns the entries that are in the log under this lease —
-- also those a retried batch had already written.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[], %(seqs)b::integer[],
                  %(kinds)b::text[], %(names)b::text[], %(statuses)b::text[],
                  %(inputs)b::jsonb[], %(outputs)b::json[], %(errors)b::jsonb[],
                  %(attempts)b::integer[], %(started_ats)b::timestamptz[],
                  %(finished_ats)b::timestamptz[], %(consumes)b::bigint[], %(children)b::text[])
           AS b(run_id, lease_id, seq, kind, name, status, input, output, error,
                attempts, started_at, finished_at, consumes, child_id)
), fenced AS (
    SELECT b.* FROM batch b
     WHERE EXISTS (SELECT 1 FROM werkfluss.queue q
                    WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
                      FOR SHARE)
), inserted AS (
    INSERT INTO werkfluss.events
           (run_id, seq, kind, name, status, input, output, error, attempts, started_at, finished_at)
    SELECT f.run_id, f.seq, f.kind, f.name, f.status, f.input, f.output, f.error,
           f.attempts, f.started_at, f.finished_at
      FROM fenced f
        ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING run_id, seq
), consumed AS (
    UPDATE werkfluss.hook_payloads p
       SET consumed_run = f.run_id, consumed_seq = f.seq
      FROM fenced f
      JOIN inserted i ON i.run_id = f.run_id AND i.seq = f.seq
     WHERE f.consumes IS NOT NULL AND p.id = f.consumes
    RETURNING p.id
), delivered AS (
    UPDATE werkfluss.runs c
       SET delivered = true
      FROM fenced f
      JOIN inserted i ON i.run_id = f.run_id AND i.seq = f.seq
     WHERE f.child_id IS NOT NULL AND c.id = f.child_id
    RETURNING c.id
)
SELECT run_id, seq FROM inserted
UNION ALL
-- Entries not inserted now that a retried batch wrote before: looked up one
-- by one, and only those (a join here may be planned as a pass over the whole
-- log while its statistics are not yet gathered, in every batch).
SELECT f.run_id, f.seq
  FROM fenced f
  LEFT JOIN inserted i ON i.run_id = f.run_id AND i.seq = f.seq
 CROSS JOIN LATERAL (SELECT 1 FROM werkfluss.events e
                      WHERE i.run_id IS NULL AND e.run_id = f.run_id AND e.seq = f.seq
                      LIMIT 1) already;

-- name: lock_flow_keys
-- A batch that releases runs takes the locks of their concurrency keys
-- first, in order (after hook tokens, before any row).
SELECT werkfluss._lock_flow_keys(%(run_ids)b::text[]) AS locked;

-- name: lock_hook_tokens
-- Hook creation takes each token's advisory lock first, as send() does.
SELECT pg_advisory_xact_lock(hashtextextended('werkfluss.hook:' || t, 0))
  FROM (SELECT DISTINCT t FROM unnest(%(tokens)b::text[]) AS t ORDER BY t) AS tokens;

-- name: create_hooks
-- Create hooks (fenced) and their log records in one statement. A token that
-- another hook already owns gives a failed record (HookConflict); a created
-- hook comes back with the payloads sent to its token before it existed.
-- Safe to run again: a hook this very call created before is reported created.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[], %(seqs)b::integer[],
                  %(tokens)b::text[], %(multis)b::boolean[], %(ats)b::timestamptz[])
           AS b(run_id, lease_id, seq, token, multi, at)
), fenced AS (
    SELECT b.* FROM batch b
     WHERE EXISTS (SELECT 1 FROM werkfluss.queue q
                    WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
                      FOR SHARE)
), created AS (
    INSERT INTO werkfluss.hooks (token, run_id, seq, multi)
    SELECT token, run_id, seq, multi FROM fenced
        ON CONFLICT (token) DO NOTHING
    RETURNING token, run_id, seq
), owners AS (
    SELECT f.run_id, f.seq, f.token, f.multi, f.at,
           coalesce(c.run_id, h.run_id) AS owner_run, coalesce(c.seq, h.seq) AS owner_seq
      FROM fenced f
      LEFT JOIN created c ON c.token = f.token
      LEFT JOIN werkfluss.hooks h ON h.token = f.token
), recorded AS (
    INSERT INTO werkfluss.events (run_id, seq, kind, name, status, output, error, started_at, finished_at)
    SELECT o.run_id, o.seq, 'hook', o.token,
           CASE WHEN o.owner_run = o.run_id AND o.owner_seq = o.seq THEN 'completed' ELSE 'failed' END,
           CASE WHEN o.owner_run = o.run_id AND o.owner_seq = o.seq
                THEN json_build_object('token', o.token, 'multi', o.multi) END,
           CASE WHEN NOT (o.owner_run = o.run_id AND o.owner_seq = o.seq) THEN jsonb_build_object(
                    'type', 'werkfluss.errors.HookConflict',
                    'class', 'werkfluss.errors:HookConflict',
                    'message', format('hook token %%s is already used by run %%s; choose a token unique to this run',
                                      o.token, o.owner_run),
                    'args', jsonb_build_array(o.token, o.owner_run))
           END,
           o.at, o.at
      FROM owners o
        ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING run_id, seq
)
SELECT o.run_id, o.seq, o.token,
       (o.owner_run = o.run_id AND o.owner_seq = o.seq) AS created,
       o.owner_run,
       (SELECT count(*) FROM recorded) AS recorded,
       (SELECT coalesce(json_agg(json_build_object(
                   'id', p.id, 'token', p.token, 'payload', p.payload,
                   'received_at', p.received_at) ORDER BY p.id), '[]'::json)
          FROM werkfluss.hook_payloads p
         WHERE o.owner_run = o.run_id AND o.owner_seq = o.seq
           AND p.token = o.token AND p.consumed_seq IS NULL) AS early
  FROM owners o;

-- name: mark_hooks_multi
-- A hook the workflow iterates receives many payloads (fenced by the lease).
UPDATE werkfluss.hooks h
   SET multi = true
  FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[], %(tokens)b::text[]) AS b(run_id, lease_id, token)
 WHERE h.token = b.token AND h.run_id = b.run_id AND NOT h.multi
   AND EXISTS (SELECT 1 FROM werkfluss.queue q
                WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id FOR SHARE);

-- name: start_children
-- Start child runs, fenced by the parent's lease. Idempotent by the child's
-- id: starting a child that exists with this parent is a success; an id
-- taken by any other run is reported (started = false).
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[], %(seqs)b::integer[],
                  %(child_ids)b::text[], %(workflows)b::text[], %(args)b::jsonb[],
                  %(kwargs)b::jsonb[], %(traceparents)b::text[])
           AS b(run_id, lease_id, seq, child_id, workflow, args, kwargs, traceparent)
), fenced AS (
    SELECT b.* FROM batch b
     WHERE EXISTS (SELECT 1 FROM werkfluss.queue q
                    WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
                      FOR SHARE)
), children AS (
    -- A child run goes to the default queue of its workflow.
    INSERT INTO werkfluss.runs (id, workflow, args, kwargs, parent_id, traceparent, queue_name)
    SELECT f.child_id, f.workflow, f.args, f.kwargs, f.run_id, f.traceparent,
           (SELECT wq.queue_name FROM werkfluss.workflow_queues wq
             WHERE wq.workflow = f.workflow AND wq.is_default)
      FROM fenced f
        ON CONFLICT (id) DO NOTHING
    RETURNING id, workflow, queue_name
), queued AS (
    INSERT INTO werkfluss.queue (run_id, workflow, queue_name)
    SELECT id, workflow, queue_name FROM children
        ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
), notified AS (
    SELECT pg_notify('werkfluss_queue', '') AS n WHERE EXISTS (SELECT 1 FROM queued)
)
SELECT f.run_id, f.seq, f.child_id,
       (EXISTS (SELECT 1 FROM children c WHERE c.id = f.child_id)
        OR EXISTS (SELECT 1 FROM werkfluss.runs r
                    WHERE r.id = f.child_id AND r.parent_id = f.run_id)) AS started,
       (SELECT count(*) FROM notified) AS notified
  FROM fenced f;

-- name: suspend_runs
-- Take runs off their workers while they sleep or wait: the lease is
-- released and the run becomes claimable at its wake-up time ('infinity' if
-- only an event can wake it) — unless an event arrived since the worker last
-- looked (the wake-up count moved): then nothing changes and the worker,
-- still holding the run, reads what arrived.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[], %(statuses)b::text[],
                  %(wake_ats)b::timestamptz[], %(due_ats)b::timestamptz[],
                  %(waiting_ons)b::text[], %(wakeups)b::integer[])
           AS b(run_id, lease_id, status, wake_at, due_at, waiting_on, wakeups)
), held AS (
    SELECT b.run_id, q.wakeups = b.wakeups AS quiet
      FROM batch b
      JOIN werkfluss.queue q ON q.run_id = b.run_id AND q.lease_id = b.lease_id
       FOR UPDATE OF q
), released AS (
    UPDATE werkfluss.queue q
       SET lease_id = NULL, worker_id = NULL,
           available_at = coalesce(b.due_at, 'infinity'),
           ready = coalesce(b.due_at, 'infinity') <= now()
      FROM batch b
      JOIN held h ON h.run_id = b.run_id AND h.quiet
     WHERE q.run_id = b.run_id
 RETURNING q.run_id, q.available_at <= now() AS ready
), marked AS (
    UPDATE werkfluss.runs r
       SET status = b.status, wake_at = b.wake_at, waiting_on = b.waiting_on, updated_at = now()
      FROM batch b
      JOIN released x ON x.run_id = b.run_id
     WHERE r.id = b.run_id
 RETURNING r.id
), notified AS (
    SELECT pg_notify('werkfluss_queue', '') AS n WHERE EXISTS (SELECT 1 FROM released WHERE ready)
)
SELECT h.run_id, h.quiet AS suspended, (SELECT count(*) FROM notified) AS notified
  FROM held h;

-- name: cancel_children
-- Cancel the unfinished child runs of a run that has ended.
SELECT werkfluss._cancel_tree(array(
           SELECT c.id FROM werkfluss.runs c
            WHERE c.parent_id = %(run_id)s
              AND c.status NOT IN ('completed', 'failed', 'cancelled'))) AS cancelled;

-- name: send
-- Deliver a hook payload; the outcome says why it was refused, if it was.
SELECT werkfluss._send(%(token)s, %(payload)s::jsonb) AS outcome;

-- name: finish_runs
-- Complete or fail runs held by these leases: they leave the queue, their
-- outcome is stored, parents waiting on them are woken, and one NOTIFY (ids,
-- or '*' if too long) wakes those awaiting results.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[], %(statuses)b::text[],
                  %(results)b::jsonb[], %(errors)b::jsonb[])
           AS b(run_id, lease_id, status, result, error)
), released AS (
    DELETE FROM werkfluss.queue q
     USING batch b
     WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
 RETURNING q.run_id
), finished AS (
    UPDATE werkfluss.runs r
       SET status = b.status, result = b.result, error = b.error,
           finished_at = now(), updated_at = now(), wake_at = NULL, waiting_on = NULL
      FROM batch b
      JOIN released x ON x.run_id = b.run_id
     WHERE r.id = b.run_id
 RETURNING r.id, r.parent_id
), woken AS (
    UPDATE werkfluss.queue q
       SET wakeups = q.wakeups + 1,
           available_at = CASE WHEN q.lease_id IS NULL THEN now() ELSE q.available_at END,
           ready = CASE WHEN q.lease_id IS NULL THEN true ELSE q.ready END
      FROM (SELECT DISTINCT parent_id FROM finished WHERE parent_id IS NOT NULL) p
     WHERE q.run_id = p.parent_id
 RETURNING q.run_id, q.lease_id IS NULL AS claimable, q.worker_id
), held_parents AS (
    -- A parent its worker holds hears of it directly.
    SELECT pg_notify('werkfluss_wake', w.run_id) AS n FROM woken w WHERE NOT w.claimable
), orphaned AS (
    -- Children that ended under earlier releases and were never recorded by
    -- their parent: done with once the parent has ended.
    UPDATE werkfluss.runs c SET delivered = true
      FROM finished f
     WHERE c.parent_id = f.id AND c.finished_at IS NOT NULL AND NOT c.delivered
    RETURNING c.id
)
SELECT coalesce(array_agg(f.id), '{}') AS run_ids,
       CASE WHEN count(*) > 0 THEN
           pg_notify('werkfluss_runs',
                     CASE WHEN sum(length(f.id) + 1) <= 7900
                               AND bool_and(strpos(f.id, ',') = 0)
                          THEN string_agg(f.id, ',') ELSE '*' END)
       END AS notified,
       (SELECT CASE WHEN bool_or(w.claimable) THEN pg_notify('werkfluss_queue', '') END
          FROM woken w) AS parents_notified,
       (SELECT count(*) FROM held_parents) AS held_parents_notified,
       (SELECT count(*) FROM orphaned) AS orphaned
  FROM finished f;

-- name: release_runs
-- Hand runs back at once (the worker is stopping): claimable now, status
-- pending, and one NOTIFY so another worker takes them without waiting.
WITH batch AS (
    SELECT * FROM unnest(%(run_ids)b::text[], %(lease_ids)b::uuid[]) AS b(run_id, lease_id)
), released AS (
    UPDATE werkfluss.queue q
       SET lease_id = NULL, worker_id = NULL, available_at = now(), ready = true
      FROM batch b
     WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
 RETURNING q.run_id
), reset AS (
    UPDATE werkfluss.runs r
       SET status = 'pending', updated_at = now()
      FROM released x
     WHERE r.id = x.run_id AND r.status = 'running'
 RETURNING r.id
)
SELECT coalesce(array_agg(x.run_id), '{}') AS run_ids,
       CASE WHEN count(*) > 0 THEN pg_notify('werkfluss_queue', '') END AS notified
  FROM released x;

-- name: worker_register
-- A worker starts: its row in the workers table (the id is new each start).
INSERT INTO werkfluss.workers (id, host, pid, version, workflows, concurrency, lease_seconds, app_name)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(workflows)b::text[], %(concurrency)s,
        %(lease_seconds)s, %(app_name)s)
ON CONFLICT (id) DO UPDATE
   SET state = 'running', heartbeat_at = now(), stopped_at = NULL
RETURNING clock_timestamp() AS db_now;

-- name: worker_heartbeat
-- A worker is alive: one small HOT update, whatever number of runs it holds.
-- Returns its state ('dead' if others gave its runs away while it was
-- silent), how many runs the queue says it holds, and the server's clock.
UPDATE werkfluss.workers
   SET heartbeat_at = CASE WHEN state = 'dead' THEN heartbeat_at ELSE now() END,
       runs_held = %(runs_held)s,
       state = CASE WHEN state = 'dead' THEN state ELSE %(state)s END
 WHERE id = %(id)s
RETURNING state,
          (SELECT count(*) FROM werkfluss.queue q
            WHERE q.worker_id = %(id)s AND q.lease_id IS NOT NULL) AS holding,
          clock_timestamp() AS db_now;

-- name: worker_held_runs
-- The runs the queue says this worker holds (to reconcile with its memory).
SELECT run_id, lease_id FROM werkfluss.queue
 WHERE worker_id = %(id)s AND lease_id IS NOT NULL;

-- name: reap_workers
-- Release the runs of workers whose heartbeat stopped; returns how many.
SELECT werkfluss._reap_workers() AS released;

-- name: worker_stopped
-- A worker stopped cleanly.
UPDATE werkfluss.workers SET state = 'stopped', stopped_at = now(), runs_held = 0
 WHERE id = %(id)s;

-- name: list_workers
-- Live and recently stopped workers, newest heartbeat first.
SELECT id, host, pid, version, workflows, concurrency, lease_seconds, started_at, heartbeat_at,
       runs_held, state, stopped_at,
       state IN ('running', 'stopping') AND heartbeat_at >= now() - make_interval(secs => lease_seconds)
           AS alive,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
  FROM werkfluss.workers
 WHERE state IN ('running', 'stopping') OR stopped_at > now() - %(recent_seconds)s * interval '1 second'
 ORDER BY heartbeat_at DESC
 LIMIT %(limit)s;

-- name: served_workflows
-- The workflows that running workers with a fresh heartbeat serve.
SELECT DISTINCT unnest(workflows) AS workflow
  FROM werkfluss.workers
 WHERE state = 'running' AND heartbeat_at >= now() - make_interval(secs => lease_seconds);

-- name: retry_run
-- Retry a failed or cancelled run (true), or report that it is neither (false).
SELECT werkfluss.retry_run(%(run_id)s) AS retried;

-- name: prune_runs
-- Delete one batch of finished runs older than the retention period; -1 if
-- another pruner holds the turn (wait => false).
SELECT werkfluss.prune_runs(%(older_than_seconds)s * interval '1 second', %(batch_size)s, %(wait)s) AS deleted;

-- name: count_prunable
-- How many runs prune_runs would delete now (prune --dry-run): the same
-- condition, a finished child kept while its unfinished parent has not received it.
SELECT count(*) AS runs
  FROM werkfluss.runs r
 WHERE r.finished_at IS NOT NULL AND r.finished_at < now() - %(older_than_seconds)s * interval '1 second'
   AND r.status IN ('completed', 'failed', 'cancelled')
   AND (r.parent_id IS NULL OR r.delivered OR NOT EXISTS (
            SELECT 1 FROM werkfluss.runs p WHERE p.id = r.parent_id AND p.finished_at IS NULL));

-- name: run_lease
-- Who holds a run (its queue row's lease), and until when that worker's
-- heartbeat vouches for it, by the server's clock. No row: nobody holds it.
SELECT q.worker_id, w.host, w.pid, w.state, w.heartbeat_at,
       w.heartbeat_at + make_interval(secs => w.lease_seconds) AS expires_at,
       extract(epoch FROM w.heartbeat_at + make_interval(secs => w.lease_seconds) - now())::float8
           AS seconds_left
  FROM werkfluss.queue q
  LEFT JOIN werkfluss.workers w ON w.id = q.worker_id
 WHERE q.run_id = %(run_id)s AND q.lease_id IS NOT NULL;

-- name: create_schedule
-- Create or redefine a schedule (engine.schedule); pause state is kept.
SELECT werkfluss.create_schedule(
    %(schedule_name)s, %(workflow)s, %(cron)s, %(timezone)s, %(args)s::jsonb, %(kwargs)s::jsonb,
    %(catchup)s, %(overlap)s, %(catchup_limit)s
) AS name;

-- name: declare_schedules
-- A worker starts: the schedules its workflows declare in code are created or
-- brought up to date (pause state kept), and schedules once declared in code
-- for the workflows it serves that the code declares no more are deleted.
WITH declared AS (
    SELECT *
      FROM unnest(%(names)b::text[], %(workflows)b::text[], %(crons)b::text[], %(timezones)b::text[],
                  %(catchups)b::text[], %(overlaps)b::text[], %(catchup_limits)b::integer[])
           AS d(name, workflow, cron, timezone, catchup, overlap, catchup_limit)
), upserted AS (
    SELECT d.name,
           werkfluss._upsert_schedule(d.name, d.workflow, d.cron, d.timezone, '[]', '{}', d.catchup,
                                      d.overlap, d.catchup_limit, 'code') AS changed
      FROM declared d
), removed AS (
    DELETE FROM werkfluss.schedules s
     WHERE s.origin = 'code' AND s.workflow = ANY(%(served)b::text[])
       AND s.name <> ALL(%(names)b::text[])
    RETURNING s.name
)
SELECT (SELECT coalesce(array_agg(u.name ORDER BY u.name) FILTER (WHERE u.changed), '{}')
          FROM upserted u) AS changed,
       (SELECT coalesce(array_agg(x.name ORDER BY x.name), '{}') FROM removed x) AS removed;

-- name: due_schedules
-- Schedules of these workflows whose next tick has come (or is not computed
-- yet), with the server's clock: the scheduler's one clock.
SELECT name, workflow, cron, timezone, catchup, catchup_limit, overlap, since, next_tick, revision,
       now() AS db_now
  FROM werkfluss.schedules
 WHERE workflow = ANY(%(workflows)b::text[]) AND NOT paused AND error IS NULL
   AND (next_tick IS NULL OR next_tick <= now())
 ORDER BY next_tick NULLS FIRST, name
 LIMIT %(limit)s;

-- name: next_schedule_tick
-- Seconds (by the server's clock) until the next tick of these workflows'
-- schedules; NULL if none is coming.
SELECT extract(epoch FROM min(next_tick) - now())::float8 AS seconds
  FROM werkfluss.schedules
 WHERE workflow = ANY(%(workflows)b::text[]) AND NOT paused AND error IS NULL;

-- name: fire_schedule
-- Start the runs of a schedule's ticks and move its next tick on, unless its
-- revision moved on meanwhile (then run_ids is NULL: another worker did it).
SELECT werkfluss._fire_schedule(%(schedule_name)s, %(revision)s, %(ticks)b::timestamptz[],
                                %(next_tick)s, %(skipped)s) AS run_ids;

-- name: break_schedule
-- Record why a schedule's ticks cannot be computed (it fires nothing until redefined).
SELECT werkfluss._break_schedule(%(schedule_name)s, %(revision)s, %(error)s) AS broken;

-- name: list_schedules
-- Every schedule (optionally of one workflow) with the status of its last run.
SELECT s.name, s.workflow, s.cron, s.timezone, s.args, s.kwargs, s.catchup, s.catchup_limit, s.overlap,
       s.origin, s.paused, s.since, s.next_tick, s.last_tick, s.last_run_id, s.skipped, s.error,
       s.created_at, s.updated_at, r.status AS last_run_status, now() AS db_now
  FROM werkfluss.schedules s
  LEFT JOIN werkfluss.runs r ON r.id = s.last_run_id
 WHERE (%(workflow)s::text IS NULL OR s.workflow = %(workflow)s::text)
 ORDER BY s.name;

-- name: get_schedule
-- One schedule with the status of its last run.
SELECT s.name, s.workflow, s.cron, s.timezone, s.args, s.kwargs, s.catchup, s.catchup_limit, s.overlap,
       s.origin, s.paused, s.since, s.next_tick, s.last_tick, s.last_run_id, s.skipped, s.error,
       s.created_at, s.updated_at, r.status AS last_run_status, now() AS db_now
  FROM werkfluss.schedules s
  LEFT JOIN werkfluss.runs r ON r.id = s.last_run_id
 WHERE s.name = %(schedule_name)s;

-- name: pause_schedule
-- Pause a schedule (true), or report that it was paused already (false).
SELECT werkfluss.pause_schedule(%(schedule_name)s) AS changed;

-- name: resume_schedule
-- Resume a paused schedule (true), or report that it was not paused (false).
SELECT werkfluss.resume_schedule(%(schedule_name)s) AS changed;

-- name: trigger_schedule
-- Start a run of a schedule now; returns its id.
SELECT werkfluss.trigger_schedule(%(schedule_name)s) AS run_id;

-- name: delete_schedule
-- Delete a schedule (its runs are kept).
SELECT werkfluss.delete_schedule(%(schedule_name)s) AS deleted;

-- name: queue_depth
-- Runs that are due and not claimed, by workflow, and how long the oldest of
-- them has been due (the metrics sampler runs it every few seconds).
SELECT workflow, count(*) AS due,
       extract(epoch FROM now() - min(available_at))::float8 AS oldest_due_s
  FROM werkfluss.queue
 WHERE available_at <= now()
 GROUP BY workflow;

-- name: backend_pid
-- The server process that runs this connection's queries: a pooler in between
-- shows as a pid other than the one the connection was told at start-up.
SELECT pg_backend_pid() AS pid;

-- name: declare_queue
-- Create a queue or change its limits: 'created', 'changed' or 'unchanged'.
SELECT werkfluss.declare_queue(
    %(name)s, %(concurrency)s::integer, %(per_key)s::integer, %(worker_concurrency)s::integer,
    %(rate_limit)s::integer, %(rate_period_seconds)s * interval '1 second',
    %(priority_aging_seconds)s * interval '1 second',
    key_rate_limit => %(key_rate_limit)s::integer,
    key_rate_period => %(key_rate_period_seconds)s * interval '1 second'
) AS outcome;

-- name: declare_workflow_queue
-- A workflow's default queue (NULL: none), as a worker serving it declares it.
SELECT werkfluss._declare_workflow_queue(%(workflow)s, %(queue)s::text) AS changed;

-- name: take_token
-- Take a token of a step's rate limit: 0, or the seconds until one is there.
SELECT werkfluss._take_token(%(name)s, %(capacity)s, %(period)s, %(run_id)s, %(waited)s) AS wait;

-- name: list_queues
-- Every queue with its limits, the runs holding a worker, and its depth.
SELECT k.name, k.concurrency, k.per_key, k.worker_concurrency, k.rate_limit, k.rate_period,
       k.priority_aging, k.key_rate_limit, k.key_rate_period, k.created_at, k.updated_at,
       (SELECT count(*) FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND y.lease_id IS NOT NULL) AS running,
       (SELECT count(*) FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND y.ready AND NOT y.parked AND y.lease_id IS NULL) AS ready,
       (SELECT count(*) FROM werkfluss.queue y WHERE y.queue_name = k.name AND y.parked) AS parked,
       (SELECT count(*) FROM werkfluss.queue y JOIN werkfluss.runs r ON r.id = y.run_id
         WHERE y.queue_name = k.name AND NOT y.ready AND y.lease_id IS NULL
           AND y.throttled_until IS DISTINCT FROM y.available_at
           AND r.status = 'pending') AS scheduled,
       (SELECT count(*) FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND NOT y.ready AND y.lease_id IS NULL
           AND y.throttled_until = y.available_at) AS throttled,
       (SELECT count(*) FROM werkfluss.queue y JOIN werkfluss.runs r ON r.id = y.run_id
         WHERE y.queue_name = k.name AND NOT y.ready AND y.lease_id IS NULL
           AND r.status IN ('sleeping', 'waiting')) AS suspended,
       (SELECT count(*) FROM (SELECT 1 FROM werkfluss.queue y
                               WHERE y.queue_name = k.name AND y.lease_id IS NOT NULL
                                 AND y.concurrency_key IS NOT NULL
                               GROUP BY y.concurrency_key
                              HAVING count(*) >= k.per_key) z) AS keys_at_limit,
       (SELECT count(DISTINCT y.concurrency_key) FROM werkfluss.queue y
         WHERE y.queue_name = k.name AND y.lease_id IS NOT NULL) AS keys_running,
       (SELECT least(b.capacity, b.tokens + greatest(0, extract(epoch FROM now() - b.refreshed_at))
                                            * b.capacity / b.period)
          FROM werkfluss.rate_limits b WHERE b.name = 'queue:' || k.name) AS tokens
  FROM werkfluss.queues k
 ORDER BY k.name;
