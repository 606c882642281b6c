"""Retrying failed runs from where they failed; pruning finished runs."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from werkfluss import Engine, RunFailed, hook, step, workflow
from werkfluss.errors import InvalidArgument, RunNotFound

from ..helpers import sql, sql_value

CALLS: Counter[str] = Counter()
BROKEN = {"flaky": True}


@step(name="tests.retry.ok")
async def ok(tag: str) -> str:
    CALLS[tag] += 1
    return tag


@step(name="tests.retry.flaky")
async def flaky(tag: str) -> str:
    CALLS[tag] += 1
    if BROKEN["flaky"]:
        raise ConnectionError("the service is down")
    return tag


@workflow(name="tests.retry.three")
async def three() -> list[str]:
    return [await ok("first"), await flaky("second"), await ok("third")]


@workflow(name="tests.retry.child_flaky")
async def child_flaky() -> str:
    return await flaky("in-child")


@workflow(name="tests.retry.parent")
async def parent() -> list[str]:
    return [await ok("parent-first"), await child_flaky()]


@workflow(name="tests.retry.waits")
async def waits(token: str) -> object:
    return await hook(token=token).wait()


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    BROKEN["flaky"] = True


async def test_a_failed_run_resumes_from_the_failed_step_keeping_completed_ones(engine: Engine) -> None:
    handle = await engine.start(three)
    async with engine.worker(workflows=[three]):
        with pytest.raises(RunFailed):
            await handle.result(timeout=10)
        BROKEN["flaky"] = False
        assert await engine.retry(handle.run_id) is True
        assert await handle.result(timeout=10) == ["first", "second", "third"]
    assert CALLS == {"first": 1, "second": 2, "third": 1}
    steps = await handle.steps()
    assert [(s.seq, s.status) for s in steps] == [(1, "completed"), (2, "completed"), (3, "completed")]


async def test_retrying_a_parent_retries_its_failed_child(engine: Engine) -> None:
    handle = await engine.start(parent)
    async with engine.worker(workflows=[parent, child_flaky]):
        with pytest.raises(RunFailed):
            await handle.result(timeout=10)
        child = engine.handle(f"{handle.run_id}::2")
        assert await child.status() == "failed"
        BROKEN["flaky"] = False
        assert await engine.retry(handle.run_id) is True
        assert await handle.result(timeout=10) == ["parent-first", "in-child"]
    assert await child.status() == "completed"
    assert CALLS["parent-first"] == 1


async def test_a_cancelled_run_resumes_and_a_running_one_is_not_retried(engine: Engine) -> None:
    handle = await engine.start(waits, "retry:token")
    async with engine.worker(workflows=[waits]):
        assert await engine.retry(handle.run_id) is False  # not failed
        assert await engine.cancel(handle.run_id) is True
        assert await engine.retry(handle.run_id) is True
        await engine.send("retry:token", "late")
        assert await handle.result(timeout=10) == "late"


async def test_retry_of_an_unknown_run_is_an_error(engine: Engine) -> None:
    with pytest.raises(RunNotFound):
        await engine.retry("no-such-run")
    with pytest.raises(InvalidArgument):
        await engine.retry("")


async def test_prune_deletes_old_finished_runs_with_their_log_hooks_and_payloads(
    engine: Engine, dsn: str
) -> None:
    done = [await engine.start(three) for _ in range(3)]
    waiting = await engine.start(waits, "prune:token")
    BROKEN["flaky"] = False
    async with engine.worker(workflows=[three, waits]):
        await asyncio.gather(*(h.result(timeout=10) for h in done))
        assert await engine.send("prune:early", 1) == "stored"  # a payload no hook claims
    sql(dsn, "UPDATE werkfluss.runs SET finished_at = now() - interval '20 days'"
             " WHERE finished_at IS NOT NULL")
    sql(dsn, "UPDATE werkfluss.hook_payloads SET received_at = now() - interval '20 days'")
    assert await engine.prune("30d") == 0
    assert await engine.prune("14d", batch_size=2) == 3
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 1  # the waiting run stays
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events WHERE run_id <> %s", [waiting.run_id]) == 0
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads") == 0
    assert await waiting.status() == "waiting"
