"""A worker inside the test process: retries, failures, leases, fencing,
graceful shutdown, cancellation and replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from structlog.testing import capture_logs

from werkfluss import Engine, FatalError, RunCancelled, RunFailed, step, step_info, workflow

from ..helpers import sql, sql_value, wait_until

# Test-controlled gates and counters, shared by steps in this process.
GATES: dict[str, asyncio.Event] = {}
CALLS: dict[str, list[float]] = defaultdict(list)
ACTIVE = {"now": 0, "max": 0}


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    CALLS.clear()
    ACTIVE.update(now=0, max=0)


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


@step
async def wait_gate(name: str) -> str:
    CALLS[f"wait_gate:{name}"].append(time.monotonic())
    await gate(name).wait()
    return name


@step
async def note(label: str) -> str:
    CALLS[f"note:{label}"].append(time.monotonic())
    return label


@workflow(name="tests.worker.two_phase")
async def two_phase(tag: str) -> list[str]:
    first = await wait_gate(tag)
    second = await note(f"{tag}-after")
    return [first, second]


@step(retries=2, retry_delay=0.05, backoff=2.0)
async def flaky(key: str) -> str:
    CALLS[key].append(time.monotonic())
    if len(CALLS[key]) < 3:
        raise ConnectionError(f"attempt {len(CALLS[key])} failed")
    return f"ok after {len(CALLS[key])}"


@step(retries=1, retry_delay=0.01)
async def always_fails(key: str) -> None:
    CALLS[key].append(time.monotonic())
    raise ConnectionError("still down")


@step(retries=5, retry_delay=0.01)
async def fatal(key: str) -> None:
    CALLS[key].append(time.monotonic())
    raise FatalError("card is blocked")


@step(timeout=0.05)
async def too_slow(key: str) -> None:
    CALLS[key].append(time.monotonic())
    await gate(key).wait()


@step
async def unserializable_result() -> object:
    return object()


@workflow(name="tests.worker.failures")
async def failures(kind: str) -> str:
    if kind == "flaky":
        return await flaky("flaky")
    if kind == "exhausted":
        await always_fails("exhausted")
    if kind == "fatal":
        await fatal("fatal")
    if kind == "timeout":
        try:
            await too_slow("timeout")
        except TimeoutError as err:
            return f"caught: {err}"
    if kind == "unserializable":
        await unserializable_result()
    return "unreachable"


async def test_retries_wait_with_exponential_backoff(engine: Engine) -> None:
    handle = await engine.start(failures, "flaky")
    async with engine.worker(workflows=[failures]):
        assert await handle.result(timeout=10) == "ok after 3"
    first, second, third = CALLS["flaky"]
    assert second - first >= 0.05
    assert third - second >= 0.1
    (record,) = await handle.steps()
    assert (record.status, record.attempts) == ("completed", 3)


async def test_a_step_that_exhausts_its_retries_fails_the_run(engine: Engine) -> None:
    handle = await engine.start(failures, "exhausted")
    async with engine.worker(workflows=[failures]):
        with pytest.raises(RunFailed) as caught:
            await handle.result(timeout=10)
    assert caught.value.error_type == "ConnectionError"
    assert caught.value.message == "still down"
    assert len(CALLS["exhausted"]) == 2  # retries=1: two attempts in all
    (record,) = await handle.steps()
    assert (record.status, record.attempts) == ("failed", 2)
    assert record.error is not None
    assert record.error["type"] == "ConnectionError"


async def test_fatal_error_is_not_retried(engine: Engine) -> None:
    handle = await engine.start(failures, "fatal")
    async with engine.worker(workflows=[failures]):
        with pytest.raises(RunFailed, match="werkfluss.errors.FatalError: card is blocked"):
            await handle.result(timeout=10)
    assert len(CALLS["fatal"]) == 1


async def test_a_step_timeout_raises_timeout_error_in_the_workflow(engine: Engine) -> None:
    handle = await engine.start(failures, "timeout")
    async with engine.worker(workflows=[failures]):
        result = await handle.result(timeout=10)
    assert result == f"caught: step {too_slow.name} timed out after 0.05s (attempt 1)"
    (record,) = await handle.steps()
    assert record.status == "failed"
    assert record.error["type"] == "TimeoutError"


async def test_an_unserializable_step_result_fails_the_run_clearly(engine: Engine) -> None:
    handle = await engine.start(failures, "unserializable")
    async with engine.worker(workflows=[failures]):
        with pytest.raises(RunFailed) as caught:
            await handle.result(timeout=10)
    assert caught.value.error_type == "werkfluss.errors.SerializationError"
    assert "the result of step" in caught.value.message
    assert "object" in caught.value.message


async def test_concurrency_limits_runs_in_flight(engine: Engine) -> None:
    @step(name="tests.worker.gauge")
    async def gauge(i: int) -> int:
        ACTIVE["now"] += 1
        ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
        await asyncio.sleep(0.02)  # the work itself, not a wait for a state
        ACTIVE["now"] -= 1
        return i

    @workflow(name="tests.worker.gauged")
    async def gauged(i: int) -> int:
        return await gauge(i)

    handles = [await engine.start(gauged, i) for i in range(12)]
    async with engine.worker(workflows=[gauged], concurrency=3):
        assert [await h.result(timeout=10) for h in handles] == list(range(12))
    assert ACTIVE["max"] == 3


async def test_group_commit_shares_transactions_between_runs(engine: Engine) -> None:
    @workflow(name="tests.worker.tiny")
    async def tiny(i: int) -> str:
        return await note(str(i))

    handles = [await engine.start(tiny, i) for i in range(60)]
    async with engine.worker(workflows=[tiny], concurrency=60) as worker:
        await asyncio.gather(*(h.result(timeout=20) for h in handles))
        assert worker.recorder.records == 60
        assert worker.recorder.batches < 60


async def test_graceful_stop_releases_runs_at_the_next_step_boundary(dsn: str) -> None:
    async with Engine(dsn) as engine:
        handle = await engine.start(two_phase, "release")
        worker = engine.worker(workflows=[two_phase], lease="60s")
        await worker.start()
        await wait_until(lambda: _async(bool(CALLS["wait_gate:release"])), message="step in flight")
        stopping = asyncio.create_task(worker.stop())
        await wait_until(lambda: _async(worker._stopping), message="worker stopping")
        gate("release").set()  # the in-flight step finishes and is recorded
        await stopping
        assert await handle.status() == "pending"
        assert [s.name for s in await handle.steps()] == [wait_gate.name]
        assert sql(dsn, "SELECT lease_id, worker_id FROM werkfluss.queue") == [(None, None)]
        started = time.monotonic()
        async with engine.worker(workflows=[two_phase], lease="60s"):
            assert await handle.result(timeout=10) == ["release", "release-after"]
        assert time.monotonic() - started < 5  # taken at once, not after the 60 s lease
    assert len(CALLS["wait_gate:release"]) == 1
    assert len(CALLS["note:release-after"]) == 1


async def test_an_expired_lease_is_taken_over_and_logged(engine: Engine, dsn: str) -> None:
    handle = await engine.start(two_phase, "takeover")
    # A worker that claimed the run and died: its lease runs out in 0.3 s.
    sql(dsn, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'dead-worker',
                available_at = now() + interval '0.3 seconds', claims = 1""")
    gate("takeover").set()
    with capture_logs() as logs:
        async with engine.worker(workflows=[two_phase], poll_interval="60s"):
            assert await handle.result(timeout=10) == ["takeover", "takeover-after"]
    (taken,) = [e for e in logs if e["event"] == "worker.lease_taken_over"]
    assert taken["run_id"] == handle.run_id
    assert taken["previous_worker_id"] == "dead-worker"
    assert taken["claims"] == 2


