"""werkfluss.runtime.replay.RunExecution driven without a database, through a fake recorder."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import namedtuple
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from werkfluss import serializer, step, step_info
from werkfluss.errors import (
    DatabaseError,
    FatalError,
    LeaseLost,
    NonDeterminismError,
    SerializationError,
)
from werkfluss.runtime.replay import Outcome, RunExecution, error_record
from werkfluss.runtime.workflows import Workflow
from werkfluss.store.recorder import EventRecord, Lease

RUN_ID = "run-1"


class FakeRecorder:
    """Keeps every appended record; can fail like a lost lease or a dead database."""

    def __init__(self, *, fail_at_seq: int | None = None, error: Exception | None = None) -> None:
        self.records: list[EventRecord] = []
        self.leases: list[Lease] = []
        self._fail_at_seq = fail_at_seq
        self._error = error or LeaseLost("taken over")

    async def append(self, lease: Lease, record: EventRecord) -> None:
        if self._fail_at_seq is not None and record.seq >= self._fail_at_seq:
            raise self._error
        self.leases.append(lease)
        self.records.append(record)

    def by_seq(self) -> dict[int, EventRecord]:
        return {r.seq: r for r in self.records}


def execution(
    fn: Callable[..., Coroutine[Any, Any, Any]],
    *args: Any,
    log: Iterable[dict[str, Any]] = (),
    recorder: FakeRecorder | None = None,
    executor: ThreadPoolExecutor | None = None,
    run_id: str = RUN_ID,
    on_halt: Callable[[RunExecution], None] | None = None,
    **kwargs: Any,
) -> RunExecution:
    # Workflow() without register(): these test workflows stay out of the global registry.
    return RunExecution(
        run_id=run_id,
        workflow=Workflow(fn, f"tests.unit.replay.{fn.__name__}"),
        args=list(args),
        kwargs=kwargs,
        lease=Lease(run_id, "l1"),
        log=list(log),
        recorder=recorder if recorder is not None else FakeRecorder(),
        executor=executor,
        on_halt=on_halt,
    )


def completed(seq: int, name: str, value: Any) -> dict[str, Any]:
    """A log entry as the claim returns it (jsonb already parsed)."""
    return {
        "seq": seq, "kind": "step", "name": name, "status": "completed",
        "output": serializer.encode(value), "error": None,
    }  # fmt: skip


def failed(seq: int, name: str, exc: BaseException) -> dict[str, Any]:
    return {
        "seq": seq, "kind": "step", "name": name, "status": "failed",
        "output": None, "error": error_record(exc),
    }  # fmt: skip


def result_of(outcome: Outcome) -> Any:
    assert outcome.status == "completed", outcome.error
    assert outcome.result is not None
    return serializer.loads(outcome.result)


def error_of(outcome: Outcome) -> dict[str, Any]:
    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error is not None
    error: dict[str, Any] = json.loads(outcome.error)
    return error


class Counter:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


# --- seq numbers ---------------------------------------------------------------------------


async def test_steps_get_seq_numbers_in_call_order() -> None:
    @step(name="double")
    async def double(x: int) -> int:
        return 2 * x

    @step(name="inc")
    def inc(x: int) -> int:
        return x + 1

    async def flow(x: int) -> int:
        a = await double(x)
        b = await inc(a)
        return await double(b)

    recorder = FakeRecorder()
    outcome = await execution(flow, 5, recorder=recorder).run()

    assert result_of(outcome) == 22
    assert [(r.seq, r.name, r.status, r.attempts) for r in recorder.records] == [
        (1, "double", "completed", 1),
        (2, "inc", "completed", 1),
        (3, "double", "completed", 1),
    ]
    assert [json.loads(r.output or "") for r in recorder.records] == [10, 11, 22]
    assert recorder.leases == [Lease(RUN_ID, "l1")] * 3


async def test_step_input_is_recorded_as_args_and_kwargs() -> None:
    @step(name="greet")
    async def greet(name: str, *, punctuation: str) -> str:
        return name + punctuation

    async def flow() -> str:
        return await greet("Ana", punctuation="!")

    recorder = FakeRecorder()
    await execution(flow, recorder=recorder).run()
    record = recorder.records[0]
    assert json.loads(record.input or "") == {"args": ["Ana"], "kwargs": {"punctuation": "!"}}
    assert record.error is None
    assert record.started_at <= record.finished_at


async def test_gather_over_steps_takes_the_seq_at_call_time() -> None:
    second_done = asyncio.Event()

    @step(name="slow")
    async def slow() -> str:
        await second_done.wait()  # finishes only after the step called after it
        return "slow"

    @step(name="fast")
    async def fast() -> str:
        second_done.set()
        return "fast"

    @step(name="after")
    async def after() -> str:
        return "after"

    async def flow() -> list[str]:
        first = slow()  # seq 1
        second = fast()  # seq 2
        results = await asyncio.gather(second, first)  # started in the other order
        return [*results, await after()]

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    assert result_of(outcome) == ["fast", "slow", "after"]
    assert [r.seq for r in recorder.records] == [2, 1, 3]  # committed in completion order
    assert {seq: r.name for seq, r in recorder.by_seq().items()} == {1: "slow", 2: "fast", 3: "after"}


# --- replay ------------------------------------------------------------------------------


async def test_recorded_step_is_not_executed_again_on_replay() -> None:
    calls = Counter()

    @step(name="fetch")
    async def fetch(user_id: str) -> dict[str, Any]:
        calls(user_id)
        return {"id": user_id, "fresh": True}

    async def flow(user_id: str) -> Any:
        return await fetch(user_id)

    recorder = FakeRecorder()
    log = [completed(1, "fetch", {"id": "u1", "fresh": False})]
    outcome = await execution(flow, "u1", log=log, recorder=recorder).run()

    assert calls.calls == []
    assert result_of(outcome) == {"id": "u1", "fresh": False}
    assert recorder.records == []


async def test_replay_returns_recorded_values_with_their_types_and_runs_the_rest_live() -> None:
    calls = Counter()

    @step(name="pair")
    async def pair() -> tuple[int, int]:
        calls("pair")
        return (0, 0)

    @step(name="tail")
    async def tail(values: tuple[int, int]) -> str:
        calls("tail", values)
        return f"{type(values).__name__}:{values[0] + values[1]}"

    async def flow() -> str:
        values = await pair()
        return await tail(values)

    recorder = FakeRecorder()
    outcome = await execution(flow, log=[completed(1, "pair", (3, 4))], recorder=recorder).run()

    assert result_of(outcome) == "tuple:7"
    assert calls.calls == [("tail", (3, 4))]
    assert [(r.seq, r.name) for r in recorder.records] == [(2, "tail")]


async def test_recorded_failed_step_raises_the_same_builtin_exception_on_replay() -> None:
    calls = Counter()

    @step(name="validate")
    async def validate() -> None:
        calls()

    async def flow() -> list[str]:
        try:
            await validate()
        except ValueError as exc:
            return [type(exc).__name__, str(exc)]
        return ["no error"]

    log = [failed(1, "validate", ValueError("bad input"))]
    outcome = await execution(flow, log=log).run()

    assert result_of(outcome) == ["ValueError", "bad input"]
    assert calls.calls == []


async def test_recorded_failed_step_that_is_not_caught_fails_the_run() -> None:
    @step(name="validate")
    async def validate() -> None:
        return None

    async def flow() -> None:
        await validate()

    outcome = await execution(flow, log=[failed(1, "validate", KeyError("missing"))]).run()
    error = error_of(outcome)
    assert error["type"] == "KeyError"
    assert error["message"] == "'missing'"
    assert outcome.error_type == "KeyError"


async def test_live_and_replayed_calls_see_the_same_values() -> None:
    Point = namedtuple("Point", "x y")

    @step(name="values")
    async def values() -> Any:
        return {"point": Point(1, 2), "when": (1, "a"), "ids": [1, 2]}

    async def flow() -> str:
        got = await values()
        return repr(got)

    recorder = FakeRecorder()
    live = result_of(await execution(flow, recorder=recorder).run())
    log = [completed(1, "values", serializer.loads(recorder.records[0].output))]
    replayed = result_of(await execution(flow, log=log).run())

    assert live == replayed == "{'point': (1, 2), 'when': (1, 'a'), 'ids': [1, 2]}"


async def test_live_step_call_returns_the_value_decoded_from_json() -> None:
    shared = {"items": [1, 2]}

    @step(name="config")
    async def config() -> dict[str, Any]:
        return shared

    @step(name="pair")
    async def pair() -> tuple[str, int]:
        return ("a", 1)

    async def flow() -> list[Any]:
        got = await config()
        got["items"].append(3)  # mutating the result must not touch the step's object
        p = await pair()
        return [got is shared, got, type(p).__name__, p]

    outcome = await execution(flow).run()

    assert result_of(outcome) == [False, {"items": [1, 2, 3]}, "tuple", ("a", 1)]
    assert shared == {"items": [1, 2]}


# --- non-determinism ------------------------------------------------------------------------


async def test_a_different_step_at_a_logged_seq_fails_the_run_with_non_determinism() -> None:
    calls = Counter()

    @step(name="fetch")
    async def fetch() -> int:
        calls("fetch")
        return 1

    @step(name="send_sms")
    async def send_sms() -> None:
        calls("send_sms")

    async def flow() -> None:
        await fetch()
        await send_sms()

    log = [completed(1, "fetch", 1), completed(2, "send_email", None)]
    ex = execution(flow, log=log)
    outcome = await ex.run()

    error = error_of(outcome)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert outcome.error_type == "werkfluss.errors.NonDeterminismError"
    assert (
        "at seq 2 the log has step 'send_email' but the workflow called step 'send_sms'" in error["message"]
    )
    assert calls.calls == []
    assert isinstance(ex.nondeterminism, NonDeterminismError)
    assert (ex.nondeterminism.seq, ex.nondeterminism.expected, ex.nondeterminism.actual) == (
        2, "step 'send_email'", "step 'send_sms'",
    )  # fmt: skip


async def test_non_determinism_fails_the_run_even_if_the_workflow_catches_it() -> None:
    calls = Counter()

    @step(name="renamed")
    async def renamed() -> None:
        calls("renamed")

    @step(name="later")
    async def later() -> None:
        calls("later")

    async def flow() -> str:
        try:
            await renamed()
        except Exception:
            pass
        await later()  # must not run on a log that does not match
        return "swallowed"

    recorder = FakeRecorder()
    outcome = await execution(flow, log=[completed(1, "original", 1)], recorder=recorder).run()

    error = error_of(outcome)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "seq 1" in error["message"]
    assert calls.calls == []
    assert recorder.records == []


async def test_non_determinism_wins_over_the_workflows_own_error() -> None:
    @step(name="renamed")
    async def renamed() -> None:
        return None

    async def flow() -> None:
        try:
            await renamed()
        except Exception:
            raise RuntimeError("cleanup failed") from None

    outcome = await execution(flow, log=[completed(1, "original", 1)]).run()
    assert error_of(outcome)["type"] == "werkfluss.errors.NonDeterminismError"


async def test_a_log_with_more_records_than_the_code_makes_fails_with_non_determinism() -> None:
    @step(name="first")
    async def first() -> int:
        return 1

    async def flow() -> str:
        await first()
        return "done"

    log = [completed(1, "first", 1), completed(2, "second", 2)]
    outcome = await execution(flow, log=log).run()

    error = error_of(outcome)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "at seq 2 the log has step 'second'" in error["message"]
    assert "nothing (the workflow returned)" in error["message"]


# --- retries, fatal errors, timeouts ---------------------------------------------------------


async def test_step_failing_twice_then_succeeding_records_three_attempts() -> None:
    attempts_seen: list[int] = []

    @step(retries=2, retry_delay=0, name="flaky")
    async def flaky() -> str:
        attempts_seen.append(step_info().attempt)
        if len(attempts_seen) < 3:
            raise ConnectionError("try again")
        return "ok"

    async def flow() -> str:
        return await flaky()

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    assert result_of(outcome) == "ok"
    assert attempts_seen == [1, 2, 3]
    assert [(r.seq, r.status, r.attempts) for r in recorder.records] == [(1, "completed", 3)]


async def test_step_exhausting_its_retries_is_recorded_failed_after_n_plus_one_attempts() -> None:
    calls = Counter()

    @step(retries=1, retry_delay=0, name="broken")
    async def broken() -> None:
        calls()
        raise ConnectionError("down")

    async def flow() -> None:
        await broken()

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    assert len(calls.calls) == 2
    record = recorder.records[0]
    assert (record.status, record.attempts, record.output) == ("failed", 2, None)
    assert json.loads(record.error or "")["type"] == "ConnectionError"
    assert error_of(outcome)["type"] == "ConnectionError"
    assert error_of(outcome)["message"] == "down"


async def test_fatal_error_is_not_retried() -> None:
    calls = Counter()

    @step(retries=5, retry_delay=0, name="charge")
    async def charge() -> None:
        calls()
        raise FatalError("card is blocked")

    async def flow() -> str:
        try:
            await charge()
        except FatalError as exc:
            return f"fatal: {exc}"
        return "no error"

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    assert result_of(outcome) == "fatal: card is blocked"
    assert len(calls.calls) == 1
    assert recorder.records[0].attempts == 1
    assert json.loads(recorder.records[0].error or "")["type"] == "werkfluss.errors.FatalError"


async def test_async_step_exceeding_its_timeout_fails_with_timeout_error() -> None:
    never = asyncio.Event()

    @step(timeout=0.05, name="hang")
    async def hang() -> None:
        await never.wait()

    async def flow() -> list[str]:
        try:
            await hang()
        except TimeoutError as exc:
            return [type(exc).__name__, str(exc)]
        return ["no timeout"]

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    assert result_of(outcome) == ["TimeoutError", "step hang timed out after 0.05s (attempt 1)"]
    record = recorder.records[0]
    assert (record.status, record.attempts) == ("failed", 1)
    assert json.loads(record.error or "")["type"] == "TimeoutError"


async def test_timed_out_attempts_are_retried() -> None:
    never = asyncio.Event()
    calls = Counter()

    @step(timeout=0.02, retries=1, retry_delay=0, name="hang")
    async def hang() -> None:
        calls()
        await never.wait()

    async def flow() -> None:
        await hang()

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    assert error_of(outcome)["message"] == "step hang timed out after 0.02s (attempt 2)"
    assert len(calls.calls) == 2
    assert recorder.records[0].attempts == 2


async def test_sync_step_exceeding_its_timeout_fails_with_timeout_error() -> None:
    release = threading.Event()

    @step(timeout=0.05, name="blocking")
    def blocking() -> str:
        release.wait(timeout=10)  # released by the test once the timeout was seen
        return "late"

    async def flow() -> str:
        try:
            await blocking()
        except TimeoutError as exc:
            return str(exc)
        return "no timeout"

    executor = ThreadPoolExecutor(max_workers=1)
    try:
        outcome = await execution(flow, executor=executor).run()
    finally:
        release.set()
        executor.shutdown(wait=True)
    assert result_of(outcome) == "step blocking timed out after 0.05s (attempt 1)"


async def test_a_timeout_error_raised_by_the_body_itself_keeps_its_message() -> None:
    @step(timeout=30, name="upstream")
    async def upstream() -> None:
        raise TimeoutError("the upstream API timed out")

    async def flow() -> None:
        await upstream()

    outcome = await execution(flow).run()
    assert error_of(outcome)["message"] == "the upstream API timed out"


async def test_unserializable_step_result_fails_without_retry() -> None:
    calls = Counter()

    @step(retries=3, retry_delay=0, name="opaque")
    async def opaque() -> object:
        calls()
        return {"handle": object()}

    async def flow() -> str:
        try:
            await opaque()
        except SerializationError as exc:
            return str(exc)
        return "stored"

    recorder = FakeRecorder()
    outcome = await execution(flow, recorder=recorder).run()

    message = result_of(outcome)
    assert "cannot serialize the result of step opaque" in message
    assert "['handle']" in message
    assert len(calls.calls) == 1
    record = recorder.records[0]
    assert (record.status, record.attempts, record.output) == ("failed", 1, None)
    assert json.loads(record.error or "")["type"] == "werkfluss.errors.SerializationError"


async def test_unserializable_workflow_result_fails_the_run() -> None:
    async def flow() -> object:
        return object()

    outcome = await execution(flow).run()
    error = error_of(outcome)
    assert error["type"] == "werkfluss.errors.SerializationError"
    assert "the result of workflow tests.unit.replay.flow" in error["message"]


# --- where step bodies run ------------------------------------------------------------------


async def test_sync_step_runs_in_a_thread_and_sees_its_step_info() -> None:
    @step(name="first")
    async def first() -> None:
        return None

    @step(name="where")
    def where() -> dict[str, Any]:
        info = step_info()
        return {
            "in_main_thread": threading.current_thread() is threading.main_thread(),
            "run_id": info.run_id,
            "workflow": info.workflow,
            "step": info.step,
            "seq": info.seq,
            "attempt": info.attempt,
            "key": info.idempotency_key,
        }

    async def flow() -> Any:
        await first()
        return await where()

    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="werkfluss-test")
    try:
        outcome = await execution(flow, run_id="run-42", executor=executor).run()
    finally:
        executor.shutdown(wait=True)

    assert result_of(outcome) == {
        "in_main_thread": False,
        "run_id": "run-42",
        "workflow": "tests.unit.replay.flow",
        "step": "where",
        "seq": 2,
        "attempt": 1,
        "key": "run-42:2",
    }


async def test_idempotency_key_is_the_same_for_every_attempt() -> None:
    keys: list[str] = []

    @step(retries=2, retry_delay=0, name="charge")
    async def charge() -> None:
        keys.append(step_info().idempotency_key)
        if len(keys) < 3:
            raise ConnectionError("retry")

    async def flow() -> None:
        await charge()

    outcome = await execution(flow, run_id="run-9").run()
    assert outcome.status == "completed"
    assert keys == ["run-9:1"] * 3


async def test_step_called_inside_another_step_is_a_plain_call() -> None:
    inner_calls = Counter()

    @step(name="inner")
    async def inner(x: int) -> int:
        inner_calls(x)
        return x * 10

    @step(name="inner_sync")
    def inner_sync(x: int) -> int:
        inner_calls(x)
        return x + 1

    @step(name="outer")
    async def outer(x: int) -> int:
        return inner_sync(await inner(x))

    @step(name="outer_sync")
    def outer_sync(x: int) -> int:
        return inner_sync(x)

    async def flow() -> list[int]:
        return [await outer(2), await outer_sync(5)]

    recorder = FakeRecorder()
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        outcome = await execution(flow, recorder=recorder, executor=executor).run()
    finally:
        executor.shutdown(wait=True)

    assert result_of(outcome) == [21, 6]
    assert inner_calls.calls == [(2,), (20,), (5,)]
    assert [(r.seq, r.name) for r in recorder.records] == [(1, "outer"), (2, "outer_sync")]


# --- the workflow's own outcome ---------------------------------------------------------------


async def test_workflow_raising_value_error_gives_a_failed_outcome_with_its_error() -> None:
    async def explode(order_id: str) -> None:
        raise ValueError(f"order {order_id} is invalid")

    outcome = await execution(explode, "o-7").run()

    error = error_of(outcome)
    assert outcome.error_type == "ValueError"
    assert error["type"] == "ValueError"
    assert error["message"] == "order o-7 is invalid"
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "in explode" in error["traceback"]
    assert error["traceback"].rstrip().endswith("ValueError: order o-7 is invalid")


async def test_workflow_receives_its_args_and_kwargs() -> None:
    async def flow(a: int, b: int, *, label: str) -> str:
        return f"{label}={a + b}"

    outcome = await execution(flow, 1, 2, label="sum").run()
    assert result_of(outcome) == "sum=3"


# --- halting: lost lease, unavailable database, graceful release -------------------------------


async def test_lost_lease_cancels_the_run_and_executes_nothing_more() -> None:
    calls = Counter()
    halted: list[RunExecution] = []

    @step(name="one")
    async def one() -> int:
        calls("one")
        return 1

    @step(name="two")
    async def two() -> int:
        calls("two")
        return 2

    async def flow() -> str:
        try:
            await one()
        except Exception:
            return "swallowed"  # must not be able to swallow the halt
        await two()
        return "done"

    recorder = FakeRecorder(fail_at_seq=1)
    ex = execution(flow, recorder=recorder, on_halt=halted.append)
    with pytest.raises(asyncio.CancelledError):
        await ex.run()

    assert ex.halted == "lease_lost"
    assert halted == [ex]
    assert calls.calls == [("one",)]
    assert recorder.records == []


async def test_database_error_while_recording_abandons_the_run() -> None:
    @step(name="one")
    async def one() -> int:
        return 1

    async def flow() -> int:
        return await one()

    ex = execution(flow, recorder=FakeRecorder(fail_at_seq=1, error=DatabaseError("gone")))
    with pytest.raises(asyncio.CancelledError):
        await ex.run()
    assert ex.halted == "abandoned"


async def test_stopping_releases_the_run_before_the_next_step() -> None:
    calls = Counter()
    holder: dict[str, RunExecution] = {}

    @step(name="one")
    async def one() -> int:
        calls("one")
        holder["execution"].stopping = True  # the worker asks to stop while it runs
        return 1

    @step(name="two")
    async def two() -> int:
        calls("two")
        return 2

    async def flow() -> int:
        return await one() + await two()

    recorder = FakeRecorder()
    ex = holder["execution"] = execution(flow, recorder=recorder)
    with pytest.raises(asyncio.CancelledError):
        await ex.run()

    assert ex.halted == "released"
    assert calls.calls == [("one",)]  # the step in flight finished and was recorded
    assert [(r.seq, r.name) for r in recorder.records] == [(1, "one")]


async def test_stopping_before_the_first_step_executes_nothing() -> None:
    calls = Counter()

    @step(name="one")
    async def one() -> int:
        calls()
        return 1

    async def flow() -> int:
        return await one()

    recorder = FakeRecorder()
    ex = execution(flow, recorder=recorder)
    ex.stopping = True
    with pytest.raises(asyncio.CancelledError):
        await ex.run()
    assert ex.halted == "released"
    assert calls.calls == []
    assert recorder.records == []
