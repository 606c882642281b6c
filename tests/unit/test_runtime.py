"""WorkflowInstance driven by the in-memory Simulation: seqs, replay, non-determinism,
step execution (retries, timeouts, where bodies run) and leaving a worker."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import namedtuple
from typing import Any

import pytest

from werkfluss import step, step_info
from werkfluss.errors import FatalError, NonDeterminismError, RunFailed, SerializationError
from werkfluss.runtime import commands as cmd
from werkfluss.runtime.state import RunState
from werkfluss.testing import Simulation

from .simkit import error_type, executed, failure, finishes, kinds, outputs, rows, since, wf


class Counter:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


class OutOfStock(Exception):
    """A module-level exception: rebuilt with its own class on replay."""

    def __init__(self, sku: str, wanted: int) -> None:
        super().__init__(sku, wanted)
        self.sku = sku
        self.wanted = wanted


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

    sim = Simulation()
    run = sim.start(wf(flow), 5)
    await run.run_steps()

    assert run.result() == 22
    assert [(r.seq, r.name, r.status, r.attempts) for r in run.log] == [
        (1, "double", "completed", 1),
        (2, "inc", "completed", 1),
        (3, "double", "completed", 1),
    ]
    assert outputs(run.log) == [10, 11, 22]
    assert executed(run.commands) == [1, 2, 3]


async def test_step_input_is_recorded_as_args_and_kwargs() -> None:
    @step(name="greet")
    async def greet(name: str, *, punctuation: str) -> str:
        return name + punctuation

    async def flow() -> str:
        return await greet("Ana", punctuation="!")

    run = Simulation().start(wf(flow))
    await run.run_steps()

    record = run.log[0]
    assert json.loads(record.input or "") == {"args": ["Ana"], "kwargs": {"punctuation": "!"}}
    assert record.error is None
    assert record.started_at is not None
    assert record.finished_at is not None
    assert record.started_at <= record.finished_at
    assert run.result() == "Ana!"


def test_gather_over_steps_takes_the_seq_at_call_time() -> None:
    @step(name="slow")
    async def slow() -> str:
        return "slow"

    @step(name="fast")
    async def fast() -> str:
        return "fast"

    @step(name="after")
    async def after() -> str:
        return "after"

    async def flow() -> list[str]:
        first = slow()  # seq 1
        second = fast()  # seq 2
        results = await asyncio.gather(second, first)  # awaited in the other order
        return [*results, await after()]

    sim = Simulation()
    run = sim.start(wf(flow))
    # Both bodies are asked for at once, under the seqs of their calls.
    assert [(c.seq, c.step.name) for c in run.commands if isinstance(c, cmd.ExecuteStep)] == [
        (1, "slow"), (2, "fast"),
    ]  # fmt: skip
    run.complete_step(2, "fast")
    run.complete_step(1, "slow")
    run.complete_step(3, "after")

    assert run.result() == ["fast", "slow", "after"]
    assert [r.seq for r in run.log] == [2, 1, 3]  # committed in the order the outcomes came
    assert {r.seq: r.name for r in run.log} == {1: "slow", 2: "fast", 3: "after"}
    stamps = [r.finished_at for r in run.log]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3  # strictly increasing

    log = list(run.log)
    run.crash()
    assert run.result() == ["fast", "slow", "after"]
    assert run.log == log


# --- replay ------------------------------------------------------------------------------


async def test_recorded_step_is_not_executed_again_on_replay() -> None:
    calls = Counter()

    @step(name="fetch")
    async def fetch(user_id: str) -> dict[str, Any]:
        calls(user_id)
        return {"id": user_id, "fresh": len(calls.calls)}

    @step(name="store")
    async def store(data: dict[str, Any]) -> str:
        calls("store")
        return f"stored {data['fresh']}"

    async def flow(user_id: str) -> Any:
        data = await fetch(user_id)
        return await store(data)

    sim = Simulation()
    run = sim.start(wf(flow), "u1")
    await run.run_steps()
    assert run.result() == "stored 1"
    log = list(run.log)

    mark = len(run.commands)
    run.crash()
    await run.run_steps()
    assert run.result() == "stored 1"
    assert calls.calls == [("u1",), ("store",)]
    assert executed(since(run, mark)) == []
    assert run.log == log


async def test_replay_runs_the_rest_live_after_the_recorded_steps() -> None:
    calls = Counter()

    @step(name="pair")
    async def pair() -> tuple[int, int]:
        calls("pair")
        return (3, 4)

    @step(name="tail")
    async def tail(values: tuple[int, int]) -> str:
        calls("tail", values)
        return f"{type(values).__name__}:{values[0] + values[1]}"

    async def flow() -> str:
        values = await pair()
        return await tail(values)

    sim = Simulation()
    run = sim.start(wf(flow))
    await run.run_step()  # pair only
    assert [r.name for r in run.log] == ["pair"]

    mark = len(run.commands)
    run.crash()  # the worker dies while tail is in flight
    assert executed(since(run, mark)) == [2]  # tail again, pair not
    await run.run_steps()

    assert run.result() == "tuple:7"
    assert calls.calls == [("pair",), ("tail", (3, 4))]
    assert rows(run.log) == [(1, "step", "pair", "completed"), (2, "step", "tail", "completed")]


def test_replayed_values_keep_their_types() -> None:
    Point = namedtuple("Point", "x y")

    @step(name="values")
    async def values() -> Any:
        return None

    async def flow() -> str:
        got = await values()
        return repr(got) + " " + repr(sorted({type(v).__name__ for v in got.values()}))

    sim = Simulation()
    run = sim.start(wf(flow))
    run.complete_step(1, {"point": Point(1, 2), "when": (1, "a"), "ids": [1, 2], "raw": b"\x00"})
    live = run.result()
    run.crash()
    replayed = run.result()

    assert live == replayed
    assert live == (
        "{'point': (1, 2), 'when': (1, 'a'), 'ids': [1, 2], 'raw': b'\\x00'} ['bytes', 'list', 'tuple']"
    )


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

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert run.result() == [False, {"items": [1, 2, 3]}, "tuple", ("a", 1)]
    assert shared == {"items": [1, 2]}


def test_recorded_failed_step_raises_the_same_exception_type_on_replay() -> None:
    @step(name="validate")
    async def validate() -> None:
        return None

    @step(name="reserve")
    async def reserve() -> None:
        return None

    async def flow() -> list[Any]:
        seen: list[Any] = []
        try:
            await validate()
        except ValueError as exc:
            seen += [type(exc).__name__, str(exc)]
        try:
            await reserve()
        except OutOfStock as exc:
            seen += [type(exc).__name__, exc.sku, exc.wanted]
        return seen

    sim = Simulation()
    run = sim.start(wf(flow))
    run.complete_step(1, error=ValueError("bad input"))
    run.complete_step(2, error=OutOfStock("sku-1", 3))
    live = run.result()

    mark = len(run.commands)
    run.crash()
    assert executed(since(run, mark)) == []
    assert run.result() == live == ["ValueError", "bad input", "OutOfStock", "sku-1", 3]
    assert [json.loads(r.error or "{}")["type"] for r in run.log] == [
        "ValueError", "tests.unit.test_runtime.OutOfStock",
    ]  # fmt: skip


def test_recorded_failed_step_that_is_not_caught_fails_the_run_the_same_way_on_replay() -> None:
    @step(name="validate")
    async def validate() -> None:
        return None

    async def flow() -> None:
        await validate()

    sim = Simulation()
    run = sim.start(wf(flow))
    run.complete_step(1, error=KeyError("missing"))
    error = failure(run)
    assert (error["type"], error["message"]) == ("KeyError", "'missing'")
    assert error_type(run) == "KeyError"
    with pytest.raises(RunFailed):
        run.result()

    run.crash()
    replayed = failure(run)
    assert (replayed["type"], replayed["message"]) == ("KeyError", "'missing'")


# --- non-determinism ------------------------------------------------------------------------


def test_a_different_step_at_a_logged_seq_fails_the_run_with_non_determinism() -> None:
    @step(name="fetch")
    async def fetch() -> int:
        return 1

    @step(name="send_email")
    async def send_email() -> None:
        return None

    @step(name="send_sms")
    async def send_sms() -> None:
        return None

    async def flow() -> None:
        await fetch()
        await send_email()

    async def changed() -> None:
        await fetch()
        await send_sms()

    sim = Simulation()
    run = sim.start(wf(flow, "notify"))
    run.complete_step(1, 1)
    run.complete_step(2, None)
    log = list(run.log)

    run.workflow = wf(changed, "notify")  # new code deployed under a running run
    mark = len(run.commands)
    run.crash()

    commands = since(run, mark)
    assert kinds(commands) == ["Finish"]  # fails once; nothing executed, nothing written
    error = failure(run)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert error_type(run) == "werkfluss.errors.NonDeterminismError"
    assert (
        "at seq 2 the log has step 'send_email' but the workflow called step 'send_sms'" in error["message"]
    )
    assert run.instance is not None
    nd = run.instance.nondeterminism
    assert isinstance(nd, NonDeterminismError)
    assert (nd.seq, nd.expected, nd.actual) == (2, "step 'send_email'", "step 'send_sms'")
    assert run.log == log


def test_the_same_step_with_another_input_is_non_determinism() -> None:
    @step(name="charge")
    async def charge(amount: int) -> None:
        return None

    async def flow() -> None:
        await charge(10)

    async def changed() -> None:
        await charge(12)

    sim = Simulation()
    run = sim.start(wf(flow, "pay"))
    run.complete_step(1, None)
    run.workflow = wf(changed, "pay")
    run.crash()

    error = failure(run)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "at seq 1" in error["message"]
    assert '{"args":[10],"kwargs":{}}' in error["message"]
    assert '{"args":[12],"kwargs":{}}' in error["message"]


def test_non_determinism_fails_the_run_even_if_the_workflow_catches_it() -> None:
    @step(name="original")
    async def original() -> int:
        return 1

    @step(name="renamed")
    async def renamed() -> int:
        return 1

    @step(name="later")
    async def later() -> None:
        return None

    async def flow() -> str:
        await original()
        return "done"

    async def changed() -> str:
        try:
            await renamed()
        except Exception:
            pass
        await later()  # must not run on a log that does not match
        return "swallowed"

    sim = Simulation()
    run = sim.start(wf(flow, "f"))
    run.complete_step(1, 1)
    log = list(run.log)

    run.workflow = wf(changed, "f")
    mark = len(run.commands)
    run.crash()

    assert kinds(since(run, mark)) == ["Finish"]
    error = failure(run)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "seq 1" in error["message"]
    assert run.log == log


def test_non_determinism_wins_over_the_workflows_own_error() -> None:
    @step(name="original")
    async def original() -> int:
        return 1

    @step(name="renamed")
    async def renamed() -> int:
        return 1

    async def explode() -> None:
        raise RuntimeError("cleanup failed")

    async def flow() -> None:
        await original()

    async def changed() -> None:
        await asyncio.gather(renamed(), explode())

    sim = Simulation()
    run = sim.start(wf(flow, "f"))
    run.complete_step(1, 1)
    run.workflow = wf(changed, "f")
    mark = len(run.commands)
    run.crash()

    assert len(finishes(since(run, mark))) == 1
    assert failure(run)["type"] == "werkfluss.errors.NonDeterminismError"


def test_a_log_with_more_records_than_the_code_makes_fails_with_non_determinism() -> None:
    @step(name="first")
    async def first() -> int:
        return 1

    @step(name="second")
    async def second() -> int:
        return 2

    async def flow() -> str:
        await first()
        await second()
        return "done"

    async def changed() -> str:
        await first()
        return "done"

    sim = Simulation()
    run = sim.start(wf(flow, "f"))
    run.complete_step(1, 1)
    run.complete_step(2, 2)
    run.workflow = wf(changed, "f")
    run.crash()

    error = failure(run)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "at seq 2 the log has an outcome for step 'second'" in error["message"]
    assert "the workflow returned" in error["message"]


def test_a_log_with_more_call_records_than_the_code_makes_fails_with_non_determinism() -> None:
    @step(name="first")
    async def first() -> int:
        return 1

    async def flow() -> str:
        await first()
        await asyncio.sleep(5)
        return "done"

    async def changed() -> str:
        await first()
        return "done"

    sim = Simulation()
    run = sim.start(wf(flow, "f"))
    run.complete_step(1, 1)
    assert run.status == "sleeping"
    run.workflow = wf(changed, "f")
    run.crash()

    error = failure(run)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "at seq 2 the log has sleep 'sleep'" in error["message"]


def test_code_that_raises_where_the_log_goes_on_fails_with_non_determinism() -> None:
    """The recorded run did not fail there: its log goes on. The replay's own
    error is a symptom of the changed code, not the run's outcome."""

    @step(name="first")
    async def first() -> int:
        return 1

    @step(name="second")
    async def second() -> int:
        return 2

    async def flow() -> str:
        await first()
        await second()
        return "done"

    async def changed() -> str:
        await first()
        raise ValueError("new validation")

    sim = Simulation()
    run = sim.start(wf(flow, "f"))
    run.complete_step(1, 1)
    run.complete_step(2, 2)
    run.workflow = wf(changed, "f")
    run.crash()

    error = failure(run)
    assert error["type"] == "werkfluss.errors.NonDeterminismError"
    assert "at seq 2 the log has an outcome for step 'second'" in error["message"]
    assert "raised ValueError" in error["message"]


