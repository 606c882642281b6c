-- werkfluss 0004: what may unblock a run, defined once.
--
-- A claim and a worker's refresh of a run it holds both need the run's
-- unconsumed hook payloads, its finished children and its wake-up count, read
-- in one snapshot (STABLE: the calling statement's).
CREATE FUNCTION werkfluss._run_inputs(
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
                       'finished_at', c.finished_at)), '[]'::jsonb)
              FROM werkfluss.runs c
             WHERE c.parent_id = _run_inputs.run_id
               AND c.status IN ('completed', 'failed', 'cancelled'))
$$;
