"""Durable sleep: the run leaves the worker and comes back when it is due."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from werkfluss import Engine, InvalidArgument, sleep, step, workflow

from ..helpers import sql, sql_value, wait_until

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@step
async def mark(label: str) -> str:
    CALLS.append(label)
    return label


@workflow(name="tests.sleep.nap")
async def nap(seconds: float) -> list[str]:
    before = await mark("before")
    await sleep(seconds)
    after = await mark("after")
    return [before, after]


@workflow(name="tests.sleep.bad_duration")
async def bad_duration(duration: object) -> str:
    try:
        await sleep(duration)  # type: ignore[arg-type]
    except InvalidArgument as err:
        return str(err)
    return "no error"


async def test_a_sleeping_run_leaves_the_worker_and_resumes_when_due(engine: Engine) -> None:
    handle = await engine.start(nap, 0.6)
    async with engine.worker(workflows=[nap], poll_interval="60s") as worker:
        await wait_until(lambda: _is(handle, "sleeping"), message="run sleeping")
        info = await handle.info()
        assert info.wake_at is not None
        assert info.waiting_on is None
        # No coroutine, no slot held while it sleeps.
        await wait_until(lambda: _async(worker.held == 0), message="worker holds nothing")
        assert await handle.result(timeout=10) == ["before", "after"]
        finished = (await handle.info()).finished_at
    assert finished is not None
    assert finished >= info.wake_at
    assert CALLS == ["before", "after"]  # "before" was replayed, not executed again
    kinds = [(r.kind, r.name) for r in await handle.log()]
    assert kinds == [("step", mark.name), ("sleep", "sleep"), ("step", mark.name)]
    assert [s.seq for s in await handle.steps()] == [1, 3]  # steps() has only the steps


async def test_a_due_run_is_picked_up_promptly_without_polling(engine: Engine, dsn: str) -> None:
    handle = await engine.start(nap, 0.3)
    async with engine.worker(workflows=[nap], poll_interval="60s"):
        await handle.result(timeout=10)
    (wake_at,) = [
        dt.datetime.fromisoformat(r.output["wake_at"]) for r in await handle.log() if r.kind == "sleep"
    ]
    (after,) = [s for s in await handle.steps() if s.seq == 3]
    assert after.started_at is not None
    delay = (after.started_at - wake_at).total_seconds()
    assert 0 <= delay < 0.25, f"due run picked up {delay:.3f}s late"


async def test_a_sleeping_run_holds_no_concurrency_slot(engine: Engine) -> None:
    long = await engine.start(nap, 30)
    async with engine.worker(workflows=[nap], concurrency=1):
        await wait_until(lambda: _is(long, "sleeping"), message="first run asleep")
        short = await engine.start(nap, 0)
        assert await short.result(timeout=10) == ["before", "after"]
    assert await long.status() == "sleeping"


async def test_a_sleep_survives_every_worker_stopping(engine: Engine, dsn: str) -> None:
    handle = await engine.start(nap, 0.5)
    async with engine.worker(workflows=[nap]):
        await wait_until(lambda: _is(handle, "sleeping"), message="run sleeping")
    # No worker at all now; wait until the database says the run is due.
    await wait_until(
        lambda: _async(sql_value(dsn, "SELECT available_at <= now() FROM werkfluss.queue")),
        message="run due", timeout=10,
    )
    assert await handle.status() == "sleeping"
    async with engine.worker(workflows=[nap]):
        assert await handle.result(timeout=10) == ["before", "after"]
    assert CALLS == ["before", "after"]


async def test_many_sleeping_runs_cost_a_worker_nothing(engine: Engine, dsn: str) -> None:
    handles = await asyncio.gather(*(engine.start(nap, 3600) for _ in range(300)))
    async with engine.worker(workflows=[nap], concurrency=50) as worker:
        await wait_until(
            lambda: _async(sql_value(dsn, "SELECT count(*) FROM werkfluss.runs WHERE status = 'sleeping'")
                           == 300),
            timeout=30, message="all runs asleep",
        )
        await wait_until(lambda: _async(worker.held == 0), message="worker holds nothing")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE lease_id IS NOT NULL") == 0
    assert len(handles) == 300


def test_bad_durations_raise_at_the_call() -> None:
    with pytest.raises(InvalidArgument, match="must be zero or more"):
        sleep(-1)
    with pytest.raises(InvalidArgument, match="not a duration"):
        sleep("soonish")


async def test_a_bad_duration_inside_a_run_raises_in_the_workflow(engine: Engine) -> None:
    handle = await engine.start(bad_duration, "-5s")
    async with engine.worker(workflows=[bad_duration]):
        assert await handle.result(timeout=10) == "sleep duration '-5s' is not a duration; write e.g. " \
            "'400ms', '30s', '1h30m' or '1 day'"
    assert await handle.log() == []


async def test_sleep_outside_a_run_really_sleeps() -> None:
    started = time.monotonic()
    await sleep("50ms")
    assert time.monotonic() - started >= 0.05


async def test_wake_time_survives_replay(engine: Engine, dsn: str) -> None:
    handle = await engine.start(nap, 2)
    async with engine.worker(workflows=[nap]):
        await wait_until(lambda: _is(handle, "sleeping"), message="run sleeping")
        wake_at = (await handle.info()).wake_at
        # Make the run claimable early: the replay must go back to sleep until
        # the recorded wake-up time, not start a new sleep.
        sql(dsn, "UPDATE werkfluss.queue SET available_at = now(); NOTIFY werkfluss_queue")
        await wait_until(lambda: _async(sql_value(dsn, "SELECT claims FROM werkfluss.queue") == 2),
                         message="claimed early")
        await wait_until(lambda: _is(handle, "sleeping"), message="asleep again")
        assert (await handle.info()).wake_at == wake_at
        assert await handle.result(timeout=10) == ["before", "after"]
    finished = (await handle.info()).finished_at
    assert wake_at is not None
    assert finished is not None
    assert finished >= wake_at


async def _is(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined,no-any-return]


async def _async(value: object) -> object:
    return value


@step
async def unordered() -> dict[str, int]:
    return {"zeta": 1, "a": 2, "mid": 3}


@workflow(name="tests.sleep.key_order")
async def key_order() -> list[str]:
    data = await unordered()
    await sleep(0.05)  # the rest runs as a replay on the next claim
    return [await mark(key) for key in data]


async def test_a_recorded_dict_keeps_its_key_order_on_replay(engine: Engine) -> None:
    handle = await engine.start(key_order)
    async with engine.worker(workflows=[key_order]):
        assert await handle.result(timeout=10) == ["zeta", "a", "mid"]
    assert CALLS == ["zeta", "a", "mid"]
    assert (await handle.steps())[0].output == {"zeta": 1, "a": 2, "mid": 3}
    assert list((await handle.steps())[0].output) == ["zeta", "a", "mid"]
