-- werkfluss 0005: least privilege at the SQL door.
--
-- * A NOLOGIN role werkfluss_client that may call start_run, send, cancel_run
--   and run_status, and nothing else: no table can be read or written
--   directly. Applications that only start and steer runs log in with a role
--   granted werkfluss_client; workers use a role that owns or may write the
--   schema.
-- * The public functions run with their owner's rights (SECURITY DEFINER),
--   with a fixed search_path and every name schema-qualified, so a caller's
--   own objects (a temporary table called queue, an operator in public) are
--   never picked up.
-- * EXECUTE is revoked from PUBLIC on every werkfluss function: the internal
--   _-functions can be called only by their owner and by roles granted them.
-- * Inputs are checked with the limits of werkfluss/limits.py (the same
--   numbers, repeated here as literals; a test keeps the two in step):
--   run ids and workflow names at most 255 characters, hook tokens at most
--   500, no NULLs, and no '::' in a chosen run id (it is reserved for the ids
--   of child runs, '<parent id>::<seq>').
--
-- Roles are cluster-wide, and many databases on one server may migrate at the
-- same time: creating the role tolerates it existing already, being created
-- concurrently, and the migrating role lacking CREATEROLE (then nothing is
-- granted; docs/operations.md gives the GRANTs to run by hand).

-- begin: create werkfluss_client
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'werkfluss_client') THEN
        BEGIN
            CREATE ROLE werkfluss_client NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it a moment ago
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'werkfluss: role werkfluss_client not created (this role lacks CREATEROLE)'
                    USING HINT = 'create it and grant it as shown in docs/operations.md, '
                                 '"Roles and least privilege"';
        END;
    END IF;
END
$$;
-- end: create werkfluss_client

-- Start a run. Takes part in the caller's transaction: a rolled-back start
-- leaves nothing behind and wakes nobody (NOTIFY is delivered on commit).
-- With run_id given, starting twice returns the same run (idempotency key):
-- the first arguments win, and nothing about the existing run changes.
CREATE OR REPLACE FUNCTION werkfluss.start_run(
    name    text,
    args    jsonb    DEFAULT '[]',
    run_id  text     DEFAULT NULL,
    kwargs  jsonb    DEFAULT '{}',
    timeout interval DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    new_id   text := coalesce(start_run.run_id, pg_catalog.gen_random_uuid()::text);
    existing text;
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

-- The public form of _send: true if the payload was delivered (or kept),
-- else false (and nothing is stored).
CREATE OR REPLACE FUNCTION werkfluss.send(token text, payload jsonb DEFAULT 'null') RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
    RETURN werkfluss._send(send.token, send.payload) = 'delivered';
END
$$;

-- Cancel a run that has not finished, with its child runs. Returns true if
-- it was cancelled, false if it had already finished; an unknown id is an
-- error. A parent waiting on the cancelled run is woken (it sees RunCancelled).
CREATE OR REPLACE FUNCTION werkfluss.cancel_run(run_id text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- A run's status, and its result or error once it has finished: what a
-- client that may not read the tables needs to follow a run it started.
--   SELECT * FROM werkfluss.run_status('onboard:user-123');
-- An unknown id is an error (P0002), as for cancel_run.
CREATE FUNCTION werkfluss.run_status(run_id text, OUT status text, OUT result jsonb, OUT error jsonb)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Nobody but the owner may call a werkfluss function, unless granted.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA werkfluss FROM PUBLIC;

-- Roles that were given write access to the queue before this migration (the
-- documented worker grants) keep calling the functions they called before:
-- nothing the functions do is beyond what those roles may do to the tables.
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
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA werkfluss TO %I', grantee);
    END LOOP;
END
$$;

-- What werkfluss_client may do, if the role exists.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'werkfluss_client') THEN
        GRANT USAGE ON SCHEMA werkfluss TO werkfluss_client;
        GRANT EXECUTE ON FUNCTION
            werkfluss.start_run(text, jsonb, text, jsonb, interval),
            werkfluss.send(text, jsonb),
            werkfluss.cancel_run(text),
            werkfluss.run_status(text)
        TO werkfluss_client;
    ELSE
        RAISE NOTICE 'werkfluss: role werkfluss_client does not exist; nothing granted to it'
            USING HINT = 'see docs/operations.md, "Roles and least privilege"';
    END IF;
END
$$;
