-- werkfluss 0001: runs, the append-only event log, the dispatch queue,
-- and the SQL entry points start_run / cancel_run.
--
-- Lock order, everywhere: a run's queue row before its runs row. Keeping one
-- order is what keeps cancel_run, workers finishing runs and claims free of
-- deadlocks.

-- One row per run, for its whole life (pruned after the retention period).
CREATE TABLE werkfluss.runs (
    id          text PRIMARY KEY,
    workflow    text NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'sleeping', 'waiting',
                                  'completed', 'failed', 'cancelled')),
    args        jsonb NOT NULL DEFAULT '[]',
    kwargs      jsonb NOT NULL DEFAULT '{}',
    result      jsonb,
    error       jsonb,
    parent_id   text,
    wake_at     timestamptz,
    waiting_on  text,
    deadline    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);  -- room for HOT updates: a run is updated a few times

CREATE INDEX runs_created_at_idx ON werkfluss.runs (created_at);
CREATE INDEX runs_parent_id_idx ON werkfluss.runs (parent_id) WHERE parent_id IS NOT NULL;

-- The event log: one row per recorded step (or other durable operation),
-- written once, never updated. (run_id, seq) is what makes a record exactly-once.
CREATE TABLE werkfluss.events (
    run_id      text NOT NULL,
    seq         integer NOT NULL,
    kind        text NOT NULL,
    name        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('completed', 'failed')),
    input       jsonb,
    output      jsonb,
    error       jsonb,
    attempts    integer NOT NULL DEFAULT 1,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);

-- The dispatch queue: only runs that a worker holds or may claim. Finished,
-- waiting and cancelled runs leave it, so it stays small.
--
-- available_at doubles as the lease expiry: a claim moves it to now() + lease,
-- renewals push it forward, so "claimable" is the single condition
-- available_at <= now(), whether the run is new, due after a sleep, or held by
-- a worker that stopped renewing.
CREATE TABLE werkfluss.queue (
    run_id       text PRIMARY KEY,
    workflow     text NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    lease_id     uuid,
    worker_id    text,
    claims       integer NOT NULL DEFAULT 0
);

CREATE INDEX queue_available_at_idx ON werkfluss.queue (available_at);

-- Start a run. Takes part in the caller's transaction: a rolled-back start
-- leaves nothing behind and wakes nobody (NOTIFY is delivered on commit).
-- With run_id given, starting twice returns the same run (idempotency key).
CREATE FUNCTION werkfluss.start_run(
    name    text,
    args    jsonb    DEFAULT '[]',
    run_id  text     DEFAULT NULL,
    kwargs  jsonb    DEFAULT '{}',
    timeout interval DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id   text := coalesce(start_run.run_id, gen_random_uuid()::text);
    existing text;
BEGIN
    IF start_run.name IS NULL OR start_run.name = '' THEN
        RAISE EXCEPTION 'werkfluss.start_run: the workflow name is empty'
            USING ERRCODE = '22023',
                  HINT = 'pass the registered name, e.g. ''app.onboard''';
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
    IF new_id = '' THEN
        RAISE EXCEPTION 'werkfluss.start_run: run_id is empty'
            USING ERRCODE = '22023', HINT = 'pass NULL to get a generated id';
    END IF;
    IF start_run.timeout IS NOT NULL AND start_run.timeout <= interval '0' THEN
        RAISE EXCEPTION 'werkfluss.start_run: timeout must be positive, got %', start_run.timeout
            USING ERRCODE = '22023';
    END IF;

    INSERT INTO werkfluss.runs (id, workflow, args, kwargs, deadline)
    VALUES (new_id, start_run.name, start_run.args, start_run.kwargs,
            now() + start_run.timeout)
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

    INSERT INTO werkfluss.queue (run_id, workflow) VALUES (new_id, start_run.name);
    -- Only the workflow name: ids, never payloads (NOTIFY caps at 8000 bytes),
    -- and identical notifications in one transaction collapse into one.
    PERFORM pg_notify('werkfluss_queue', start_run.name);
    RETURN new_id;
END
$$;

-- Cancel a run that has not finished. Returns true if it was cancelled, false
-- if it had already finished; an unknown id is an error.
CREATE FUNCTION werkfluss.cancel_run(run_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- Queue row first (the global lock order). Deleting it also fences out a
    -- worker that holds the run: its next write finds no lease.
    DELETE FROM werkfluss.queue q WHERE q.run_id = cancel_run.run_id;
    UPDATE werkfluss.runs r
       SET status = 'cancelled', finished_at = now(), updated_at = now(),
           wake_at = NULL, waiting_on = NULL
     WHERE r.id = cancel_run.run_id
       AND r.status NOT IN ('completed', 'failed', 'cancelled');
    IF FOUND THEN
        PERFORM pg_notify('werkfluss_runs',
            CASE WHEN strpos(cancel_run.run_id, ',') > 0 OR length(cancel_run.run_id) > 7900
                 THEN '*' ELSE cancel_run.run_id END);
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM werkfluss.runs r WHERE r.id = cancel_run.run_id) THEN
        RAISE EXCEPTION 'werkfluss.cancel_run: no run with id %', cancel_run.run_id
            USING ERRCODE = 'P0002';
    END IF;
    RETURN false;
END
$$;
