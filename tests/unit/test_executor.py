"""The executor's gates: no attempt starts when the worker may not act."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from werkfluss import step
from werkfluss.clock import ManualClock
from werkfluss.runtime import context
from werkfluss.worker.executor import run_attempts

started: list[str] = []


@step(name="executor_tests.sync_body")
def sync_body(label: str) -> str:
    started.append(label)
    return label


@step(name="executor_tests.flaky_body", retries=2, retry_delay="1ms", backoff=1.0)
async def flaky_body() -> int:
    started.append("flaky")
    if len(started) < 2:
        raise ValueError("first attempt fails")
    return len(started)


def _info(name: str) -> context.StepInfo:
    return context.StepInfo("run-1", "wf", name, 1, 1)


@pytest.fixture(autouse=True)
def _clear() -> None:
    started.clear()


async def test_a_sync_body_queued_behind_a_busy_pool_does_not_start_once_the_worker_may_not() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    allowed = {"now": True}
    gate_calls = 0

    async def before_attempt() -> None:
        nonlocal gate_calls
        gate_calls += 1
        if gate_calls > 1 and not allowed["now"]:
            allowed["now"] = True  # a heartbeat vouched for the worker again

    try:
        blocker = asyncio.get_running_loop().run_in_executor(pool, release.wait)
        task = asyncio.create_task(run_attempts(sync_body, ("queued",), {}, _info(sync_body.name),
                                                pool, ManualClock(), before_attempt=before_attempt,
                                                may_start=lambda: allowed["now"]))
        await asyncio.sleep(0.05)
        assert gate_calls == 1
        assert started == []
        allowed["now"] = False  # the worker was stopped meanwhile: its leases are in doubt
        release.set()
        await blocker
        outcome = await asyncio.wait_for(task, 5)
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert outcome.ok
    assert outcome.attempts == 1
    assert started == ["queued"]  # started once, after the gate was passed again
    assert gate_calls == 2


async def test_a_refused_start_raises_cancelled_from_the_gate() -> None:
    async def before_attempt() -> None:
        raise asyncio.CancelledError("the run is not this worker's any more")

    with pytest.raises(asyncio.CancelledError):
        await run_attempts(sync_body, ("never",), {}, _info(sync_body.name), None, ManualClock(),
                           before_attempt=before_attempt, may_start=lambda: True)
    assert started == []


async def test_every_retry_passes_the_gate() -> None:
    calls = 0

    async def before_attempt() -> None:
        nonlocal calls
        calls += 1

    outcome = await run_attempts(flaky_body, (), {}, _info(flaky_body.name), None, ManualClock(),
                                 before_attempt=before_attempt)
    assert outcome.ok
    assert outcome.attempts == 2
    assert calls == 2