# --- retries, fatal errors, timeouts (the executor, through run_steps) -----------------------


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

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert run.result() == "ok"
    assert attempts_seen == [1, 2, 3]
    assert [(r.seq, r.status, r.attempts) for r in run.log] == [(1, "completed", 3)]


async def test_step_exhausting_its_retries_is_recorded_failed_after_n_plus_one_attempts() -> None:
    calls = Counter()

    @step(retries=1, retry_delay=0, name="broken")
    async def broken() -> None:
        calls()
        raise ConnectionError("down")

    async def flow() -> None:
        await broken()

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert len(calls.calls) == 2
    record = run.log[0]
    assert (record.status, record.attempts, record.output) == ("failed", 2, None)
    assert json.loads(record.error or "")["type"] == "ConnectionError"
    assert (failure(run)["type"], failure(run)["message"]) == ("ConnectionError", "down")

    run.crash()  # replayed: the same failure, no attempt more
    assert len(calls.calls) == 2
    assert (failure(run)["type"], failure(run)["message"]) == ("ConnectionError", "down")


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

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert run.result() == "fatal: card is blocked"
    assert len(calls.calls) == 1
    assert run.log[0].attempts == 1
    assert json.loads(run.log[0].error or "")["type"] == "werkfluss.errors.FatalError"
    run.crash()
    assert run.result() == "fatal: card is blocked"


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

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert run.result() == ["TimeoutError", "step hang timed out after 0.05s (attempt 1)"]
    record = run.log[0]
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

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert failure(run)["message"] == "step hang timed out after 0.02s (attempt 2)"
    assert len(calls.calls) == 2
    assert run.log[0].attempts == 2


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

    run = Simulation().start(wf(flow))
    try:
        await run.run_steps()
    finally:
        release.set()
    assert run.result() == "step blocking timed out after 0.05s (attempt 1)"


