"""Run timeouts and cancellation, whatever the run is doing."""

from __future__ import annotations

import asyncio
import time

import pytest

from werkfluss import Engine, InvalidArgument, RunCancelled, RunFailed, hook, sleep, step, workflow

from ..helpers import run_cli, sql, sql_value, wait_until

GATES: dict[str, asyncio.Event] = {}
CANCELLED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    CANCELLED.clear()


@step
async def blocked(name: str) -> str:
    try:
        await GATES.setdefault(name, asyncio.Event()).wait()
    except asyncio.CancelledError:
        CANCELLED.append(name)
        raise
    return name


@workflow(name="tests.timeouts.sleeper")
async def sleeper(seconds: float) -> str:
    await sleep(seconds)
    return "woke"


@workflow(name="tests.timeouts.busy")
async def busy(name: str) -> str:
    return await blocked(name)


@workflow(name="tests.timeouts.listener")
async def listener(token: str) -> object:
    return await hook(token=token).wait()


@workflow(name="tests.timeouts.parent")
async def parent(name: str) -> str:
    return await busy(name)


async def _timed_out(handle: object, within: float) -> RunFailed:
    started = time.monotonic()
    with pytest.raises(RunFailed) as caught:
        await handle.result(timeout=10)  # type: ignore[attr-defined]
    assert time.monotonic() - started < within
    assert caught.value.error_type == "TimeoutError"
    assert "did not finish by" in caught.value.message
    return caught.value


async def test_a_run_timeout_fires_during_a_sleep(engine: Engine) -> None:
    handle = await engine.start(sleeper, 3600, timeout="300ms")
    async with engine.worker(workflows=[sleeper], poll_interval="60s"):
        await wait_until(lambda: _is(handle, "sleeping"), message="run sleeping")
        await _timed_out(handle, within=5)
    assert await handle.status() == "failed"


async def test_a_run_timeout_cancels_a_running_step(engine: Engine) -> None:
    handle = await engine.start(busy, "stuck-step", timeout=0.3)
    async with engine.worker(workflows=[busy]):
        await _timed_out(handle, within=5)
    assert CANCELLED == ["stuck-step"]
    assert await handle.steps() == []


async def test_a_run_timeout_fires_while_waiting_for_a_hook(engine: Engine) -> None:
    handle = await engine.start(listener, "nobody-answers", timeout="0.3s")
    async with engine.worker(workflows=[listener], poll_interval="60s"):
        await _timed_out(handle, within=5)


async def test_a_timeout_given_in_sql_is_enforced(engine: Engine, dsn: str) -> None:
    run_id = sql_value(dsn, """SELECT werkfluss.start_run('tests.timeouts.sleeper', '[3600]',
                                                          timeout => '0.3 seconds')""")
    async with engine.worker(workflows=[sleeper]):
        await _timed_out(engine.handle(run_id), within=5)


async def test_a_run_past_its_deadline_fails_when_claimed(engine: Engine, dsn: str) -> None:
    handle = await engine.start(sleeper, 0, timeout="1h")
    sql(dsn, "UPDATE werkfluss.runs SET deadline = now() - interval '1 second'")
    async with engine.worker(workflows=[sleeper]):
        await _timed_out(handle, within=5)
    assert await handle.log() == []  # never executed


async def test_a_timed_out_parent_leaves_no_child_running(engine: Engine) -> None:
    handle = await engine.start(parent, "orphan", timeout="0.3s")
    async with engine.worker(workflows=[parent, busy]):
        await _timed_out(handle, within=5)
        kid = engine.handle(f"{handle.run_id}::1")
        with pytest.raises(RunCancelled):
            await kid.result(timeout=5)
        await wait_until(lambda: _async(CANCELLED == ["orphan"]), message="child's step cancelled")


@pytest.mark.parametrize("timeout", [0, "-1s", "soon"])
async def test_a_bad_timeout_is_refused_at_start(engine: Engine, timeout: object) -> None:
    with pytest.raises(InvalidArgument):
        await engine.start(sleeper, 1, timeout=timeout)  # type: ignore[arg-type]
    assert await engine.runs() == []


async def test_cancel_a_sleeping_run(engine: Engine) -> None:
    handle = await engine.start(sleeper, 3600)
    async with engine.worker(workflows=[sleeper]):
        await wait_until(lambda: _is(handle, "sleeping"), message="run sleeping")
        assert await handle.cancel() is True
        with pytest.raises(RunCancelled):
            await handle.result(timeout=5)
    info = await handle.info()
    assert info.status == "cancelled"
    assert info.wake_at is None


async def test_cancel_a_waiting_run_from_the_command_line(engine: Engine, dsn: str) -> None:
    handle = await engine.start(listener, "cli-cancel")
    async with engine.worker(workflows=[listener]):
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
        done = await asyncio.to_thread(run_cli, "cancel", handle.run_id, dsn=dsn)
        assert done.returncode == 0
        assert done.stdout.strip() == "cancelled"
        with pytest.raises(RunCancelled):
            await handle.result(timeout=5)
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0


async def _is(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined,no-any-return]


async def _async(value: object) -> object:
    return value


def test_a_child_started_while_its_parent_is_being_cancelled_is_cancelled_too(dsn: str) -> None:
    import threading

    import psycopg

    from werkfluss.store.queries import QUERIES

    parent = sql_value(dsn, "SELECT werkfluss.start_run('tests.cancel.parent_of_race')")
    lease = sql_value(dsn, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'w'
                               WHERE run_id = %s RETURNING lease_id::text""", [parent])
    starter = psycopg.connect(dsn)  # a worker starting the child, its transaction still open
    starter.execute(QUERIES["start_children"], {
        "run_ids": [parent], "lease_ids": [lease], "seqs": [1], "child_ids": [f"{parent}::1"],
        "workflows": ["tests.cancel.child"], "args": ["[]"], "kwargs": ["{}"], "traceparents": [None],
    })
    result: list[object] = []
    canceller = threading.Thread(
        target=lambda: result.append(sql_value(dsn, "SELECT werkfluss.cancel_run(%s)", [parent])))
    canceller.start()  # waits for the starter's lock on the parent's queue row
    canceller.join(timeout=0.5)
    assert canceller.is_alive()
    starter.commit()
    starter.close()
    canceller.join(timeout=10)
    assert result == [True]
    assert sql(dsn, "SELECT id, status FROM werkfluss.runs ORDER BY id") == [
        (parent, "cancelled"), (f"{parent}::1", "cancelled"),
    ]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0
