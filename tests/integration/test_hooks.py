"""Hooks: payloads from outside, delivered exactly once, never dropped."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from werkfluss import (
    Engine,
    HookConflict,
    HookRefused,
    NotInRunError,
    RunFailed,
    hook,
    step,
    workflow,
)

from ..helpers import run_cli, sql, sql_value, wait_until

GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()


@step
async def hand_out(token: str) -> str:
    return token


@step
async def blocked(name: str) -> str:
    await GATES.setdefault(name, asyncio.Event()).wait()
    return name


@workflow(name="tests.hooks.approval")
async def approval(token: str | None) -> object:
    h = hook(token=token)
    await hand_out(h.token)
    return await h.wait()


@workflow(name="tests.hooks.slow_then_wait")
async def slow_then_wait(token: str) -> object:
    h = hook(token=token)
    await blocked(token)  # still busy when the payload arrives
    return await h.wait()


@workflow(name="tests.hooks.collect")
async def collect(token: str, count: int) -> list[object]:
    h = hook(token=token)
    await hand_out(h.token)
    received = []
    async for payload in h:
        received.append(payload)
        if len(received) == count:
            break
    return received


@workflow(name="tests.hooks.with_timeout")
async def with_timeout(seconds: float) -> str:
    h = hook()
    await hand_out(h.token)
    try:
        await h.wait(timeout=seconds)
    except TimeoutError as err:
        return f"timeout: {err}"
    return "payload"


async def _token_of(handle: object) -> str:
    steps = await handle.steps()  # type: ignore[attr-defined]
    return steps[0].output if steps else ""


async def _status(handle: object) -> str:
    return await handle.status()  # type: ignore[attr-defined,no-any-return]


async def test_a_generated_token_is_unguessable_and_recognizable(engine: Engine) -> None:
    handle = await engine.start(approval, None)
    async with engine.worker(workflows=[approval]):
        token = await wait_until(lambda: _token_of(handle), message="token handed out")
        assert token.startswith("wfh_")
        assert len(token) >= 4 + 43
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
        info = await handle.info()
        assert info.waiting_on == f"hook:{token}"
        await engine.send(token, {"approved": True, "at": dt.date(2026, 11, 26)})
        assert await handle.result(timeout=10) == {"approved": True, "at": dt.date(2026, 11, 26)}
    log = await handle.log()
    assert [(r.kind, r.status) for r in log] == [
        ("hook", "completed"), ("step", "completed"), ("receive", "completed")
    ]


async def test_a_payload_sent_while_no_worker_runs_is_delivered_later(engine: Engine) -> None:
    handle = await engine.start(approval, "order-7:approval")
    async with engine.worker(workflows=[approval]):
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
    await engine.send("order-7:approval", "yes")  # no worker at all now
    assert await handle.status() == "waiting"
    async with engine.worker(workflows=[approval]):
        assert await handle.result(timeout=10) == "yes"


async def test_a_payload_sent_before_the_run_waits_is_kept(engine: Engine) -> None:
    handle = await engine.start(slow_then_wait, "early-bird")
    async with engine.worker(workflows=[slow_then_wait]):
        await wait_until(lambda: _async("early-bird" in GATES), message="step running")
        await engine.send("early-bird", {"n": 1})
        GATES["early-bird"].set()
        assert await handle.result(timeout=10) == {"n": 1}


async def test_a_chosen_token_accepts_one_payload_before_the_hook_exists(engine: Engine, dsn: str) -> None:
    await engine.send("order-9:approval", "first")
    with pytest.raises(HookRefused, match="already waiting for its hook") as refused:
        await engine.send("order-9:approval", "second")
    assert refused.value.reason == "duplicate_early_payload"
    assert sql_value(dsn, "SELECT werkfluss.send('order-9:approval', '\"third\"')") is False
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads") == 1
    handle = await engine.start(approval, "order-9:approval")
    async with engine.worker(workflows=[approval]):
        assert await handle.result(timeout=10) == "first"


async def test_the_same_payload_sent_twice_is_delivered_once(engine: Engine, dsn: str) -> None:
    handle = await engine.start(approval, "twice")
    async with engine.worker(workflows=[approval]):
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
        assert sql_value(dsn, """SELECT werkfluss.send('twice', '{"ok": 1}')""") is True
        assert sql_value(dsn, """SELECT werkfluss.send('twice', '{"ok": 1}')""") is False
        assert await handle.result(timeout=10) == {"ok": 1}
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads") == 1
    with pytest.raises(HookRefused) as refused:
        await engine.send("twice", {"ok": 1})
    assert refused.value.reason == "run_ended"


async def test_a_token_never_issued_is_refused_and_nothing_is_stored(engine: Engine, dsn: str) -> None:
    with pytest.raises(HookRefused, match="no hook was ever issued") as refused:
        await engine.send("wfh_this-was-never-issued", {"x": 1})
    assert refused.value.reason == "unknown_token"
    assert sql_value(dsn, "SELECT werkfluss.send('wfh_nope', 'null')") is False
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads") == 0


async def test_a_hook_of_an_ended_run_refuses(engine: Engine, dsn: str) -> None:
    handle = await engine.start(approval, "ended")
    async with engine.worker(workflows=[approval]):
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
        await engine.cancel(handle.run_id)
    with pytest.raises(HookRefused) as refused:
        await engine.send("ended", 1)
    assert refused.value.reason == "run_ended"
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads") == 0


async def test_iterating_a_hook_receives_many_payloads_in_order(engine: Engine) -> None:
    handle = await engine.start(collect, "stream", 3)
    async with engine.worker(workflows=[collect]):
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
        for n in range(3):
            await engine.send("stream", n)
        assert await handle.result(timeout=10) == [0, 1, 2]
    receives = [r for r in await handle.log() if r.kind == "receive"]
    assert [r.output for r in receives] == [0, 1, 2]


async def test_a_wait_times_out_with_timeout_error(engine: Engine) -> None:
    handle = await engine.start(with_timeout, 0.3)
    async with engine.worker(workflows=[with_timeout]):
        result = await handle.result(timeout=10)
    assert result.startswith("timeout: no payload arrived for hook wfh_")
    assert result.endswith("within 0.3s")


async def test_a_payload_before_the_timeout_wins(engine: Engine) -> None:
    handle = await engine.start(with_timeout, 30)
    async with engine.worker(workflows=[with_timeout]):
        token = await wait_until(lambda: _token_of(handle), message="token handed out")
        await wait_until(lambda: _is(handle, "waiting"), message="run waiting")
        info = await handle.info()
        assert info.wake_at is not None  # waiting on the hook, and on the timeout
        await engine.send(token, None)
        assert await handle.result(timeout=10) == "payload"


async def test_a_chosen_token_belongs_to_one_run(engine: Engine) -> None:
    first = await engine.start(approval, "unique-token")
    async with engine.worker(workflows=[approval]):
        await wait_until(lambda: _is(first, "waiting"), message="first run waiting")
        second = await engine.start(approval, "unique-token")
        with pytest.raises(RunFailed) as caught:
            await second.result(timeout=10)
    assert caught.value.error_type == "werkfluss.errors.HookConflict"
    assert f"already used by run {first.run_id}" in caught.value.message


def test_hook_outside_a_run_is_a_clear_error() -> None:
    with pytest.raises(NotInRunError, match="only inside a workflow run"):
        hook()


def test_send_from_the_command_line(dsn: str) -> None:
    sent = run_cli("send", "cli:hook", '{"approved": true}', dsn=dsn)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "stored; no hook with this token yet"  # no hook yet
    refused = run_cli("send", "cli:hook", "1", dsn=dsn)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "werkfluss: cannot send to hook 'cli:hook': a payload for this token is already waiting "
        "for its hook to be created; only the first one is kept"
    )
    bad = run_cli("send", "cli:hook", "{nope", dsn=dsn)
    assert bad.returncode == 1
    assert "must be a JSON value" in bad.stderr
    assert sql(dsn, "SELECT token, payload::text FROM werkfluss.hook_payloads") == [
        ("cli:hook", '{"approved": true}')
    ]


async def test_hook_conflict_is_a_werkfluss_error() -> None:
    err = HookConflict("t", "run-1")
    assert str(err) == "hook token t is already used by run run-1; choose a token unique to this run"


async def _is(handle: object, status: str) -> bool:
    return await _status(handle) == status


async def _async(value: object) -> object:
    return value