async def test_a_timeout_error_raised_by_the_body_itself_keeps_its_message() -> None:
    @step(timeout=30, name="upstream")
    async def upstream() -> None:
        raise TimeoutError("the upstream API timed out")

    async def flow() -> None:
        await upstream()

    run = Simulation().start(wf(flow))
    await run.run_steps()
    assert failure(run)["message"] == "the upstream API timed out"


async def test_unserializable_step_result_is_a_failed_attempt() -> None:
    calls = Counter()

    @step(retries=2, retry_delay=0, name="opaque")
    async def opaque() -> object:
        calls()
        return {"handle": object()}

    async def flow() -> str:
        try:
            await opaque()
        except SerializationError as exc:
            return str(exc)
        return "stored"

    run = Simulation().start(wf(flow))
    await run.run_steps()

    message = run.result()
    assert "cannot serialize the result of step opaque" in message
    assert "['handle']" in message
    assert len(calls.calls) == 3  # retried like any other failure
    record = run.log[0]
    assert (record.status, record.attempts, record.output) == ("failed", 3, None)
    assert json.loads(record.error or "")["type"] == "werkfluss.errors.SerializationError"

    run.crash()
    assert run.result() == message
    assert len(calls.calls) == 3


def test_unserializable_workflow_result_fails_the_run() -> None:
    async def flow() -> object:
        return object()

    run = Simulation().start(wf(flow))
    error = failure(run)
    assert error["type"] == "werkfluss.errors.SerializationError"
    assert "the result of workflow tests.unit.flow" in error["message"]


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

    run = Simulation().start(wf(flow, "tests.unit.replay.flow"), run_id="run-42")
    await run.run_steps()

    assert run.result() == {
        "in_main_thread": False,
        "run_id": "run-42",
        "workflow": "tests.unit.replay.flow",
        "step": "where",
        "seq": 2,
        "attempt": 1,
        "key": "run-42:2",
    }


