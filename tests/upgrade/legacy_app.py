"""Workflows whose runs were recorded by werkfluss 0.1 (the previous release's
runtime) and are resumed by this one: ``tests/upgrade/test_upgrade.py``.

The same module serves both: ``record_legacy.py`` runs it with the old code
to write ``legacy-0.1.sql``. Keep these definitions as they are: the recorded
logs must keep matching them.
"""

from __future__ import annotations

from werkfluss import hook, race, sleep, step, workflow


@step(name="legacy.note")
async def note(text: str) -> str:
    return f"noted {text}"


@workflow(name="legacy.nap")
async def nap(n: int) -> list[str]:
    first = await note(f"before {n}")
    await sleep(1.0)
    return [first, await note(f"after {n}")]


@workflow(name="legacy.approval")
async def approval(token: str) -> object:
    await note("asking")
    decision = await hook(token=token).wait()
    return {"decision": decision, "after": await note("decided")}


@workflow(name="legacy.race_pending")
async def race_pending(token: str) -> list[object]:
    index, value = await race(hook(token=token).wait(), sleep(3600))
    return [index, value, await note("raced")]


@workflow(name="legacy.race_decided")
async def race_decided(token: str) -> list[object]:
    first = hook(token=token)
    index, value = await race(first.wait(), sleep(0.2))
    second = await hook(token=f"{token}:second").wait()
    return [index, value, second, await note("done")]


@workflow(name="legacy.timed_wait")
async def timed_wait(token: str) -> object:
    try:
        return await hook(token=token).wait(timeout=3600)
    except TimeoutError:
        return "timed out"


@workflow(name="legacy.child")
async def child(token: str) -> str:
    payload = await hook(token=token).wait()
    return f"child got {payload}"


@workflow(name="legacy.parent")
async def parent(token: str) -> list[str]:
    started = await note("parent")
    return [started, await child(token), await note("parent done")]