async def test_a_worker_whose_lease_was_taken_cannot_record(engine: Engine, dsn: str) -> None:
    handle = await engine.start(two_phase, "fenced")
    with capture_logs() as logs:
        async with engine.worker(workflows=[two_phase]):
            await wait_until(lambda: _async(bool(CALLS["wait_gate:fenced"])), message="step in flight")
            thief = str(uuid.uuid4())
            sql(dsn, """UPDATE werkfluss.queue SET lease_id = %s, worker_id = 'thief',
                        available_at = now() + interval '1 hour'""", [thief])
            gate("fenced").set()
            await wait_until(
                lambda: _async(any(e["event"] == "worker.lease_lost" for e in logs)),
                message="lease_lost logged",
            )
    assert await handle.steps() == []
    assert sql(dsn, "SELECT worker_id, lease_id::text FROM werkfluss.queue") == [("thief", thief)]
    assert await handle.status() == "running"
    assert CALLS["note:fenced-after"] == []


async def test_a_long_step_keeps_its_run_while_the_worker_beats(engine: Engine, dsn: str) -> None:
    @step(name="tests.worker.long")
    async def long_step() -> str:
        CALLS["long"].append(time.monotonic())
        await asyncio.sleep(1.6)  # the work: over three lease lengths
        return "long done"

    @workflow(name="tests.worker.long_run")
    async def long_run() -> str:
        return await long_step()

    handle = await engine.start(long_run)
    async with engine.worker(workflows=[long_run], lease="0.5s"), \
            engine.worker(workflows=[long_run], lease="0.5s", poll_interval="0.05s"):
        assert await handle.result(timeout=10) == "long done"
    assert len(CALLS["long"]) == 1
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events") == 1


