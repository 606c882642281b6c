"""A run that leaves its worker is freed by reference counting, not left in
reference cycles for the garbage collector (whose passes then cost every
step of every other run time)."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator

import pytest

from werkfluss import Engine, sleep, step, workflow
from werkfluss.runtime.instance import WorkflowInstance
from werkfluss.runtime.loop import WorkflowFuture, WorkflowLoop, WorkflowTask
from werkfluss.worker.driver import RunDriver

from ..helpers import wait_until


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="tests.memory.chain")
async def chain(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    parts = await asyncio.gather(add(1, 2), add(3, 4))
    return total + sum(parts)


@workflow(name="tests.memory.napper")
async def napper() -> int:
    await add(1, 1)
    await asyncio.wait_for(sleep(3600), 7200)
    return 1


RUN_TYPES = (WorkflowInstance, WorkflowLoop, WorkflowTask, WorkflowFuture, RunDriver)


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _run_objects_in_cycles() -> Counter[str]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = Counter(type(o).__name__ for o in gc.garbage if isinstance(o, RUN_TYPES))
    gc.garbage.clear()
    gc.set_debug(0)
    return found


@pytest.mark.parametrize("cache_size", [0, 256])
async def test_finished_and_suspended_runs_leave_no_reference_cycles(
    engine: Engine, no_collector: None, cache_size: int
) -> None:
    finished = [await engine.start(chain, 5) for _ in range(5)]
    sleeping = [await engine.start(napper) for _ in range(5)]
    async with engine.worker(workflows=[chain, napper], cache_size=cache_size):
        assert [await h.result(timeout=30) for h in finished] == [20] * 5
        for handle in sleeping:
            await wait_until(lambda h=handle: _status(h, "sleeping"), timeout=30)  # type: ignore[misc]
    assert _run_objects_in_cycles() == Counter()


async def _status(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined, no-any-return]
