"""One clock: a worker whose clock is minutes off behaves like one whose clock is right.

Worker processes run under libfaketime (Debian's ``faketime``) with their
clock two minutes behind or ahead. Sleeps wake on time, run deadlines hold,
and no run loops between claiming and suspending.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from werkfluss import Engine, RunFailed

from ..helpers import sql, sql_value
from .apps.effects_app import overrun, timed_sleep

LIBFAKETIME = next(
    (path for path in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ) if Path(path).exists()),
    None,
)

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install faketime)"
)


def _skewed(offset: str) -> dict[str, str]:
    assert LIBFAKETIME is not None
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_NO_CACHE": "1"}


@pytest.mark.parametrize("offset", ["-120s", "+120s"])
async def test_a_worker_with_a_skewed_clock_wakes_sleeps_on_time(
    effects: str, spawn: Any, offset: str
) -> None:
    dsn = effects
    worker = spawn("--lease", "2s", "--poll", "0.2s", name=f"skewed{offset}", env=_skewed(offset))
    await worker.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handles = [await engine.start(timed_sleep, 1.0) for _ in range(5)]
        started = time.monotonic()
        assert await asyncio.gather(*(h.result(timeout=30) for h in handles)) == ["woke"] * 5
        took = time.monotonic() - started
    # Each run slept 1 s by the database's clock: not 0 (woken at once) and not
    # two minutes (woken by the worker's clock).
    assert 0.9 < took < 10, took
    gaps = sql(dsn, """SELECT extract(epoch FROM a.started_at - b.finished_at)::float8
                         FROM test_effects a JOIN test_effects b ON a.run_id = b.run_id
                        WHERE a.tag = 'after-sleep' AND b.tag = 'before-sleep'""")
    assert len(gaps) == 5
    assert all(0.95 <= gap < 5 for (gap,) in gaps), gaps
    # No claim -> suspend loop: each run was claimed at start and once more after its sleep.
    claims = sql_value(dsn, "SELECT max(claims) FROM werkfluss.queue") or 0
    assert claims <= 2
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events WHERE kind = 'sleep'") == 5


@pytest.mark.parametrize("offset", ["-120s", "+120s"])
async def test_a_worker_with_a_skewed_clock_keeps_run_deadlines(
    effects: str, spawn: Any, offset: str
) -> None:
    dsn = effects
    worker = spawn("--lease", "2s", "--poll", "0.2s", name=f"deadline{offset}",
                   env=_skewed(offset))
    await worker.wait_for_output("worker.started")
    async with Engine(dsn) as engine:
        handle = await engine.start(overrun, 60.0, timeout="2s")
        started = time.monotonic()
        with pytest.raises(RunFailed) as failed:
            await handle.result(timeout=30)
        took = time.monotonic() - started
    assert failed.value.error_type == "TimeoutError"
    assert 1.5 < took < 8, took


def test_libfaketime_really_skews_a_child_process() -> None:
    # Guard against a silently ineffective LD_PRELOAD: the skewed scenarios above
    # would then prove nothing.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"],
                         env=dict(os.environ, **_skewed("+120s")), capture_output=True, text=True,
                         check=True)
    assert float(out.stdout) - time.time() > 100
