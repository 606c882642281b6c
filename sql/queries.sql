-- Every query werkfluss sends, each under a "-- name: <name>" header with a
-- one-line comment. Python refers to them by name (werkfluss.queries).
-- Lock order everywhere: a run's queue row before its runs row.

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
-- Start a run through the same SQL function other languages call.
SELECT werkfluss.start_run(
    %(name)s, %(args)s::jsonb, %(run_id)s, %(kwargs)s::jsonb,
    %(timeout_seconds)s * interval '1 second'
) AS run_id;

-- name: cancel_run
-- Cancel a run (true), or report that it had already finished (false).
SELECT werkfluss.cancel_run(%(run_id)s) AS cancelled;

-- name: get_run
-- One run, as users see it.
SELECT id AS run_id, workflow, status, args, kwargs, result, error, parent_id,
       wake_at, waiting_on, deadline, created_at, started_at, finished_at, updated_at
  FROM werkfluss.runs
 WHERE id = %(run_id)s;

-- name: list_runs
-- The most recent runs, optionally filtered by status and workflow.
SELECT id AS run_id, workflow, status, args, kwargs, result, error, parent_id,
       wake_at, waiting_on, deadline, created_at, started_at, finished_at, updated_at
  FROM werkfluss.runs
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s::text)
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s;

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

-- name: claim_runs
-- Lease up to %(limit)s due runs of the given workflows, mark them running,
-- and return each with its whole log: one statement, one round trip.
WITH picked AS (
    SELECT q.run_id, q.lease_id AS previous_lease_id, q.worker_id AS previous_worker_id
      FROM werkfluss.queue q
     WHERE q.available_at <= now()
       AND q.workflow = ANY(%(workflows)s::text[])
     ORDER BY q.available_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE werkfluss.queue q
       SET lease_id = gen_random_uuid(),
           worker_id = %(worker_id)s,
           available_at = now() + %(lease_seconds)s * interval '1 second',
           claims = q.claims + 1
      FROM picked p
     WHERE q.run_id = p.run_id
 RETURNING q.run_id, q.lease_id, q.claims, p.previous_lease_id, p.previous_worker_id
), started AS (
    UPDATE werkfluss.runs r
       SET status = 'running', started_at = coalesce(r.started_at, now()),
           updated_at = now(), wake_at = NULL, waiting_on = NULL
      FROM leased l
     WHERE r.id = l.run_id
 RETURNING r.id, r.workflow, r.args, r.kwargs, r.deadline, r.parent_id
)
SELECT s.id AS run_id, s.workflow, s.args, s.kwargs, s.deadline, s.parent_id,
       l.lease_id, l.claims, l.previous_lease_id, l.previous_worker_id,
       -- json, not jsonb: recorded results keep their key order.
       (SELECT coalesce(json_agg(json_build_object(
                   'seq', e.seq, 'kind', e.kind, 'name', e.name, 'status', e.status,
                   'output', e.output, 'error', e.error,
                   'finished_at', e.finished_at) ORDER BY e.seq), '[]'::json)
          FROM werkfluss.events e
         WHERE e.run_id = s.id) AS log,
       -- The statement's snapshot: an event newer than what is read here shows
       -- as a higher wake-up count later (see suspend_runs).
       i.wakeups, i.inbox, i.children
  FROM started s
  JOIN leased l ON l.run_id = s.id
 CROSS JOIN LATERAL werkfluss._run_inputs(s.id) AS i;

-- name: run_inputs
-- What may have unblocked a run this worker holds: its unconsumed hook
-- payloads, its finished children, and the wake-up count (one snapshot).
SELECT wakeups, inbox, children FROM werkfluss._run_inputs(%(run_id)s);

