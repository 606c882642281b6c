-- werkfluss 0006: worker heartbeats instead of per-run lease renewals; child
-- outcomes recorded in the parent's log and read only until delivered.
--
-- Lock order, everywhere: a hook's advisory lock, then a run's queue row,
-- then its runs row; children before their parents.

-- One row per worker process. A worker's liveness is its heartbeat: one
-- update per interval, however many runs it holds (fillfactor: HOT updates).
CREATE TABLE werkfluss.workers (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    workflows     text[] NOT NULL DEFAULT '{}',
    concurrency   integer NOT NULL,
    lease_seconds double precision NOT NULL CHECK (lease_seconds > 0),
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    runs_held     integer NOT NULL DEFAULT 0,
    state         text NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'stopping', 'stopped', 'dead')),
    stopped_at    timestamptz,
    -- The application_name of the connections it writes through: when it is
    -- declared dead, those sessions are ended, so that a transaction it left
    -- open (frozen in the middle of a write) releases its locks at once.
    app_name      text
) WITH (fillfactor = 50);

-- A run held by a worker has available_at = 'infinity': the queue's index is
-- not touched while it is held (no renewals). It becomes claimable again when
-- the worker suspends, releases or finishes it — or when the worker's
-- heartbeat stops and any other worker reaps it (werkfluss._reap_workers).
CREATE INDEX queue_worker_id_idx ON werkfluss.queue (worker_id) WHERE worker_id IS NOT NULL;

-- A child run's outcome is delivered to its parent once, as a record in the
-- parent's log; until then the parent's claims and refreshes read it. The
-- partial index holds exactly the ended, undelivered children, so a parent of
-- many children reads only what it does not have yet.
ALTER TABLE werkfluss.runs ADD COLUMN delivered boolean NOT NULL DEFAULT false;
-- Children that ended under earlier releases are read as before until their
-- parent ends; those of ended parents are done.
UPDATE werkfluss.runs c SET delivered = true
  FROM werkfluss.runs p
 WHERE c.parent_id = p.id AND c.finished_at IS NOT NULL
   AND p.status IN ('completed', 'failed', 'cancelled');
CREATE INDEX runs_undelivered_idx ON werkfluss.runs (parent_id)
    WHERE parent_id IS NOT NULL AND finished_at IS NOT NULL AND NOT delivered;
-- Status is in no index any more, so status changes can be HOT updates.
DROP INDEX werkfluss.runs_parent_active_idx;

-- Only payloads not yet received are looked up by token.
DROP INDEX werkfluss.hook_payloads_token_idx;
CREATE INDEX hook_payloads_pending_idx ON werkfluss.hook_payloads (token, id) WHERE consumed_seq IS NULL;
CREATE INDEX hook_payloads_token_idx ON werkfluss.hook_payloads (token);

-- What may unblock a run: its undelivered hook payloads and ended children.
CREATE OR REPLACE FUNCTION werkfluss._run_inputs(
    run_id text, OUT wakeups integer, OUT inbox jsonb, OUT children jsonb
)
LANGUAGE sql STABLE AS $$
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
$$;

-- Release the runs of workers whose heartbeat stopped (each worker's own
-- lease is the limit): they become claimable at once, and one NOTIFY tells
-- idle workers. Any worker calls this; SKIP LOCKED keeps two from doing the
-- same work.
CREATE FUNCTION werkfluss._reap_workers() RETURNS integer
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
    -- worker_id stays: the next claim reports whose run it took over.
    WITH freed AS (
        UPDATE werkfluss.queue q
           SET lease_id = NULL, available_at = now()
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

-- Internal: workers call it; clients never may (see 0005).
REVOKE EXECUTE ON FUNCTION werkfluss._reap_workers() FROM PUBLIC;

-- Roles that run workers (they may add to the queue) may keep their heartbeat
-- in the new table, so existing workers keep running after this migration.
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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON werkfluss.workers TO %I', grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION werkfluss._reap_workers() TO %I', grantee);
    END LOOP;
END
$$;
