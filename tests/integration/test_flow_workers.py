"""Queue limits across worker processes, through a SIGKILL.

Three worker processes serve one queue with a global limit (4), a per-key
limit (2) and a per-worker limit (2). A sampler thread reads, throughout,
how many runs hold a worker per queue, key and worker; the step bodies log
when they ran, so the overlap of bodies is checked independently of the
queue table. One worker is killed while it holds runs: they keep counting
until it is reaped, then others finish them. A low-priority run started
early gets through a steady stream of priority-0 runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from werkfluss import Engine, StartOptions

from ..helpers import HeldSampler, WorkerProcess, sql, sql_value, wait_until
from .apps.flow_app import BODIES_DDL, EXPORTS

APP = "tests.integration.apps.flow_app"
QUEUE = EXPORTS.name
KEYS = [f"k{i}" for i in range(5)]
RUNS = 24


@pytest.fixture
def workers(dsn: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    sql(dsn, BODIES_DDL)
    sql(dsn, "TRUNCATE test_flow_bodies")
    started = [
        WorkerProcess(dsn, APP, "--concurrency", "8", "--lease", "1s", "--poll", "0.2s",
                      log_dir=tmp_path, name=f"worker{i}")
        for i in range(3)
    ]
    yield started
    for worker in started:
        worker.close()


def _most_at_once(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda e: (e[0], e[1]))
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def _held_by(dsn: str, pid: int) -> int:
    return int(sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE lease_id IS NOT NULL"
                              " AND split_part(worker_id, ':', 2) = %s", [str(pid)]))


@pytest.mark.timeout(120)
async def test_limits_hold_across_worker_processes_and_a_sigkill(
    engine: Engine, dsn: str, workers: list[WorkerProcess]
) -> None:
    for worker in workers:
        await worker.wait_for_output("worker.started")
    handles = [
        await engine.start("tests.flowapp.export", KEYS[i % len(KEYS)], 0.4,
                           options=StartOptions(queue=QUEUE, concurrency_key=KEYS[i % len(KEYS)]))
        for i in range(RUNS)
    ]
    # Behind the backlog, a run of priority 3 (300 ms of aging), then a
    # steady stream of priority-0 runs until it has finished.
    low = await engine.start("tests.flowapp.export", "low", 0.05,
                             options=StartOptions(queue=QUEUE, concurrency_key="low", priority=3))
    stream: list[object] = []

    async def feed() -> None:
        while await low.status() != "completed":
            key = f"s{len(stream) % 3}"
            stream.append(await engine.start("tests.flowapp.export", key, 0.02,
                                             options=StartOptions(queue=QUEUE, concurrency_key=key)))
            await asyncio.sleep(0.02)

    with HeldSampler(dsn) as sampler:
        feeder = asyncio.ensure_future(feed())
        try:
            # Kill a worker while it holds runs.
            victim = workers[0]
            await wait_until(lambda: _held_by(dsn, victim.pid), timeout=30, message="the victim holding runs")
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait(timeout=10)
            killed_at = time.monotonic()
            # What it held then still counts, until it is reaped.
            orphans = [r[0] for r in sql(
                dsn, "SELECT run_id FROM werkfluss.queue WHERE lease_id IS NOT NULL"
                     " AND split_part(worker_id, ':', 2) = %s", [str(victim.pid)])]
            assert await low.result(timeout=60) == "low"
            # The feeder stops by itself once the low-priority run completed;
            # cancelled in the middle of a start, it could leave a run started
            # and untracked (its queue row then outlives the test's runs).
            await asyncio.wait_for(feeder, 30)
        finally:
            feeder.cancel()
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        await asyncio.gather(*(h.result(timeout=60) for h in stream))  # type: ignore[attr-defined]
    assert sorted(results) == sorted(KEYS[i % len(KEYS)] for i in range(RUNS))
    assert orphans, "the victim held runs when it was killed"
    taken_over = "".join(w.output() for w in workers[1:])
    for run_id in orphans:
        assert await engine.handle(run_id).status() == "completed"
        assert any("worker.lease_taken_over" in line and run_id in line for line in taken_over.splitlines())
    assert time.monotonic() - killed_at < 60
    assert stream, "the stream ran while the low-priority run waited"

    # What held a worker, sampled throughout.
    assert sampler.samples > 100
    assert max(sampler.max_queue.values()) <= 4
    assert max(sampler.max_key.values()) <= 2
    assert max(held for (queue, _), held in sampler.max_worker.items() if queue == QUEUE) <= 2
    assert sampler.max_queue[QUEUE] == 4  # the limit was reached, not just respected

    # The bodies that ran, by the database's clock (a killed worker's last
    # bodies never finished: they ran no longer than the worker did).
    rows = sql(dsn, "SELECT key, started, finished FROM test_flow_bodies WHERE finished IS NOT NULL")
    assert len(rows) >= RUNS
    assert _most_at_once([(s, f) for _, s, f in rows]) <= 4
    for key in {k for k, _, _ in rows}:
        assert _most_at_once([(s, f) for k, s, f in rows if k == key]) <= 2, key
    # The dead worker's runs were taken over after its reaping, and none is left behind.
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.workers WHERE state = 'dead'") == 1


def _most_in_window(times: list[dt.datetime], window: float) -> int:
    seconds = sorted(t.timestamp() for t in times)
    return max(sum(1 for t in seconds if start <= t < start + window) for start in seconds)


@pytest.mark.timeout(120)
async def test_rate_limits_per_key_hold_across_worker_processes(
    engine: Engine, dsn: str, workers: list[WorkerProcess]
) -> None:
    """Queue tests.flowapp.syncs starts at most 4 runs of a key a second; each
    run calls a step limited to 3 calls of its key a second."""
    for worker in workers:
        await worker.wait_for_output("worker.started")
    busy = [await engine.start("tests.flowapp.sync", "a", 1, options=StartOptions(concurrency_key="a"))
            for _ in range(12)]
    quiet = [await engine.start("tests.flowapp.sync", "b", 1, options=StartOptions(concurrency_key="b"))
             for _ in range(3)]
    assert await asyncio.gather(*(h.result(timeout=60) for h in busy + quiet)) == [0] * 15

    def started(key: str) -> list[dt.datetime]:
        return [r[0] for r in sql(dsn, "SELECT started_at FROM werkfluss.runs WHERE concurrency_key = %s",
                                  [key])]

    def bodies(key: str) -> list[dt.datetime]:
        return [r[0] for r in sql(dsn, "SELECT started FROM test_flow_bodies WHERE key = %s", [key])]

    # Starts, by the database's clock as the claims took their tokens: 4, then 4 a second.
    a_starts, b_starts = started("a"), started("b")
    assert (max(a_starts) - min(a_starts)).total_seconds() >= 1.9
    for window in (0.5, 1.0, 2.0):
        assert _most_in_window(a_starts, window) <= 4 + 4 * window, window
    # Calls of the step: 3, then 3 a second (a body begins a little after its token).
    a_calls, b_calls = bodies("a"), bodies("b")
    assert len(a_calls) == 12
    assert len(b_calls) == 3
    assert (max(a_calls) - min(a_calls)).total_seconds() >= 2.8
    for window in (0.5, 1.0, 2.0):
        assert _most_in_window(a_calls, window) <= 3 + 3 * window + 1, window
    # Key b had buckets of its own: its runs started and called at once.
    first = min(a_starts + b_starts)
    assert (max(b_starts) - first).total_seconds() < 0.5
    assert (max(b_calls) - first).total_seconds() < 1.0
    # More than one process did the work.
    assert len({r[0] for r in sql(dsn, "SELECT DISTINCT pid FROM test_flow_bodies")}) >= 2