async def test_idempotency_key_is_the_same_for_every_attempt_and_after_a_crash() -> None:
    keys: list[str] = []

    @step(retries=2, retry_delay=0, name="charge")
    async def charge() -> None:
        keys.append(step_info().idempotency_key)
        if len(keys) < 3:
            raise ConnectionError("retry")

    @step(name="prepare")
    async def prepare() -> None:
        return None

    async def flow() -> None:
        await prepare()
        await charge()

    run = Simulation().start(wf(flow), run_id="run-9")
    await run.run_step()
    run.crash()  # charge is issued again by the next worker: same key
    await run.run_steps()

    assert run.status == "completed"
    assert keys == ["run-9:2"] * 3


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

    run = Simulation().start(wf(flow))
    await run.run_steps()

    assert run.result() == [21, 6]
    assert inner_calls.calls == [(2,), (20,), (5,)]
    assert [(r.seq, r.name) for r in run.log] == [(1, "outer"), (2, "outer_sync")]


# --- the workflow's own outcome ---------------------------------------------------------------


def test_workflow_raising_value_error_gives_a_failed_outcome_with_its_error() -> None:
    async def explode(order_id: str) -> None:
        raise ValueError(f"order {order_id} is invalid")

    run = Simulation().start(wf(explode), "o-7")

    error = failure(run)
    assert error_type(run) == "ValueError"
    assert error["type"] == "ValueError"
    assert error["message"] == "order o-7 is invalid"
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "in explode" in error["traceback"]
    assert error["traceback"].rstrip().endswith("ValueError: order o-7 is invalid")


