"""After a PostgreSQL restart, work resumes within two seconds of the server
accepting connections, and every run finishes (issue: faults heal in a second)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from werkfluss import Engine, sleep, step, workflow

from .pg import OwnedPostgres

STARTED: dict[str, float] = {}


@step(name="tests.restart.mark")
async def mark(tag: str) -> str:
    STARTED.setdefault(tag, time.monotonic())
    return tag


@workflow(name="tests.restart.one")
async def one(tag: str) -> str:
    return await mark(tag)


@workflow(name="tests.restart.through")
async def through(tag: str) -> list[str]:
    first = await mark(f"{tag}-1")
    await sleep(1.0)  # asleep while the server is down
    return [first, await mark(f"{tag}-2")]


@pytest.fixture
def restart_db(owned_pg: OwnedPostgres) -> Iterator[str]:
    name = f"restart_{int(time.time() * 1000) % 10**9}"
    with psycopg.connect(owned_pg.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield owned_pg.dsn(name)
    with psycopg.connect(owned_pg.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.chaos
@pytest.mark.timeout(180)
async def test_work_resumes_within_two_seconds_of_a_restart(owned_pg: OwnedPostgres, restart_db: str) -> None:
    async with Engine(restart_db) as engine:
        await engine.migrate()
        in_flight = [await engine.start(through, f"t{i}") for i in range(20)]
        async with engine.worker(workflows=[one, through], lease="3s", poll_interval="30s"):
            await asyncio.gather(*(_wait_started(f"t{i}-1") for i in range(20)))
            # Down for longer than the pools' first retries, then up again.
            await asyncio.to_thread(owned_pg._run, "pg_ctl", "-D", str(owned_pg.data), "-m", "immediate",
                                    "-w", "stop")
            await asyncio.sleep(4.0)
            await asyncio.to_thread(owned_pg.start)
            up = time.monotonic()
            async with Engine(restart_db) as client:
                await client.start(one, "after-restart")
            await _wait_started("after-restart", timeout=30)
            picked_up = STARTED["after-restart"] - up
            results = await asyncio.gather(*(h.result(timeout=60) for h in in_flight))
    assert results == [[f"t{i}-1", f"t{i}-2"] for i in range(20)]
    assert picked_up < 2.0, f"a new run started {picked_up:.2f}s after the server was up again"


async def _wait_started(tag: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while tag not in STARTED:
        if time.monotonic() > deadline:
            raise AssertionError(f"{tag} did not start within {timeout}s")
        await asyncio.sleep(0.01)
