"""The benchmark workflows (the same shapes as ../shared/peer-bench)."""

from __future__ import annotations

import asyncio

from werkfluss import sleep, step, workflow

CHAIN_STEPS = 10
FANOUT = 100


@step(name="bench.noop")
async def noop(i: int) -> dict:
    return {"i": i}


@workflow(name="bench.chain10")
async def chain10() -> int:
    for i in range(CHAIN_STEPS):
        await noop(i)
    return CHAIN_STEPS


@workflow(name="bench.one_step")
async def one_step() -> dict:
    return await noop(0)


@workflow(name="bench.fanout100")
async def fanout100() -> int:
    results = await asyncio.gather(*(noop(i) for i in range(FANOUT)))
    return len(results)


@workflow(name="bench.nap_then_step")
async def nap_then_step(seconds: float) -> dict:
    await sleep(seconds)
    return await noop(1)


@workflow(name="bench.child")
async def child(i: int) -> dict:
    return await noop(i)


@workflow(name="bench.parent")
async def parent(n: int) -> int:
    results = await asyncio.gather(*(child(i) for i in range(n)))
    return len(results)


@workflow(name="bench.collect")
async def collect(token: str, n: int) -> int:
    from werkfluss import hook

    received = 0
    async for _ in hook(token=token, multi=True):
        received += 1
        if received == n:
            break
    return received


# --- flow control (bench/run.py --only flow flowclaim) ----------------------------------------

from werkfluss import Queue  # noqa: E402

KEYED = Queue("bench.keyed", per_key=2)
BLOCKED_KEY = Queue("bench.blocked_key", per_key=1)
BLOCKED_QUEUE = Queue("bench.blocked_queue", concurrency=1)


@workflow(name="bench.chain10_keyed", queue=KEYED)
async def chain10_keyed() -> int:
    for i in range(CHAIN_STEPS):
        await noop(i)
    return CHAIN_STEPS


@workflow(name="bench.blocked")
async def blocked() -> None:
    return None
