"""Faults heal in a second, not a lease: lost connections, a pool full of dead ones."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from werkfluss import Engine, step, workflow

from ..helpers import sql, wait_until

STARTED: dict[str, float] = {}
GATES: dict[str, asyncio.Event] = defaultdict(asyncio.Event)


@step(name="tests.faults.mark")
async def mark(tag: str) -> str:
    STARTED.setdefault(tag, time.monotonic())
    return tag


@step(name="tests.faults.gated")
async def gated(tag: str) -> str:
    STARTED.setdefault(tag, time.monotonic())
    await GATES[tag].wait()
    return tag


@workflow(name="tests.faults.one")
async def one(tag: str) -> str:
    return await mark(tag)


@workflow(name="tests.faults.gated_then_mark")
async def gated_then_mark(tag: str) -> list[str]:
    return [await gated(tag), await mark(f"{tag}-after")]


def _kill_worker_connections(dsn: str) -> int:
    rows = sql(dsn, """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                        WHERE datname = current_database() AND application_name LIKE 'werkfluss%'
                          AND pid <> pg_backend_pid()""")
    return len(rows)


async def test_new_runs_are_picked_up_within_a_second_after_every_connection_is_cut(dsn: str) -> None:
    async with Engine(dsn) as engine, \
            engine.worker(workflows=[one], poll_interval="30s", lease="30s") as worker:
        handle = await engine.start(one, "before")
        assert await handle.result(timeout=10) == "before"
        assert _kill_worker_connections(dsn) >= 2  # the pool's and the LISTEN connection
        cut = time.monotonic()
        async with Engine(dsn) as client:
            handle = await client.start(one, "after")
            await wait_until(lambda: _started("after"), timeout=5, message="the new run started")
            picked_up = STARTED["after"] - cut
            assert await handle.result(timeout=10) == "after"
        assert picked_up < 1.0, f"picked up {picked_up:.2f}s after the cut"
        assert worker.connector.heals >= 1


async def test_writes_cut_mid_run_are_retried_at_once_not_after_a_lease(dsn: str) -> None:
    async with Engine(dsn) as engine:
        handles = [await engine.start(gated_then_mark, f"cut-{i}") for i in range(4)]
        async with engine.worker(workflows=[gated_then_mark], lease="30s") as worker:
            await wait_until(lambda: _started_all([f"cut-{i}" for i in range(4)]), message="steps in flight")
            _kill_worker_connections(dsn)
            released = time.monotonic()
            for i in range(4):
                GATES[f"cut-{i}"].set()
            results = await asyncio.gather(*(h.result(timeout=20) for h in handles))
            took = time.monotonic() - released
        assert results == [[f"cut-{i}", f"cut-{i}-after"] for i in range(4)]
        assert took < 3.0, f"took {took:.2f}s: the writes waited for something"
        assert worker.recorder.retries >= 1
        for h in handles:
            assert [s.seq for s in await h.steps()] == [1, 2]


async def _started(tag: str) -> bool:
    return tag in STARTED


async def _started_all(tags: list[str]) -> bool:
    return all(tag in STARTED for tag in tags)
