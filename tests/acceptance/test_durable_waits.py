"""Durable waits across worker processes that stop and crash."""

from __future__ import annotations

from typing import Any

from werkfluss import Engine

from ..helpers import sql, sql_value, wait_until
from .apps.effects_app import nap, race_then_work


async def _status_is(engine: Engine, run_id: str, status: str) -> bool:
    return await engine.handle(run_id).status() == status


async def test_a_sleeping_run_survives_every_worker_stopping(effects: str, spawn: Any) -> None:
    dsn = effects
    first = spawn(name="first")
    await first.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handle = await engine.start(nap, 1.0)
        await wait_until(lambda: _status_is(engine, handle.run_id, "sleeping"), message="asleep")
        assert first.terminate() == 0  # no worker left anywhere
        await wait_until(
            lambda: _value(dsn, "SELECT available_at <= now() FROM werkfluss.queue"),
            timeout=10, message="run due while no worker runs",
        )
        assert await handle.status() == "sleeping"
        spawn(name="second")
        assert await handle.result(timeout=30) == "rested"
    assert dict(sql(dsn, "SELECT tag, count(*) FROM test_effects GROUP BY tag")) == {"before": 1, "after": 1}


async def test_a_race_replays_to_the_same_winner_after_a_crash(effects: str, spawn: Any) -> None:
    dsn = effects
    first = spawn("--lease", "1s", name="first")
    await first.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handle = await engine.start(race_then_work, "late-approval")
        # The sleep wins the race; the run is in the slow step after it.
        await wait_until(
            lambda: _value(dsn, "SELECT count(*) FROM test_effects WHERE tag = 'after-race'"),
            timeout=30, message="step after the race running",
        )
        first.kill()
        # Now the hook has its payload: a race run again would let it win.
        await engine.send("late-approval", {"approved": True})
        spawn("--lease", "1s", name="second")
        assert await handle.result(timeout=30) == [1, None]
    # The replay delivered the timer before anything that came after it, as
    # the first worker saw it: the late payload was never received.
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events WHERE kind = 'receive'") == 0
    assert sql_value(dsn, "SELECT consumed_seq FROM werkfluss.hook_payloads") is None


async def _value(dsn: str, query: str) -> Any:
    return sql_value(dsn, query)
