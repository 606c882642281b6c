"""Chaos: worker processes killed at random while runs sleep, wait and step.

Bounded by default (a few seconds of kills, so CI runs it every time); set
``WERKFLUSS_CHAOS_SECONDS`` (and ``WERKFLUSS_CHAOS_RUNS``) for a longer soak:

    WERKFLUSS_CHAOS_SECONDS=300 WERKFLUSS_CHAOS_RUNS=2000 pytest -m slow tests/acceptance/test_chaos.py
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from werkfluss import Engine

from ..helpers import sql, sql_value
from .apps.effects_app import chaos

CHAOS_SECONDS = float(os.environ.get("WERKFLUSS_CHAOS_SECONDS", "6"))
CHAOS_RUNS = int(os.environ.get("WERKFLUSS_CHAOS_RUNS", "60"))


@pytest.mark.slow
@pytest.mark.timeout(CHAOS_SECONDS * 4 + 120)
async def test_runs_finish_with_every_step_recorded_once_while_workers_are_killed(
    effects: str, spawn: Any
) -> None:
    dsn = effects
    rng = random.Random(1234)
    workers = [spawn("--lease", "1s", "--concurrency", "16", name=f"w{i}") for i in range(2)]
    kills = 0
    async with Engine(dsn) as engine:
        handles = await asyncio.gather(*(engine.start(chaos, i) for i in range(CHAOS_RUNS)))
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + CHAOS_SECONDS
        while loop.time() < stop_at:
            await asyncio.sleep(rng.uniform(0.3, 0.8))  # the chaos schedule, not a wait for a state
            victim = rng.randrange(len(workers))
            workers[victim].kill()
            kills += 1
            workers[victim] = spawn("--lease", "1s", "--concurrency", "16", name=f"w{victim}-{kills}")
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
    assert results == [f"chaos-{i}-done" for i in range(CHAOS_RUNS)]
    assert kills >= 3
    # Every step of every run is in the log exactly once, with no gaps.
    per_run = sql(dsn, """SELECT run_id, array_agg(seq ORDER BY seq) FROM werkfluss.events
                           WHERE kind = 'step' GROUP BY run_id""")
    assert len(per_run) == CHAOS_RUNS
    for _, seqs in per_run:
        assert seqs == [1, 2, 4, 5]  # seq 3 is the sleep
    # A step body runs again only if its worker died before its result was
    # committed: at most one step per run a killed worker held (16 each), and
    # never a step whose result had been recorded.
    extra = sql_value(dsn, "SELECT count(*) - count(DISTINCT (run_id, seq)) FROM test_effects")
    assert extra <= kills * 16
    rerun_after_record = sql_value(dsn, """
        SELECT count(*) FROM test_effects t
          JOIN werkfluss.events e ON e.run_id = t.run_id AND e.seq = t.seq
         WHERE t.started_at > e.finished_at""")
    assert rerun_after_record == 0
