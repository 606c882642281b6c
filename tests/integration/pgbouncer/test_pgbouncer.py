"""What only PgBouncer in transaction mode brings: no prepared statements, LISTEN on the side."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from werkfluss import Engine
from werkfluss.store.connector import Connector

from ...helpers import WorkerProcess, run_cli, sql, sql_value, wait_until
from .conftest import SERVER_CONNECTIONS


def test_the_pooler_really_shares_server_connections_between_transactions(dsn: str) -> None:
    # What breaks a client that prepares statements: another client's prepared
    # statement on the same server connection, or its own missing on another.
    clients = [psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
               for _ in range(SERVER_CONNECTIONS + 2)]

    def run_all() -> None:
        for round_ in range(3):
            for i, client in enumerate(clients):
                client.execute(f"SELECT %s::int + {i}", [round_]).fetchone()

    try:
        with pytest.raises((psycopg.errors.DuplicatePreparedStatement,
                            psycopg.errors.InvalidSqlStatementName)):
            run_all()
    finally:
        for client in clients:
            client.close()


async def test_the_connector_sees_the_pooler_and_prepares_nothing(dsn: str, direct_dsn: str) -> None:
    with capture_logs() as logs:
        pooled, direct = Connector(dsn), Connector(direct_dsn)
        await pooled.open()
        await direct.open()
    try:
        assert pooled.prepare is False
        assert direct.prepare is True
        assert pooled.sibling(max_size=1, application_name="x").prepare is False
        # Many executions of the same statement on few server connections: fine.
        for _ in range(3 * SERVER_CONNECTIONS * 5):
            assert (await pooled.fetch_one("backend_pid")) is not None
    finally:
        await pooled.close()
        await direct.close()
    (detected,) = [e for e in logs if e["event"] == "connector.pooler_detected"]
    assert detected["prepared_statements"] is False
    assert "password" not in detected["database"]


async def test_a_worker_process_through_the_pooler_is_woken_by_its_direct_listener(
        dsn: str, direct_dsn: str, tmp_path: Path) -> None:
    # A poll of a minute: only notifications (LISTEN on the direct connection)
    # can make pickup and results prompt.
    proc = WorkerProcess(dsn, "tests.integration.test_sql_api", "--listen-dsn", direct_dsn,
                         "--poll", "60s", "--concurrency", "4", log_dir=tmp_path)
    try:
        await proc.wait_for_output('"worker.started"')
        assert "connector.pooler_detected" in proc.output()
        async with Engine(dsn, listen_dsn=direct_dsn) as engine:
            began = time.monotonic()
            from_sql = sql_value(dsn, "SELECT werkfluss.start_run('tests.sql.hello', '[\"pgbouncer\"]')")
            assert await engine.handle(from_sql).result(timeout=10) == "hello pgbouncer"
            handles = [await engine.start("tests.sql.hello", f"run-{i}") for i in range(20)]
            results = [await h.result(timeout=10) for h in handles]
            assert results == [f"hello run-{i}" for i in range(20)]
            assert time.monotonic() - began < 10  # not one poll interval
        done = run_cli("start", "tests.sql.hello", '["cli"]', "--wait", "--wait-timeout", "10", dsn=dsn)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == '"hello cli"'
        assert sql(dsn, "SELECT count(*) FROM werkfluss.runs WHERE status = 'completed'") == [(22,)]
        assert proc.terminate() == 0
        assert "prepared statement" not in proc.output()
    finally:
        proc.close()


async def test_without_a_listen_url_the_worker_still_finishes_runs_by_polling(
        dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # LISTEN through the pooler hears nothing; the poll is the safety net.
    monkeypatch.delenv("WERKFLUSS_LISTEN_URL")
    proc = WorkerProcess(dsn, "tests.integration.test_sql_api", "--poll", "200ms", log_dir=tmp_path)
    try:
        await proc.wait_for_output('"worker.started"')
        run_id = sql_value(dsn, "SELECT werkfluss.start_run('tests.sql.hello', '[\"polled\"]')")

        async def finished() -> bool:
            return sql_value(dsn, "SELECT status FROM werkfluss.runs WHERE id = %s", [run_id]) == "completed"

        await wait_until(finished, timeout=15, message="the run completed by polling")
    finally:
        proc.terminate()
        proc.close()
