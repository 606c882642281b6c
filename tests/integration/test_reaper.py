"""The reaper: a worker whose heartbeat stopped is declared dead, its runs
become claimable at once, and the write sessions it left open are ended."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from werkfluss import Engine, step, workflow

from ..helpers import login_role, sql, sql_value

APP_NAME = "werkfluss-w-0123456789ab"


@step(name="tests.reaper.noop")
async def noop() -> str:
    return "ok"


@workflow(name="tests.reaper.wf")
async def wf() -> str:
    return await noop()


def _dead_worker_holding(dsn: str, run_id: str) -> None:
    """A worker row whose heartbeat stopped an hour ago, holding ``run_id``."""
    sql(dsn, """INSERT INTO werkfluss.workers (id, host, pid, version, concurrency, lease_seconds,
                                               heartbeat_at, app_name)
                VALUES ('frozen', 'elsewhere', 1, 'test', 1, 1, now() - interval '1 hour', %s)""",
        (APP_NAME,))
    sql(dsn, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'frozen',
                       available_at = 'infinity', claims = 1 WHERE run_id = %s""", (run_id,))


@pytest.fixture
def frozen_session(dsn: str) -> Iterator[psycopg.Connection]:
    """A session named like the dead worker's writes."""
    conn = psycopg.connect(dsn, application_name=APP_NAME)
    try:
        yield conn
    finally:
        conn.close()


async def test_a_dead_workers_open_transaction_is_ended_and_its_runs_are_freed(
    engine: Engine, dsn: str, frozen_session: psycopg.Connection
) -> None:
    handle = await engine.start(wf)
    _dead_worker_holding(dsn, handle.run_id)
    # Frozen in the middle of a write: its transaction holds the run's queue row.
    frozen_session.execute("SELECT 1 FROM werkfluss.queue WHERE run_id = %s FOR UPDATE", (handle.run_id,))

    with psycopg.connect(dsn, autocommit=True) as reaper:
        reaper.execute("SET lock_timeout = '10s'")
        released = reaper.execute("SELECT werkfluss._reap_workers()").fetchone()
    assert released == (1,)
    assert sql_value(dsn, "SELECT state FROM werkfluss.workers WHERE id = 'frozen'") == "dead"
    assert sql(dsn, "SELECT lease_id FROM werkfluss.queue WHERE run_id = %s", (handle.run_id,)) == [(None,)]
    with pytest.raises(psycopg.OperationalError):
        frozen_session.execute("SELECT 1")
    async with engine.worker(workflows=[wf]):
        assert await handle.result(timeout=10) == "ok"


async def test_a_reaper_that_may_not_end_the_sessions_still_frees_the_runs(
    engine: Engine, dsn: str, frozen_session: psycopg.Connection
) -> None:
    handle = await engine.start(wf)
    _dead_worker_holding(dsn, handle.run_id)
    frozen_session.execute("SELECT 1")  # idle, no transaction open
    with login_role(dsn) as reaper_dsn:
        role = psycopg.conninfo.conninfo_to_dict(reaper_dsn)["user"]
        sql(dsn, f'GRANT USAGE ON SCHEMA werkfluss TO "{role}"')
        sql(dsn, f'GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA werkfluss TO "{role}"')
        sql(dsn, f'GRANT EXECUTE ON FUNCTION werkfluss._reap_workers() TO "{role}"')
        # Not a superuser, not the session's role, not in pg_signal_backend.
        assert sql_value(reaper_dsn, "SELECT werkfluss._reap_workers()") == 1
    assert sql(dsn, "SELECT lease_id FROM werkfluss.queue WHERE run_id = %s", (handle.run_id,)) == [(None,)]
    assert frozen_session.execute("SELECT 1").fetchone() == (1,)  # left alone
    async with engine.worker(workflows=[wf]):
        assert await handle.result(timeout=10) == "ok"
