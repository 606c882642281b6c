"""The shortest path through the engine: start, execute, result, log."""

from __future__ import annotations

import asyncio

from werkfluss import Engine, step, workflow


@step
async def double(x: int) -> int:
    return x * 2


@workflow
async def doubler(x: int) -> int:
    first = await double(x)
    return await double(first)


async def test_run_executes_steps_and_records_each_once(engine: Engine) -> None:
    handle = await engine.start(doubler, 5)
    async with engine.worker(workflows=[doubler]):
        assert await handle.result(timeout=10) == 20
    steps = await handle.steps()
    assert [(s.seq, s.name, s.status, s.output) for s in steps] == [
        (1, double.name, "completed", 10),
        (2, double.name, "completed", 20),
    ]
    assert await handle.status() == "completed"


async def test_gathered_steps_get_seq_in_call_order(engine: Engine) -> None:
    @workflow(name="tests.smoke.fan")
    async def fan(n: int) -> list[int]:
        return list(await asyncio.gather(*(double(i) for i in range(n))))

    handle = await engine.start(fan, 5)
    async with engine.worker(workflows=[fan]):
        assert await handle.result(timeout=10) == [0, 2, 4, 6, 8]
    steps = await handle.steps()
    assert [s.input["args"] for s in steps] == [[0], [1], [2], [3], [4]]