def test_workflow_receives_its_args_and_kwargs() -> None:
    async def flow(a: int, b: int, *, label: str) -> str:
        return f"{label}={a + b}"

    run = Simulation().start(wf(flow), 1, 2, label="sum")
    assert run.result() == "sum=3"
    run.crash()
    assert run.result() == "sum=3"


# --- leaving the worker: lost lease, stopping ----------------------------------------------------


def test_lost_lease_stops_the_run_and_issues_nothing_more() -> None:
    @step(name="one")
    async def one() -> int:
        return 1

    @step(name="two")
    async def two() -> int:
        return 2

    async def flow() -> str:
        try:
            await one()
        except BaseException:
            return "swallowed"  # must not be able to swallow the loss
        await two()
        return "done"

    sim = Simulation()
    run = sim.start(wf(flow))
    instance = run.instance
    assert instance is not None

    assert instance.lost("taken over by another worker") == [cmd.CancelStep(1)]
    assert instance.state is RunState.LOST
    outcome = cmd.StepOutcome(True, "1", None, 1, sim.clock.now())
    assert instance.step_done(1, outcome) == []
    assert instance.tick() == []
    assert instance.add_inputs() == []
    assert instance.stop() == []
    assert instance.lost("again") == []
    assert instance.state is RunState.LOST
    assert run.log == []
    assert run.outcome is None


