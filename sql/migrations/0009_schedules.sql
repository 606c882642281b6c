-- werkfluss 0009: cron schedules.
--
-- A schedule starts a run of its workflow at every tick of a cron
-- expression in a time zone. Cron expressions are evaluated by the workers
-- (Python, the cronsim package): the database stores the definition, the
-- next tick not handled yet and what happened last, and makes each tick
-- start exactly one run:
--
-- * a tick's run has the id 'schedule:<name>:<tick in UTC>' and is started
--   through start_run's idempotency;
-- * a worker hands the ticks it computed to _fire_schedule together with the
--   revision it read; the revision moves on with every change, so of all the
--   workers that computed the same ticks exactly one fires them, in one
--   statement, and a schedule paused or redefined meanwhile fires nothing.
--
-- Schedule names are at most 200 characters, without ':' or whitespace, so
-- that every run id a schedule makes is within the 255 characters of a run
-- id and tells the schedule and the tick apart (werkfluss/limits.py repeats
-- these numbers).

CREATE TABLE werkfluss.schedules (
    name          text PRIMARY KEY,
    workflow      text NOT NULL,
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    args          jsonb NOT NULL DEFAULT '[]',
    kwargs        jsonb NOT NULL DEFAULT '{}',
    -- Ticks that came and went while no worker served the schedule:
    -- 'skip' them (a tick seen up to 60 s late still runs), run the 'latest'
    -- one, or run 'all' of them, at most catchup_limit (the most recent).
    catchup       text NOT NULL DEFAULT 'latest' CHECK (catchup IN ('skip', 'latest', 'all')),
    catchup_limit integer NOT NULL DEFAULT 10 CHECK (catchup_limit BETWEEN 1 AND 1000),
    -- 'skip' a tick while the schedule's previous run has not finished, or 'allow' it.
    overlap       text NOT NULL DEFAULT 'skip' CHECK (overlap IN ('skip', 'allow')),
    -- 'code': declared with @workflow(schedule=...), kept in step by the
    -- workers that serve the workflow; 'api': engine.schedule() or SQL.
    origin        text NOT NULL DEFAULT 'api' CHECK (origin IN ('code', 'api')),
    paused        boolean NOT NULL DEFAULT false,
    -- No tick at or before this time runs (creation, a new cron or time zone, resume).
    since         timestamptz NOT NULL DEFAULT now(),
    -- The first tick not handled yet; NULL until a worker has computed it.
    next_tick     timestamptz,
    last_tick     timestamptz,
    last_run_id   text,
    -- Ticks that started no run (catch-up, overlap), counted.
    skipped       bigint NOT NULL DEFAULT 0,
    -- Why a worker cannot compute the ticks (a cron expression given through
    -- SQL that the parser refuses); the schedule fires nothing until redefined.
    error         text,
    revision      bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX schedules_workflow_idx ON werkfluss.schedules (workflow);

-- Why a schedule name is not acceptable (NULL if it is).
CREATE FUNCTION werkfluss._schedule_name_problem(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN name IS NULL THEN 'is NULL'
        WHEN btrim(name, E' \t\n\r\v\f') = '' THEN 'is empty'
        WHEN length(name) > 200 THEN format('is %s characters long; the limit is 200', length(name))
        WHEN strpos(name, ':') > 0 THEN format('%s contains '':''', quote_literal(name))
        WHEN name ~ '[[:space:][:cntrl:]]' THEN format('%s contains whitespace', quote_literal(name))
    END
$$;

-- Check a schedule name, naming the function that was called.
CREATE FUNCTION werkfluss._check_schedule_name(caller text, name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
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

-- The scheduled time as the workflow's first argument: a datetime the way
-- werkfluss's serializer writes it, in the schedule's time zone (its UTC
-- offset at that instant), e.g. 2026-03-29T03:00:00+02:00.
CREATE FUNCTION werkfluss._scheduled_at(tick timestamptz, tz text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        '__werkfluss__', 'datetime',
        'v', to_char(local, 'YYYY-MM-DD"T"HH24:MI:SS')
             || CASE WHEN off < interval '0' THEN '-' ELSE '+' END
             || to_char(CASE WHEN off < interval '0' THEN -off ELSE off END, 'HH24:MI'))
      FROM (SELECT date_trunc('second', tick) AT TIME ZONE tz AS local,
                   (date_trunc('second', tick) AT TIME ZONE tz)
                   - (date_trunc('second', tick) AT TIME ZONE 'UTC') AS off) t
$$;

-- Create a schedule, or change its definition (origin 'code' or 'api').
-- Pause state, last run and counters survive a change; a new cron
-- expression or time zone starts counting ticks from now. Returns whether
-- anything changed.
CREATE FUNCTION werkfluss._upsert_schedule(
    name text, workflow text, cron text, timezone text, args jsonb, kwargs jsonb,
    catchup text, overlap text, catchup_limit integer, origin text
) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Create or redefine a schedule (see docs/howto/schedules.md). The cron
-- expression is checked for its shape here (5 fields, or 6 with seconds
-- first); the workers parse it, and one they refuse is shown as the
-- schedule's error. Returns the schedule's name.
--   SELECT werkfluss.create_schedule('nightly-report', 'app.reports.nightly',
--                                    '0 2 * * *', 'Europe/Berlin');
CREATE FUNCTION werkfluss.create_schedule(
    name          text,
    workflow      text,
    cron          text,
    timezone      text    DEFAULT 'UTC',
    args          jsonb   DEFAULT '[]',
    kwargs        jsonb   DEFAULT '{}',
    catchup       text    DEFAULT 'latest',
    overlap       text    DEFAULT 'skip',
    catchup_limit integer DEFAULT 10
) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The schedule's row, locked, or P0002 naming the function that was called.
CREATE FUNCTION werkfluss._lock_schedule(caller text, name text) RETURNS werkfluss.schedules
LANGUAGE plpgsql AS $$
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

-- Stop firing ticks (a paused schedule starts no run until resumed); true
-- if it was running, false if it was paused already.
CREATE FUNCTION werkfluss.pause_schedule(name text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Fire ticks again, from the next tick after now on: the ticks that fell
-- into the pause do not run. True if it was paused.
CREATE FUNCTION werkfluss.resume_schedule(name text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Start a run of the schedule now, outside its ticks (also while paused;
-- the overlap policy does not apply). Its scheduled time is now (to the
-- second); its id is 'schedule:<name>:manual:<now in UTC>'. Returns the run id.
CREATE FUNCTION werkfluss.trigger_schedule(name text) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Delete a schedule; the runs it started are kept. True (an unknown name is
-- an error, P0002).
CREATE FUNCTION werkfluss.delete_schedule(name text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s werkfluss.schedules%ROWTYPE := werkfluss._lock_schedule('delete_schedule', delete_schedule.name);
BEGIN
    DELETE FROM werkfluss.schedules x WHERE x.name = s.name;
    RETURN true;
END
$$;

-- Fire a schedule's ticks (oldest first) and move its next tick on, if its
-- revision is still the one the worker read: of the workers that computed
-- the same ticks, one fires them. With overlap 'skip', a tick whose
-- previous run (of this schedule) has not finished is skipped. A tick
-- whose run id another workflow's run already has is skipped too. Returns
-- the ids of the runs started, or NULL if the revision had moved on.
CREATE FUNCTION werkfluss._fire_schedule(
    name text, revision bigint, ticks timestamptz[], next_tick timestamptz, skipped integer
) RETURNS text[]
LANGUAGE plpgsql AS $$
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

-- A worker cannot compute the schedule's ticks: keep why (shown by
-- `werkfluss schedules`); the schedule fires nothing until it is redefined.
CREATE FUNCTION werkfluss._break_schedule(name text, revision bigint, error text) RETURNS boolean
LANGUAGE sql AS $$
    UPDATE werkfluss.schedules x
       SET error = _break_schedule.error, revision = x.revision + 1, updated_at = now()
     WHERE x.name = _break_schedule.name AND x.revision = _break_schedule.revision
    RETURNING true
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA werkfluss FROM PUBLIC;

-- Roles that run workers (they may add to the queue) get the new table and functions.
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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON werkfluss.schedules TO %I', grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION
            werkfluss._schedule_name_problem(text), werkfluss._check_schedule_name(text, text),
            werkfluss._scheduled_at(timestamptz, text),
            werkfluss._upsert_schedule(text, text, text, text, jsonb, jsonb, text, text, integer, text),
            werkfluss.create_schedule(text, text, text, text, jsonb, jsonb, text, text, integer),
            werkfluss._lock_schedule(text, text), werkfluss.pause_schedule(text),
            werkfluss.resume_schedule(text), werkfluss.trigger_schedule(text),
            werkfluss.delete_schedule(text),
            werkfluss._fire_schedule(text, bigint, timestamptz[], timestamptz, integer),
            werkfluss._break_schedule(text, bigint, text) TO %I', grantee);
    END LOOP;
END
$$;