-- name: next_due
-- Seconds (by the server's clock) until the next run of these workflows
-- becomes claimable: a sleep ending, or a lease running out (a dead worker's,
-- or one this worker gave up). NULL if none is scheduled.
SELECT extract(epoch FROM min(available_at) - now())::float8 AS seconds
  FROM werkfluss.queue
 WHERE available_at > now() AND available_at < 'infinity'
   AND workflow = ANY(%(workflows)s::text[]);

-- name: append_events
-- Record results, fenced by the lease: a record whose run this lease no
-- longer holds is dropped (FOR SHARE waits out a concurrent takeover, then
-- sees the new lease). A record that holds a hook payload marks it consumed
-- in the same statement. The caller learns which records landed.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[], %(seqs)s::integer[],
                  %(kinds)s::text[], %(names)s::text[], %(statuses)s::text[],
                  %(inputs)s::jsonb[], %(outputs)s::json[], %(errors)s::jsonb[],
                  %(attempts)s::integer[], %(started_ats)s::timestamptz[],
                  %(finished_ats)s::timestamptz[], %(consumes)s::bigint[])
           AS b(run_id, lease_id, seq, kind, name, status, input, output, error,
                attempts, started_at, finished_at, consumes)
), inserted AS (
    INSERT INTO werkfluss.events
           (run_id, seq, kind, name, status, input, output, error, attempts, started_at, finished_at)
    SELECT b.run_id, b.seq, b.kind, b.name, b.status, b.input, b.output, b.error,
           b.attempts, b.started_at, b.finished_at
      FROM batch b
     WHERE EXISTS (SELECT 1 FROM werkfluss.queue q
                    WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
                      FOR SHARE)
        ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING run_id, seq
), consumed AS (
    UPDATE werkfluss.hook_payloads p
       SET consumed_run = b.run_id, consumed_seq = b.seq
      FROM batch b
      JOIN inserted i ON i.run_id = b.run_id AND i.seq = b.seq
     WHERE b.consumes IS NOT NULL AND p.id = b.consumes
    RETURNING p.id
)
SELECT run_id, seq FROM inserted;

-- name: lock_hook_tokens
-- Hook creation takes each token's advisory lock first, as send() does.
SELECT pg_advisory_xact_lock(hashtextextended('werkfluss.hook:' || t, 0))
  FROM (SELECT DISTINCT t FROM unnest(%(tokens)s::text[]) AS t ORDER BY t) AS tokens;

-- name: create_hooks
-- Create hooks (fenced) and their log records in one statement. A token that
-- another run already owns gives a failed record; a created hook comes back
-- with any payloads sent to its token before it existed.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[], %(seqs)s::integer[],
                  %(tokens)s::text[], %(multis)s::boolean[], %(ats)s::timestamptz[])
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
    -- Who owns each token: an earlier run (visible) or a row this statement inserted.
    SELECT f.token, coalesce(
               (SELECT h.run_id FROM werkfluss.hooks h WHERE h.token = f.token),
               (SELECT c.run_id FROM created c WHERE c.token = f.token)) AS owner
      FROM fenced f
), recorded AS (
    INSERT INTO werkfluss.events (run_id, seq, kind, name, status, output, error, started_at, finished_at)
    SELECT f.run_id, f.seq, 'hook', f.token,
           CASE WHEN c.token IS NULL THEN 'failed' ELSE 'completed' END,
           CASE WHEN c.token IS NULL THEN NULL
                ELSE json_build_object('token', f.token, 'multi', f.multi) END,
           CASE WHEN c.token IS NULL THEN jsonb_build_object(
                    'type', 'werkfluss.errors.HookConflict',
                    'class', 'werkfluss.errors:HookConflict',
                    'message', format('hook token %%s is already used by run %%s; choose a token unique to this run',
                                      f.token, o.owner),
                    'args', jsonb_build_array(f.token, o.owner))
           END,
           f.at, f.at
      FROM fenced f
      LEFT JOIN created c ON c.token = f.token AND c.run_id = f.run_id AND c.seq = f.seq
      JOIN (SELECT DISTINCT token, owner FROM owners) o ON o.token = f.token
        ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING run_id, seq, status, error
)
SELECT r.run_id, r.seq, r.status, r.error,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', p.id, 'token', p.token, 'payload', p.payload,
                   'received_at', p.received_at) ORDER BY p.id), '[]'::jsonb)
          FROM werkfluss.hook_payloads p
         WHERE r.status = 'completed' AND p.token = (SELECT f.token FROM fenced f
                                                      WHERE f.run_id = r.run_id AND f.seq = r.seq)
           AND p.consumed_seq IS NULL) AS early
  FROM recorded r;

-- name: mark_hooks_multi
-- A hook the workflow iterates receives many payloads.
UPDATE werkfluss.hooks SET multi = true WHERE token = ANY(%(tokens)s::text[]) AND NOT multi;

