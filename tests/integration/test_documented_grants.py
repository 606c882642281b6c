"""The grants that docs/operations.md gives for the worker role and the
read-only role are enough for what those roles do, and no more.

The SQL is read from the page itself, so the docs and this test cannot drift
apart: a worker logged in as a role granted exactly that runs steps, sleeps,
hooks, child runs, cancels, retries and pruning; the read-only role runs
every monitoring query of the page and changes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlparse
from psycopg.conninfo import conninfo_to_dict

from werkfluss import Engine, RunFailed, hook, sleep, step, workflow

from ..docs.pages import parse
from ..helpers import ROOT, login_role, sql, sql_value

PAGE = ROOT / "docs" / "operations.md"


def section_sql(heading: str) -> list[str]:
    """The SQL blocks of one section of docs/operations.md (up to the next heading of its level)."""
    text = PAGE.read_text().splitlines()
    level = heading.split(" ", 1)[0]
    start = text.index(heading) + 1
    end = next((i for i in range(start, len(text))
                if re.match(rf"^#{{1,{len(level)}}} ", text[i])), len(text))
    page = parse(PAGE, ROOT)
    return [b.code for b in page.blocks
            if b.lang == "sql" and not b.setup and b.no_run is None and start < b.line <= end]


def grants_for(role: str, heading: str, documented: str) -> list[str]:
    """The section's statements for ``role`` (the page's CREATE ROLE left out: the test made one)."""
    statements = []
    for block in section_sql(heading):
        code = re.sub(rf"\b{documented}\b", f'"{role}"', block)
        for statement in sqlparse.split(code):
            bare = sqlparse.format(statement, strip_comments=True).strip()
            if bare and not bare.startswith(("CREATE ROLE", "GRANT pg_signal_backend")):
                statements.append(statement)
    assert statements, f"no SQL under {heading!r} in {PAGE}"
    return statements


@pytest.fixture
def migrated(fresh_dsn: str) -> str:
    async def _migrate() -> None:
        async with Engine(fresh_dsn, pool_size=1) as engine:
            await engine.migrate()

    asyncio.run(_migrate())
    return fresh_dsn


@pytest.fixture
def worker_role(migrated: str) -> Iterator[str]:
    with login_role(migrated, prefix="werkfluss_test_docworker") as dsn:
        role = conninfo_to_dict(dsn)["user"]
        for statement in grants_for(str(role), "### The worker role", "app_worker"):
            sql(migrated, statement)
        yield dsn


# --- the worker role ---------------------------------------------------------------------

CALLS: dict[str, int] = {}


@step(name="tests.docgrants.flaky")
async def flaky(key: str) -> str:
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] == 1:
        raise ValueError("first time")
    return f"ok {key}"


@workflow(name="tests.docgrants.child")
async def child(key: str) -> str:
    return f"child {key}"


@workflow(name="tests.docgrants.everything")
async def everything(key: str) -> dict[str, Any]:
    await sleep(0.05)
    payload = await hook(token=f"docgrants:{key}").wait()
    kid = await child(key)
    value = await flaky(key)  # fails the first run; a retry finishes it
    return {"payload": payload, "child": kid, "value": value}


@workflow(name="tests.docgrants.waits")
async def waits(key: str) -> None:
    await hook(token=f"docgrants:never:{key}").wait()


async def test_a_worker_with_exactly_the_documented_grants_does_everything(
    worker_role: str, migrated: str
) -> None:
    async with Engine(worker_role) as engine:
        handle = await engine.start(everything, "a")
        doomed = await engine.start(waits, "a")
        async with engine.worker(workflows=[everything, child, waits], lease="2s", poll_interval="100ms"):
            assert await engine.send("docgrants:a", {"approved": True}) in ("delivered", "stored")
            with pytest.raises(RunFailed, match="first time"):
                await handle.result(timeout=15)
            assert await engine.retry(handle.run_id)
            assert await handle.result(timeout=15) == {
                "payload": {"approved": True}, "child": "child a", "value": "ok a"}
            assert await engine.cancel(doomed.run_id)
            assert [w.state for w in await engine.workers()] == ["running"]
        runs = await engine.runs()
        assert {r.status for r in runs} == {"completed", "cancelled"}
        sql(migrated, "UPDATE werkfluss.runs SET finished_at = now() - interval '30 days'")
        assert await engine.prune("14d") == 3  # the run, its child and the cancelled one
    # the worker registered itself, as that role
    assert sql_value(migrated, "SELECT count(*) FROM werkfluss.workers") == 1


def test_the_worker_role_may_not_write_the_migrations_table(worker_role: str) -> None:
    assert sql(worker_role, "SELECT count(*) FROM werkfluss.migrations")[0][0] > 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sql(worker_role, "DELETE FROM werkfluss.migrations")


# --- the read-only role ------------------------------------------------------------------------


@pytest.fixture
def reader_role(migrated: str) -> Iterator[str]:
    with login_role(migrated, prefix="werkfluss_test_docreader") as dsn:
        role = conninfo_to_dict(dsn)["user"]
        for statement in grants_for(str(role), "### A read-only role", "werkfluss_reader"):
            sql(migrated, statement)
        yield dsn


async def test_the_read_only_role_runs_every_monitoring_query_and_reads_runs(
    reader_role: str, migrated: str
) -> None:
    sql(migrated, "SELECT werkfluss.start_run('tests.docgrants.waits', '[\"r\"]', 'reader:1')")
    queries = section_sql("## Monitoring with SQL")
    assert len(queries) >= 10
    for query in queries:
        sql(reader_role, query)  # raises if a grant is missing
    async with Engine(reader_role, pool_size=1) as engine:
        assert [r.run_id for r in await engine.runs()] == ["reader:1"]
        assert await engine.handle("reader:1").log() == []


def test_the_read_only_role_changes_nothing(reader_role: str) -> None:
    for statement in [
        "DELETE FROM werkfluss.runs",
        "UPDATE werkfluss.queue SET available_at = now()",
        "SELECT werkfluss.start_run('x', '[]')",
        "SELECT werkfluss._wake('x')",
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(reader_role, statement)
