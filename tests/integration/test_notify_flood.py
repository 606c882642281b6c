"""A flood of foreign NOTIFYs on werkfluss's channels costs bounded work."""

from __future__ import annotations

import asyncio

import psycopg

from werkfluss import Engine, hook, step, workflow

from ..helpers import wait_until

GATE = asyncio.Event()


@step(name="tests.flood.slow")
async def slow() -> str:
    await GATE.wait()
    return "done"


@workflow(name="tests.flood.busy")
async def busy() -> str:
    return await slow()


@workflow(name="tests.flood.waits")
async def waits(token: str) -> object:
    return await hook(token=token).wait()


async def test_a_flood_of_notifications_costs_a_bounded_number_of_queries(dsn: str) -> None:
    flood = 5000
    async with Engine(dsn) as engine, engine.worker(workflows=[busy, waits], poll_interval="30s") as worker:
        held = await engine.start(busy)
        waiting = await engine.start(waits, "flood:token")
        await wait_until(lambda: _status(held, "running"), message="a run held by the worker")
        await wait_until(lambda: _status(waiting, "waiting"), message="a run waiting")
        before = worker.connector.queries.copy()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(flood):
                with conn.transaction():
                    conn.execute("SELECT pg_notify('werkfluss_wake', %s), pg_notify('werkfluss_runs', '*'),"
                                 " pg_notify('werkfluss_queue', ''), pg_notify('werkfluss_wake', %s)",
                                 [held.run_id, f"foreign-{i}"])
        # The worker keeps working through it, and did bounded work for it.
        await engine.send("flood:token", {"ok": True})
        assert await waiting.result(timeout=20) == {"ok": True}
        GATE.set()
        assert await held.result(timeout=20) == "done"
        spent = worker.connector.queries - before
    refreshes, claims = spent["run_inputs"], spent["claim_runs"]
    checks = spent["get_run"] + spent["run_outcome"]
    # Each kind of reaction is coalesced: at most one in flight and one queued,
    # so the work follows the worker's pace, not the number of notifications.
    assert refreshes < flood / 10, spent
    assert checks < flood / 10, spent
    assert claims < flood / 10, spent


async def _status(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined, no-any-return]