-- name: start_children
-- Start child runs and record each start in the parent's log, fenced by the
-- parent's lease: one statement, so a replayed parent never starts a child twice.
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[], %(seqs)s::integer[],
                  %(child_ids)s::text[], %(workflows)s::text[], %(args)s::jsonb[],
                  %(kwargs)s::jsonb[], %(deadlines)s::timestamptz[], %(ats)s::timestamptz[])
           AS b(run_id, lease_id, seq, child_id, workflow, args, kwargs, deadline, at)
), recorded AS (
    INSERT INTO werkfluss.events (run_id, seq, kind, name, status, input, output, started_at, finished_at)
    SELECT b.run_id, b.seq, 'child', b.workflow, 'completed',
           jsonb_build_object('args', b.args, 'kwargs', b.kwargs),
           json_build_object('run_id', b.child_id), b.at, b.at
      FROM batch b
     WHERE EXISTS (SELECT 1 FROM werkfluss.queue q
                    WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
                      FOR SHARE)
        ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING run_id, seq
), children AS (
    INSERT INTO werkfluss.runs (id, workflow, args, kwargs, parent_id, deadline)
    SELECT b.child_id, b.workflow, b.args, b.kwargs, b.run_id, b.deadline
      FROM batch b JOIN recorded r ON r.run_id = b.run_id AND r.seq = b.seq
        ON CONFLICT (id) DO NOTHING
    RETURNING id, workflow
), queued AS (
    INSERT INTO werkfluss.queue (run_id, workflow)
    SELECT id, workflow FROM children
        ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
)
SELECT r.run_id, r.seq,
       (SELECT CASE WHEN count(*) > 0 THEN pg_notify('werkfluss_queue', '') END FROM queued) AS notified
  FROM recorded r;

-- name: suspend_runs
-- Take runs off their workers while they sleep or wait: the lease is
-- released and the run becomes claimable at its wake-up time ('infinity' if
-- only an event can wake it) — or at once, if an event arrived since the
-- worker last looked (the wake-up count moved).
WITH batch AS (
    SELECT *
      FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[], %(statuses)s::text[],
                  %(wake_ats)s::timestamptz[], %(due_ats)s::timestamptz[],
                  %(waiting_ons)s::text[], %(wakeups)s::integer[])
           AS b(run_id, lease_id, status, wake_at, due_at, waiting_on, wakeups)
), released AS (
    UPDATE werkfluss.queue q
       SET lease_id = NULL, worker_id = NULL,
           available_at = CASE WHEN q.wakeups <> b.wakeups THEN now()
                               ELSE coalesce(b.due_at, 'infinity') END
      FROM batch b
     WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
 RETURNING q.run_id, q.available_at <= now() AS ready
), marked AS (
    UPDATE werkfluss.runs r
       SET status = b.status, wake_at = b.wake_at, waiting_on = b.waiting_on, updated_at = now()
      FROM batch b
      JOIN released x ON x.run_id = b.run_id
     WHERE r.id = b.run_id
 RETURNING r.id
)
SELECT coalesce(array_agg(x.run_id), '{}') AS run_ids,
       CASE WHEN bool_or(x.ready) THEN pg_notify('werkfluss_queue', '') END AS notified
  FROM released x;

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
      FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[], %(statuses)s::text[],
                  %(results)s::jsonb[], %(errors)s::jsonb[])
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
           available_at = CASE WHEN q.lease_id IS NULL THEN now() ELSE q.available_at END
      FROM (SELECT DISTINCT parent_id FROM finished WHERE parent_id IS NOT NULL) p
     WHERE q.run_id = p.parent_id
 RETURNING q.lease_id IS NULL AS claimable
)
SELECT coalesce(array_agg(f.id), '{}') AS run_ids,
       CASE WHEN count(*) > 0 THEN
           pg_notify('werkfluss_runs',
                     CASE WHEN sum(length(f.id) + 1) <= 7900
                               AND bool_and(strpos(f.id, ',') = 0)
                          THEN string_agg(f.id, ',') ELSE '*' END)
       END AS notified,
       (SELECT CASE WHEN bool_or(w.claimable) THEN pg_notify('werkfluss_queue', '') END
          FROM woken w) AS parents_notified
  FROM finished f;

-- name: renew_leases
-- Push the expiry of leases this worker still holds; returns the runs renewed.
UPDATE werkfluss.queue q
   SET available_at = now() + %(lease_seconds)s * interval '1 second'
  FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[]) AS b(run_id, lease_id)
 WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
RETURNING q.run_id;

-- name: release_leases
-- Hand runs back at once (graceful shutdown): claimable now, status pending,
-- and one NOTIFY so another worker takes them without waiting for a poll.
WITH batch AS (
    SELECT * FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[]) AS b(run_id, lease_id)
), released AS (
    UPDATE werkfluss.queue q
       SET lease_id = NULL, worker_id = NULL, available_at = now()
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
