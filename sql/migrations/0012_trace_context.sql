-- 0012: trace context. A run remembers the W3C traceparent of whoever
-- started it, so that the spans of its execution (werkfluss's OpenTelemetry
-- tracing) join the caller's trace.
--
-- Additive: older workers ignore the column. werkfluss.start_run is not
-- changed; a trigger fills the column from the transaction-local setting
-- werkfluss.traceparent, which engine.start() sets in the same statement and
-- which SQL callers may set themselves:
--
--     BEGIN;
--     SET LOCAL werkfluss.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
--     SELECT werkfluss.start_run('app.onboard', '["user-123"]');
--     COMMIT;
--
-- Left unset (or empty) the column stays NULL. Child runs get their parent's
-- run span as theirs from the worker that starts them.

ALTER TABLE werkfluss.runs ADD COLUMN traceparent text;

CREATE FUNCTION werkfluss._runs_traceparent() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

REVOKE ALL ON FUNCTION werkfluss._runs_traceparent() FROM PUBLIC;

CREATE TRIGGER runs_traceparent
    BEFORE INSERT ON werkfluss.runs
    FOR EACH ROW EXECUTE FUNCTION werkfluss._runs_traceparent();
