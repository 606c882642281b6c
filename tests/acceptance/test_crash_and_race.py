"""Worker processes killed, stopped and racing: every step is recorded once,
no completed step runs again, no run runs twice at the same time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from werkfluss import Engine

from ..helpers import sql, sql_value, wait_until
from .apps.effects_app import effect, one_step, ten_steps, two_steps


async def _effects_count(dsn: str) -> int:
    return int(sql_value(dsn, "SELECT count(*) FROM test_effects"))


async def test_a_killed_worker_process_is_taken_over_without_redoing_steps(
    effects: str, spawn: Any
) -> None:
    dsn = effects
    first = spawn("--lease", "1s", name="first")
    await first.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handle = await engine.start(ten_steps, 0.05)
        await wait_until(lambda: _recorded_at_least(dsn, 4), timeout=30, message="4 steps recorded")
        first.kill()  # SIGKILL, in the middle of the run
        recorded_before = {seq for (seq,) in sql(dsn, "SELECT seq FROM werkfluss.events")}
        assert 4 <= len(recorded_before) < 10

        second = spawn("--lease", "1s", name="second")
        result = await handle.result(timeout=60)
        assert result == [f"step-{i}" for i in range(1, 11)]

    # Each step recorded exactly once, in order.
    assert [seq for (seq,) in sql(dsn, "SELECT seq FROM werkfluss.events ORDER BY seq")] == list(range(1, 11))
    executions = dict(sql(dsn, "SELECT seq, count(*) FROM test_effects GROUP BY seq"))
    for seq in recorded_before:
        assert executions[seq] == 1, f"completed step {seq} ran again"
    # At most the one step in flight at the kill ran twice, with the same key.
    rerun = [seq for seq, n in executions.items() if n > 1]
    assert len(rerun) <= 1
    assert sum(executions.values()) <= 11
    for seq in rerun:
        keys = {k for (k,) in sql(dsn, "SELECT key FROM test_effects WHERE seq = %s", [seq])}
        assert keys == {f"{handle.run_id}:{seq}"}
    assert "worker.lease_taken_over" in second.output()


async def _recorded_at_least(dsn: str, n: int) -> bool:
    return int(sql_value(dsn, "SELECT count(*) FROM werkfluss.events")) >= n


async def test_two_worker_processes_never_run_one_run_twice_at_once(effects: str, spawn: Any) -> None:
    dsn = effects
    workers = [spawn("--concurrency", "16", name=f"racer{i}") for i in range(2)]
    for worker in workers:
        await worker.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handles = await asyncio.gather(*(engine.start(one_step, 0.005) for _ in range(200)))
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert results == ["only"] * 200
    # Exactly one execution per run; overlapping executions of one run would
    # show up as two rows for it.
    assert sql_value(dsn, "SELECT count(*) FROM test_effects") == 200
    assert sql_value(dsn, "SELECT count(DISTINCT run_id) FROM test_effects") == 200
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events") == 200
    assert sql_value(dsn, "SELECT count(DISTINCT pid) FROM test_effects") == 2, "both workers raced"
    assert sql_value(dsn, "SELECT max(claims) FROM werkfluss.queue") is None  # all finished, queue empty


async def test_sigterm_finishes_the_step_and_hands_the_run_over_at_once(effects: str, spawn: Any) -> None:
    dsn = effects
    first = spawn("--lease", "60s", name="first")
    await first.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handle = await engine.start(two_steps, 1.0)
        await wait_until(lambda: _effects_count(dsn), timeout=30, message="first step started")
        stopped_at = time.monotonic()
        assert await asyncio.to_thread(first.terminate) == 0
        assert time.monotonic() - stopped_at < 10
        # The in-flight step was finished and recorded; the run was released.
        assert [s.name for s in await handle.steps()] == [effect.name]
        assert await handle.status() == "pending"
        assert "worker.stopped" in first.output()
        assert '"released": 1' in first.output()

        spawn("--lease", "60s", name="second")
        assert await handle.result(timeout=20) == ["first", "second"]
        assert time.monotonic() - stopped_at < 30  # not after the 60 s lease
    assert dict(sql(dsn, "SELECT tag, count(*) FROM test_effects GROUP BY tag")) == {"first": 1, "second": 1}


async def test_a_sql_start_in_a_rolled_back_transaction_never_runs(effects: str, spawn: Any) -> None:
    dsn = effects
    worker = spawn(name="worker")
    await worker.wait_for_output("worker.started")
    with psycopg.connect(dsn) as conn:
        ghost = conn.execute(
            """SELECT werkfluss.start_run('tests.effects.one_step', '[0]', 'ghost')"""
        ).fetchone()
        assert ghost == ("ghost",)
        conn.rollback()
    with psycopg.connect(dsn) as conn:
        conn.execute("""SELECT werkfluss.start_run('tests.effects.one_step', '[0]', 'real')""")
        conn.commit()
    async with Engine(dsn) as engine:
        assert await engine.handle("real").result(timeout=30) == "only"
        assert [r.run_id for r in await engine.runs()] == ["real"]
    assert sql(dsn, "SELECT DISTINCT run_id FROM test_effects") == [("real",)]