async def test_cancelling_a_running_run_stops_its_step_at_once(engine: Engine) -> None:
    handle = await engine.start(two_phase, "cancel-me")
    with capture_logs() as logs:
        async with engine.worker(workflows=[two_phase]) as worker:
            await wait_until(lambda: _async(bool(CALLS["wait_gate:cancel-me"])), message="step in flight")
            assert await engine.cancel(handle.run_id) is True
            with pytest.raises(RunCancelled):
                await handle.result(timeout=5)
            await wait_until(lambda: _async(worker.held == 0), message="worker dropped the run")
    assert await handle.steps() == []
    assert CALLS["note:cancel-me-after"] == []
    assert any(e["event"] == "run.cancelled" and e["run_id"] == handle.run_id for e in logs)


async def test_recorded_steps_are_replayed_not_executed(engine: Engine, dsn: str) -> None:
    handle = await engine.start(two_phase, "replayed")
    # The log of a run that got past its first step on some earlier worker.
    sql(dsn, """INSERT INTO werkfluss.events (run_id, seq, kind, name, status, output)
                VALUES (%s, 1, 'step', %s, 'completed', '"from the log"')""",
        [handle.run_id, wait_gate.name])
    async with engine.worker(workflows=[two_phase]):
        assert await handle.result(timeout=10) == ["from the log", "replayed-after"]
    assert CALLS["wait_gate:replayed"] == []
    assert [s.seq for s in await handle.steps()] == [1, 2]


async def test_a_log_that_does_not_match_the_code_fails_once(engine: Engine, dsn: str) -> None:
    handle = await engine.start(two_phase, "changed")
    sql(dsn, """INSERT INTO werkfluss.events (run_id, seq, kind, name, status, output)
                VALUES (%s, 1, 'step', 'app.removed_step', 'completed', 'null')""", [handle.run_id])
    with capture_logs() as logs:
        async with engine.worker(workflows=[two_phase]):
            with pytest.raises(RunFailed) as caught:
                await handle.result(timeout=10)
    assert caught.value.error_type == "werkfluss.errors.NonDeterminismError"
    assert "at seq 1 the log has step 'app.removed_step'" in caught.value.message
    assert f"the workflow called step '{wait_gate.name}'" in caught.value.message
    assert CALLS["wait_gate:changed"] == []
    # Finished: out of the queue after its first claim, never retried.
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0
    assert any(e["event"] == "run.nondeterminism" for e in logs)


async def test_idempotency_key_is_stable_across_attempts(engine: Engine) -> None:
    keys: list[tuple[str, int]] = []

    @step(name="tests.worker.keyed", retries=2, retry_delay=0.01)
    async def keyed() -> str:
        info = step_info()
        keys.append((info.idempotency_key, info.attempt))
        if info.attempt < 3:
            raise ConnectionError("retry me")
        return info.idempotency_key

    @workflow(name="tests.worker.keyed_run")
    async def keyed_run() -> str:
        await note("first")
        return await keyed()

    handle = await engine.start(keyed_run)
    async with engine.worker(workflows=[keyed_run]):
        assert await handle.result(timeout=10) == f"{handle.run_id}:2"
    assert keys == [(f"{handle.run_id}:2", 1), (f"{handle.run_id}:2", 2), (f"{handle.run_id}:2", 3)]


async def test_listener_reconnects_after_its_connection_is_killed(engine: Engine, dsn: str) -> None:
    gate("relisten").set()
    async with engine.worker(workflows=[two_phase], poll_interval="60s"):
        listener = engine._listener
        assert listener is not None
        killed = sql_value(dsn, """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                                    WHERE datname = current_database() AND query LIKE 'LISTEN%%'""")
        assert killed == 1
        await wait_until(lambda: _async(listener.reconnects >= 1 and listener.connected),
                         message="listener reconnected")
        handle = await engine.start(two_phase, "relisten")
        # With a 60 s poll, only NOTIFY on the new connection can wake the worker this fast.
        assert await handle.result(timeout=5) == ["relisten", "relisten-after"]


async def test_runs_survive_their_connections_being_killed(dsn: str) -> None:
    async with Engine(dsn) as engine:
        handles = [await engine.start(two_phase, f"cut-{i}") for i in range(4)]
        async with engine.worker(workflows=[two_phase], lease="1s"):
            await wait_until(
                lambda: _async(all(CALLS[f"wait_gate:cut-{i}"] for i in range(4))),
                message="steps in flight",
            )
            sql(dsn, """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = current_database() AND application_name LIKE 'werkfluss%'""")
            for i in range(4):
                gate(f"cut-{i}").set()
            results = await asyncio.gather(*(h.result(timeout=20) for h in handles))
        assert results == [[f"cut-{i}", f"cut-{i}-after"] for i in range(4)]
        for h in handles:
            assert [s.seq for s in await h.steps()] == [1, 2]


async def _async(value: object) -> object:
    return value
