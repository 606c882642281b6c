"""race() and child runs."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from werkfluss import (
    Engine,
    InvalidArgument,
    RunCancelled,
    RunFailed,
    hook,
    race,
    sleep,
    step,
    workflow,
)

from ..helpers import sql_value, wait_until

GATES: dict[str, asyncio.Event] = {}
CALLS: dict[str, int] = defaultdict(int)
CANCELLED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    CALLS.clear()
    CANCELLED.clear()


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


@step
async def slow(name: str) -> str:
    CALLS[name] += 1
    try:
        await gate(name).wait()
    except asyncio.CancelledError:
        CANCELLED.append(name)
        raise
    return f"{name} done"


@step
async def failing(name: str) -> str:
    raise LookupError(f"{name} not found")


@workflow(name="tests.race.three_way")
async def three_way(token: str, seconds: float) -> list[object]:
    approval = hook(token=token)
    index, value = await race(slow(token), approval.wait(), sleep(seconds))
    return [index, value]


@workflow(name="tests.race.failing_first")
async def failing_first() -> str:
    try:
        await race(failing("x"), sleep(30))
    except LookupError as err:
        return f"caught {err}"
    return "no error"


async def test_the_sleep_wins_and_the_running_step_is_cancelled(engine: Engine) -> None:
    handle = await engine.start(three_way, "r1", 0.2)
    async with engine.worker(workflows=[three_way]):
        assert await handle.result(timeout=10) == [2, None]
    assert CANCELLED == ["r1"]
    # A race records nothing of its own: the sleep's timer is in the log, and
    # outcomes are replayed in the order the run saw them.
    assert [r.kind for r in await handle.log()] == ["hook", "sleep"]
    assert await handle.steps() == []  # the losing step recorded nothing


async def test_the_step_wins(engine: Engine) -> None:
    handle = await engine.start(three_way, "r2", 30)
    gate("r2").set()
    async with engine.worker(workflows=[three_way]):
        assert await handle.result(timeout=10) == [0, "r2 done"]


async def test_the_hook_wins_and_its_payload_is_consumed(engine: Engine, dsn: str) -> None:
    handle = await engine.start(three_way, "r3", 30)
    async with engine.worker(workflows=[three_way]):
        await wait_until(lambda: _async(CALLS["r3"] == 1), message="step running")
        await engine.send("r3", {"approved": True})
        assert await handle.result(timeout=10) == [1, {"approved": True}]
    assert CANCELLED == ["r3"]
    assert sql_value(dsn, "SELECT consumed_seq FROM werkfluss.hook_payloads") is not None


async def test_a_winner_that_raised_makes_race_raise(engine: Engine) -> None:
    handle = await engine.start(failing_first)
    async with engine.worker(workflows=[failing_first]):
        assert await handle.result(timeout=10) == "caught x not found"


async def test_race_outside_a_run_is_a_plain_race() -> None:
    async def after(seconds: float, value: str) -> str:
        await asyncio.sleep(seconds)
        return value

    assert await race(after(5, "slow"), after(0, "fast")) == (1, "fast")
    with pytest.raises(InvalidArgument):
        race()


# --- child runs -------------------------------------------------------------------------


@workflow(name="tests.children.child")
async def child(name: str) -> str:
    if name == "bad":
        raise ValueError("child broke")
    return await slow(name)


@workflow(name="tests.children.parent")
async def parent(names: list[str]) -> list[str]:
    results = []
    for name in names:
        try:
            results.append(await child(name))
        except RunFailed as err:
            results.append(f"failed: {err}")
    return results


@workflow(name="tests.children.impatient")
async def impatient() -> list[object]:
    return list(await race(child("never"), sleep(0.2)))


async def test_a_child_run_has_its_own_id_and_log(engine: Engine) -> None:
    handle = await engine.start(parent, ["a"])
    gate("a").set()
    async with engine.worker(workflows=[parent, child]):
        assert await handle.result(timeout=10) == ["a done"]
    (kid,) = await engine.runs(workflow=child)
    assert kid.run_id == f"{handle.run_id}::1"
    assert kid.parent_id == handle.run_id
    assert kid.status == "completed"
    assert kid.result == "a done"
    assert [s.name for s in await engine.handle(kid.run_id).steps()] == [slow.name]
    assert [(r.kind, r.output) for r in await handle.log()] == [
        ("child", {"run_id": kid.run_id, "status": "completed", "result": "a done"})]


async def test_a_child_failure_raises_run_failed_in_the_parent(engine: Engine) -> None:
    handle = await engine.start(parent, ["bad", "ok"])
    gate("ok").set()
    async with engine.worker(workflows=[parent, child]):
        result = await handle.result(timeout=10)
    assert result == [f"failed: run {handle.run_id}::1 failed: ValueError: child broke", "ok done"]


async def test_replaying_the_parent_does_not_start_the_child_again(engine: Engine, dsn: str) -> None:
    handle = await engine.start(parent, ["slowpoke"])
    async with engine.worker(workflows=[parent, child]):
        await wait_until(lambda: _is(handle, "waiting"), message="parent waiting")
        assert (await handle.info()).waiting_on == f"run:{handle.run_id}::1"
        gate("slowpoke").set()  # the child finishes; the parent is replayed from its log
        assert await handle.result(timeout=10) == ["slowpoke done"]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs WHERE parent_id IS NOT NULL") == 1
    assert CALLS["slowpoke"] == 1


async def test_cancelling_a_waiting_parent_cancels_its_child(engine: Engine) -> None:
    handle = await engine.start(parent, ["stuck"])
    async with engine.worker(workflows=[parent, child]):
        await wait_until(lambda: _async(CALLS["stuck"] == 1), message="child step running")
        await wait_until(lambda: _is(handle, "waiting"), message="parent waiting")
        assert await engine.cancel(handle.run_id) is True
        with pytest.raises(RunCancelled):
            await handle.result(timeout=5)
        kid = engine.handle(f"{handle.run_id}::1")
        with pytest.raises(RunCancelled):
            await kid.result(timeout=5)
        await wait_until(lambda: _async(CANCELLED == ["stuck"]), message="child's step cancelled")


async def test_cancelling_a_child_raises_run_cancelled_in_its_parent(engine: Engine) -> None:
    @workflow(name="tests.children.tolerant")
    async def tolerant() -> str:
        try:
            return await child("doomed")
        except RunCancelled as err:
            return f"child cancelled: {err}"

    handle = await engine.start(tolerant)
    async with engine.worker(workflows=[tolerant, child]):
        await wait_until(lambda: _async(CALLS["doomed"] == 1), message="child step running")
        await engine.cancel(f"{handle.run_id}::1")
        assert await handle.result(timeout=10) == f"child cancelled: run {handle.run_id}::1 was cancelled"


async def test_a_child_that_loses_a_race_is_cancelled(engine: Engine) -> None:
    handle = await engine.start(impatient)
    async with engine.worker(workflows=[impatient, child]):
        assert await handle.result(timeout=10) == [1, None]
        kid = engine.handle(f"{handle.run_id}::1")
        await wait_until(lambda: _is(kid, "cancelled"), message="losing child cancelled")


async def _is(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined,no-any-return]


async def _async(value: object) -> object:
    return value


@workflow(name="tests.children.gather_fails")
async def gather_fails() -> str:
    try:
        await asyncio.gather(child("slow-kid"), failing("now"))
    except LookupError as err:
        return f"failed fast: {err}"
    return "no error"


async def test_a_failing_step_gathered_with_a_child_fails_at_once(engine: Engine) -> None:
    handle = await engine.start(gather_fails)
    async with engine.worker(workflows=[gather_fails, child]):
        assert await handle.result(timeout=10) == "failed fast: now not found"
        kid = engine.handle(f"{handle.run_id}::1")
        await wait_until(lambda: _is(kid, "cancelled"), message="child cancelled with its parent")


@workflow(name="tests.children.napping_parent")
async def napping_parent() -> str:
    task = asyncio.ensure_future(child("left-behind"))
    await sleep(0.05)  # the parent's next claim replays the child's start
    task.cancel()
    return "parent done"


async def test_children_started_in_an_earlier_claim_are_cancelled_when_the_parent_ends(
    engine: Engine,
) -> None:
    handle = await engine.start(napping_parent)
    async with engine.worker(workflows=[napping_parent, child]):
        assert await handle.result(timeout=10) == "parent done"
        kid = engine.handle(f"{handle.run_id}::1")
        await wait_until(lambda: _is(kid, "cancelled"), message="child cancelled with its parent")


async def test_two_runs_claiming_one_token_in_one_batch_cannot_both_own_it(engine: Engine) -> None:
    @workflow(name="tests.children.token_grab")
    async def token_grab() -> object:
        return await hook(token="contested").wait(timeout=30)

    handles = await asyncio.gather(engine.start(token_grab), engine.start(token_grab))
    async with engine.worker(workflows=[token_grab]):
        outcomes = []
        for h in handles:
            try:
                await h.result(timeout=1)
                outcomes.append("completed")
            except RunFailed as err:
                outcomes.append(err.error_type)
            except TimeoutError:
                outcomes.append("waiting")
    assert sorted(outcomes) == ["waiting", "werkfluss.errors.HookConflict"]
