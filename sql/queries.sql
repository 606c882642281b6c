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
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'seq', e.seq, 'kind', e.kind, 'name', e.name, 'status', e.status,
                   'output', e.output, 'error', e.error) ORDER BY e.seq), '[]'::jsonb)
          FROM werkfluss.events e
         WHERE e.run_id = s.id) AS log
  FROM started s
  JOIN leased l ON l.run_id = s.id;

-- name: next_due
-- Seconds (by the server's clock) until the next run of these workflows
-- becomes claimable: a sleep ending, or a lease running out (a dead worker's,
-- or one this worker gave up). NULL if none is scheduled.
SELECT extract(epoch FROM min(available_at) - now())::float8 AS seconds
  FROM werkfluss.queue
 WHERE available_at > now()
   AND workflow = ANY(%(workflows)s::text[]);

-- name: append_events
-- Record step results, fenced by the lease: a record whose run this lease no
-- longer holds is dropped (FOR SHARE waits out a concurrent takeover, then
-- sees the new lease). The caller learns which records landed.
INSERT INTO werkfluss.events
       (run_id, seq, kind, name, status, input, output, error, attempts, started_at, finished_at)
SELECT b.run_id, b.seq, b.kind, b.name, b.status, b.input, b.output, b.error,
       b.attempts, b.started_at, b.finished_at
  FROM unnest(%(run_ids)s::text[], %(lease_ids)s::uuid[], %(seqs)s::integer[],
              %(kinds)s::text[], %(names)s::text[], %(statuses)s::text[],
              %(inputs)s::jsonb[], %(outputs)s::jsonb[], %(errors)s::jsonb[],
              %(attempts)s::integer[], %(started_ats)s::timestamptz[],
              %(finished_ats)s::timestamptz[])
       AS b(run_id, lease_id, seq, kind, name, status, input, output, error,
            attempts, started_at, finished_at)
 WHERE EXISTS (SELECT 1 FROM werkfluss.queue q
                WHERE q.run_id = b.run_id AND q.lease_id = b.lease_id
                  FOR SHARE)
    ON CONFLICT (run_id, seq) DO NOTHING
RETURNING run_id, seq;

-- name: finish_runs
-- Complete or fail runs held by these leases: they leave the queue, their
-- outcome is stored, and one NOTIFY (ids, or '*' if too long) wakes waiters.
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
 RETURNING r.id
)
SELECT coalesce(array_agg(f.id), '{}') AS run_ids,
       CASE WHEN count(*) > 0 THEN
           pg_notify('werkfluss_runs',
                     CASE WHEN sum(length(f.id) + 1) <= 7900
                               AND bool_and(strpos(f.id, ',') = 0)
                          THEN string_agg(f.id, ',') ELSE '*' END)
       END AS notified
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