def test_stopping_releases_the_run_once_its_steps_in_flight_are_recorded() -> None:
    @step(name="one")
    async def one() -> int:
        return 1

    @step(name="two")
    async def two() -> int:
        return 2

    async def flow() -> int:
        return await one() + await two()

    sim = Simulation()
    run = sim.start(wf(flow))
    assert executed(run.commands) == [1]

    mark = len(run.commands)
    run.stop()  # the worker is stopping while one() runs
    assert since(run, mark) == []  # the step in flight goes on
    run.complete_step(1, 1)

    # one() is recorded; two() is held (never started) and the run is handed back
    assert kinds(since(run, mark)) == ["AppendRecord", "Release"]
    assert run.status == "pending"
    assert run.instance is not None
    assert run.instance.state is RunState.RELEASED
    assert rows(run.log) == [(1, "step", "one", "completed")]

    mark = len(run.commands)
    run.resume()  # another worker claims it
    assert executed(since(run, mark)) == [2]
    run.complete_step(2, 2)
    assert run.result() == 3


def test_stopping_waits_for_every_step_in_flight() -> None:
    @step(name="one")
    async def one(x: int) -> int:
        return x

    @step(name="two")
    async def two() -> int:
        return 2

    async def flow() -> int:
        a, b = await asyncio.gather(one(1), one(2))
        return a + b + await two()

    sim = Simulation()
    run = sim.start(wf(flow))
    run.stop()
    run.complete_step(2, 2)
    assert run.status == "running"  # seq 1 is still in flight
    mark = len(run.commands)
    run.complete_step(1, 1)
    assert kinds(since(run, mark)) == ["AppendRecord", "Release"]
    assert executed(since(run, mark)) == []
    run.resume()
    run.complete_step(3, 3)
    assert run.result() == 6


def test_stopping_a_run_that_only_waits_suspends_it() -> None:
    @step(name="one")
    async def one() -> int:
        return 1

    async def flow() -> int:
        await one()
        await asyncio.sleep(60)
        return 1

    sim = Simulation()
    run = sim.start(wf(flow))
    run.stop()
    mark = len(run.commands)
    run.complete_step(1, 1)
    assert kinds(since(run, mark)) == ["AppendRecord", "AppendRecord", "Suspend"]
    assert run.status == "sleeping"


# --- stamps -----------------------------------------------------------------------------------


def test_a_delivery_gets_the_same_stamp_from_a_worker_that_replayed_more_of_the_log() -> None:
    """The stamp of an outcome depends on the clock and the earlier outcomes,
    not on whether the worker wrote the call records before it or read them."""
    from werkfluss import hook, sleep

    async def flow() -> Any:
        await sleep(1)
        return await hook("late").wait()

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.send("late", "early payload")
    sim.clock.advance(1)
    run.tick()  # wakes: creates the hook (a call record) and receives at once
    assert run.result() == "early payload"
    assert [r.kind for r in run.log] == ["sleep", "hook", "receive"]
    original = list(run.log)

    run.crash(keep=2)  # the receive record was lost; the hook record was not
    assert run.result() == "early payload"
    assert run.log[2].finished_at == original[2].finished_at
