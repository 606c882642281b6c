"""asyncio inside a workflow is deterministic: combinators over durable calls come
out the same live and on every replay, timers are durable, and what cannot be
replayed (I/O, plain futures) is refused.

Order-sensitive cases finish steps in a chosen order, crash, replay, and
check that the run reaches the same outcome with the same log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from werkfluss import hook, now, race, sleep, step, uuid4
from werkfluss.errors import RunFailed, WorkflowSandboxError
from werkfluss.runtime import commands as cmd
from werkfluss.testing import SimulatedRun, Simulation

from .simkit import (
    cancelled,
    error_type,
    executed,
    failure,
    finishes,
    kinds,
    outcome_key,
    outputs,
    rows,
    same_log,
    since,
    suspensions,
    wf,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@step(name="work")
async def work(x: int) -> int:
    return x * 10


@step(name="other")
async def other(x: int) -> int:
    return x


async def kid(x: int) -> int:
    return x


KID = wf(kid, "tests.unit.kid")


def finish(run: SimulatedRun, *seqs: int, fail: set[int] | None = None) -> None:
    """Complete the steps at ``seqs`` in this order: ``work(x)`` gives ``10 * x``."""
    for seq in seqs:
        command = run.steps_in_flight[seq]
        if fail and seq in fail:
            run.complete_step(seq, error=ValueError(f"step {seq} failed"))
        else:
            run.complete_step(seq, command.args[0] * 10)


def replays_the_same(run: SimulatedRun) -> None:
    """Crash the run after it ended: the replay reaches the same outcome, writes
    nothing new and executes no step body."""
    assert run.outcome is not None, f"run {run.run_id} has not finished (status: {run.status})"
    log, outcome = list(run.log), run.outcome
    mark = len(run.commands)
    run.crash()
    assert run.instance is not None
    assert run.instance.nondeterminism is None
    assert outcome_key(run.outcome) == outcome_key(outcome)
    assert same_log(run.log, log)
    assert not [c for c in since(run, mark) if isinstance(c, cmd.AppendRecord)]
    assert run.steps_in_flight == {}  # a step issued again on replay is cancelled in the same batch
    assert kinds(since(run, mark))[-1] == "Finish"


# --- gather ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [(1, 2, 3), (3, 1, 2), (2, 3, 1)])
def test_gather_returns_results_in_argument_order_whatever_order_steps_finish(
    order: tuple[int, ...],
) -> None:
    async def flow() -> list[int]:
        return list(await asyncio.gather(work(1), work(2), work(3)))

    run = Simulation().start(wf(flow))
    assert executed(run.commands) == [1, 2, 3]
    finish(run, *order)

    assert run.result() == [10, 20, 30]
    assert [r.seq for r in run.log] == list(order)
    replays_the_same(run)


def test_gather_raises_the_first_failure_and_replays_it() -> None:
    async def flow() -> Any:
        try:
            return await asyncio.gather(work(1), work(2), work(3))
        except ValueError as exc:
            return f"failed: {exc}"

    run = Simulation().start(wf(flow))
    finish(run, 3, 2, fail={2})

    assert run.result() == "failed: step 2 failed"
    assert rows(run.log) == [(3, "step", "work", "completed"), (2, "step", "work", "failed")]
    assert cancelled(run.commands) == [1]  # the workflow returned: its last step is not wanted
    replays_the_same(run)


def test_gather_after_a_crash_in_the_middle_reaches_the_same_outcome() -> None:
    async def flow() -> list[int]:
        return list(await asyncio.gather(work(1), work(2), work(3)))

    straight = Simulation().start(wf(flow))
    finish(straight, 3, 1, 2)

    run = Simulation().start(wf(flow))
    finish(run, 3)
    mark = len(run.commands)
    run.crash()
    assert executed(since(run, mark)) == [1, 2]  # the ones in flight, again; not seq 3
    finish(run, 1, 2)

    assert run.result() == straight.result()
    assert same_log(run.log, straight.log)


# --- asyncio.wait, as_completed ------------------------------------------------------------


@pytest.mark.parametrize(("first", "loser"), [(1, 2), (2, 1)])
def test_wait_first_completed_picks_the_step_that_finished_first(first: int, loser: int) -> None:
    async def flow() -> list[int]:
        tasks = [asyncio.ensure_future(work(1)), asyncio.ensure_future(work(2))]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return [task.result() for task in done]

    run = Simulation().start(wf(flow))
    finish(run, first)

    assert run.result() == [first * 10]
    assert [r.seq for r in run.log] == [first]  # the loser is not recorded ...
    assert cancelled(run.commands) == [loser]  # ... and its body is cancelled
    replays_the_same(run)


def test_wait_first_completed_after_a_crash_picks_the_same_winner() -> None:
    async def flow() -> list[int]:
        tasks = [asyncio.ensure_future(work(1)), asyncio.ensure_future(work(2))]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return [task.result() for task in done]

    run = Simulation().start(wf(flow))
    run.crash()  # both in flight: both issued again
    assert sorted(run.steps_in_flight) == [1, 2]
    finish(run, 2)
    assert run.result() == [20]
    replays_the_same(run)


@pytest.mark.parametrize("order", [(3, 1, 2), (1, 2, 3), (2, 3, 1)])
def test_as_completed_yields_in_the_order_steps_finished(order: tuple[int, ...]) -> None:
    async def flow() -> list[int]:
        return [await c for c in asyncio.as_completed([work(1), work(2), work(3)])]

    run = Simulation().start(wf(flow))
    finish(run, *order)

    assert run.result() == [10 * seq for seq in order]
    replays_the_same(run)


def test_as_completed_with_a_step_called_between_arrivals() -> None:
    """Each arrival leads to a new step; its seq depends on the order of arrivals."""

    async def flow() -> list[int]:
        seen = []
        for c in asyncio.as_completed([work(1), work(2)]):
            value = await c
            seen.append(await other(value))
        return seen

    run = Simulation().start(wf(flow))
    finish(run, 2)  # seq 3 = other(20)
    run.complete_step(3, 20)
    finish(run, 1)  # seq 4 = other(10)
    run.complete_step(4, 10)

    assert run.result() == [20, 10]
    assert [(r.seq, r.name, json.loads(r.input or "{}")["args"]) for r in run.log] == [
        (2, "work", [2]), (3, "other", [20]), (1, "work", [1]), (4, "other", [10]),
    ]  # fmt: skip
    replays_the_same(run)


@pytest.mark.xfail(strict=False, raises=RunFailed, reason=(
    "asyncio.as_completed builds its tasks from set(fs): over coroutines that make their "
    "durable calls when they start, the calls take seqs in an order set by memory addresses, "
    "so a replay fails with NonDeterminismError (unless the addresses happen to fall in order)"
))
def test_as_completed_over_coroutines_takes_the_same_seqs_on_every_replay() -> None:
    async def chain(x: int) -> int:
        return await work(x)  # the step's seq is taken when this coroutine starts

    async def flow() -> list[int]:
        return [await c for c in asyncio.as_completed([chain(1), chain(2), chain(3), chain(4)])]

    run = Simulation().start(wf(flow))
    finish(run, *sorted(run.steps_in_flight))
    result = run.result()
    keep = []
    for attempt in range(30):  # other memory layouts, other set orders
        keep.append([object() for _ in range(attempt * 37)])
        run.crash()
        assert run.result() == result


def test_as_completed_over_tasks_created_in_order_replays_the_same() -> None:
    """The way around the set inside as_completed: make the tasks first, in order."""

    async def chain(x: int) -> int:
        return await work(x)

    async def flow() -> list[int]:
        tasks = [asyncio.ensure_future(chain(x)) for x in (1, 2, 3, 4)]
        return [await c for c in asyncio.as_completed(tasks)]

    run = Simulation().start(wf(flow))
    assert [c.args for c in run.commands if isinstance(c, cmd.ExecuteStep)] == [(1,), (2,), (3,), (4,)]
    finish(run, 3, 1, 4, 2)
    assert run.result() == [30, 10, 40, 20]
    keep = []
    for attempt in range(10):
        keep.append([object() for _ in range(attempt * 37)])
        replays_the_same(run)


# --- wait_for, timeouts, shield ------------------------------------------------------------


async def _work_within(seconds: float) -> Any:
    try:
        return await asyncio.wait_for(work(1), seconds)
    except TimeoutError:
        return "timeout"


def test_wait_for_gives_the_result_that_comes_before_the_timeout() -> None:
    async def flow() -> Any:
        return await _work_within(5)

    sim = Simulation()
    run = sim.start(wf(flow))
    assert suspensions(run.commands) == []  # a step in flight: the run stays
    sleeps = [r for r in run.log if r.kind == "sleep"]
    assert len(sleeps) == 1  # the timeout is a durable timer, recorded
    assert json.loads(sleeps[0].output or "{}") == {"wake_at": (T0 + dt.timedelta(seconds=5)).isoformat()}

    sim.clock.advance(1)
    finish(run, 1)
    assert run.result() == 10
    replays_the_same(run)


def test_wait_for_times_out_on_its_durable_timer() -> None:
    async def flow() -> Any:
        return await _work_within(5)

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(4.9)
    run.tick()
    assert run.status == "running"
    sim.clock.advance(0.1)
    run.tick()

    assert run.result() == "timeout"
    assert cancelled(run.commands) == [1]
    assert [r.kind for r in run.log] == ["sleep"]
    replays_the_same(run)


def test_wait_for_keeps_its_recorded_deadline_across_a_crash() -> None:
    async def flow() -> Any:
        return await _work_within(5)

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(3)
    run.crash()  # a new worker at t=3: the timeout stays at t=5, not 3+5
    assert run.instance is not None
    assert run.instance.next_wake() == T0 + dt.timedelta(seconds=5)
    sim.clock.advance(2)
    run.tick()
    assert run.result() == "timeout"


def test_a_timeout_and_a_result_at_the_same_moment_come_out_the_same_on_replay() -> None:
    async def flow() -> Any:
        return await _work_within(5)

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(5)  # the timer is due, but the worker has not ticked yet
    finish(run, 1)  # the step's outcome comes first: timers due by then fire first
    outcome = run.result()
    assert outcome == "timeout"
    assert [r.kind for r in run.log] == ["sleep"]
    replays_the_same(run)


def test_shield_keeps_the_step_running_when_the_timeout_fires() -> None:
    async def flow() -> Any:
        task = asyncio.ensure_future(work(1))
        try:
            return await asyncio.wait_for(asyncio.shield(task), 1)
        except TimeoutError:
            return ["late", await task]

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(2)
    run.tick()
    assert 1 in run.steps_in_flight  # not cancelled
    finish(run, 1)

    assert run.result() == ["late", 10]
    assert cancelled(run.commands) == []
    assert [r.kind for r in run.log] == ["sleep", "step"]
    replays_the_same(run)


# --- TaskGroup -----------------------------------------------------------------------------


async def _task_group() -> Any:
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(work(x)) for x in (1, 2, 3)]
    except ExceptionGroup as group:
        return ["failed", [str(e) for e in group.exceptions]]
    return [t.result() for t in tasks]


def test_task_group_first_error_cancels_the_rest() -> None:
    async def flow() -> Any:
        return await _task_group()

    run = Simulation().start(wf(flow))
    finish(run, 2, fail={2})

    assert run.result() == ["failed", ["step 2 failed"]]
    assert sorted(cancelled(run.commands)) == [1, 3]
    assert rows(run.log) == [(2, "step", "work", "failed")]
    replays_the_same(run)


def test_task_group_error_after_a_success_replays_the_same() -> None:
    async def flow() -> Any:
        return await _task_group()

    run = Simulation().start(wf(flow))
    finish(run, 3)
    finish(run, 1, fail={1})

    assert run.result() == ["failed", ["step 1 failed"]]
    assert cancelled(run.commands) == [2]
    assert [r.seq for r in run.log] == [3, 1]
    replays_the_same(run)


def test_task_group_all_succeed() -> None:
    async def flow() -> Any:
        return await _task_group()

    run = Simulation().start(wf(flow))
    finish(run, 3, 2, 1)
    assert run.result() == [10, 20, 30]
    replays_the_same(run)


def test_task_group_cancels_the_rest_in_the_same_order_on_every_replay() -> None:
    async def guarded(x: int) -> int:
        try:
            return await work(x)
        except asyncio.CancelledError:
            await asyncio.shield(other(x))  # compensate, then let the cancellation go on
            raise

    async def flow() -> Any:
        try:
            async with asyncio.TaskGroup() as tg:
                for x in (1, 2, 3, 4):
                    tg.create_task(guarded(x))
        except ExceptionGroup:
            return "failed"
        return "done"

    run = Simulation().start(wf(flow))
    finish(run, 1, fail={1})
    for seq in sorted(run.steps_in_flight):
        run.complete_step(seq, 0)
    assert run.result() == "failed"
    keep = []
    for attempt in range(30):  # other memory layouts, other set orders
        keep.append([object() for _ in range(attempt * 37)])
        run.crash()
        assert run.result() == "failed"


# --- sleep is durable ----------------------------------------------------------------------


@pytest.mark.parametrize("sleeper", [asyncio.sleep, sleep], ids=["asyncio.sleep", "werkfluss.sleep"])
def test_sleep_in_a_workflow_suspends_the_run_until_its_wake_time(sleeper: Callable[[float], Any]) -> None:
    async def flow() -> str:
        await sleeper(30)
        return "awake"

    sim = Simulation()
    run = sim.start(wf(flow))
    wake = T0 + dt.timedelta(seconds=30)
    assert suspensions(run.commands) == [cmd.Suspend("sleeping", wake, ())]
    assert run.status == "sleeping"
    assert rows(run.log) == [(1, "sleep", "sleep", "completed")]
    assert json.loads(run.log[0].input or "{}") == {"seconds": 30.0}

    sim.clock.advance(10)
    run.crash()  # another worker picks it up early: same wake time, not t+30
    assert run.suspension == cmd.Suspend("sleeping", wake, ())
    sim.clock.advance(19)
    run.tick()
    assert run.status == "sleeping"
    sim.clock.advance(1)
    run.tick()
    assert run.result() == "awake"
    replays_the_same(run)


def test_sleep_between_steps_starts_when_it_is_called() -> None:
    async def flow() -> int:
        a = await work(1)
        await asyncio.sleep(60)
        return a + await work(2)

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(5)
    finish(run, 1)
    assert run.suspension is not None
    assert run.suspension.wake_at == T0 + dt.timedelta(seconds=65)
    sim.clock.advance(60)
    run.tick()
    finish(run, 3)
    assert run.result() == 30
    replays_the_same(run)


# --- race ----------------------------------------------------------------------------------


def test_race_step_against_a_timer_step_wins() -> None:
    async def flow() -> Any:
        return list(await race(work(1), sleep(5)))

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(1)
    finish(run, 1)
    assert run.result() == [0, 10]
    assert run.instance is not None
    assert run.instance.next_wake() is None  # the losing timer is gone
    replays_the_same(run)


def test_race_step_against_a_timer_timer_wins() -> None:
    async def flow() -> Any:
        return list(await race(work(1), sleep(5)))

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(5)
    run.tick()
    assert run.result() == [1, None]
    assert cancelled(run.commands) == [1]
    assert [r.kind for r in run.log] == ["sleep"]
    replays_the_same(run)


@pytest.mark.parametrize(("first", "index"), [(1, 0), (2, 1)])
def test_race_between_steps_replays_to_the_recorded_winner(first: int, index: int) -> None:
    async def flow() -> Any:
        winner, value = await race(work(1), work(2))
        return [winner, value, await other(winner)]

    run = Simulation().start(wf(flow))
    finish(run, first)
    run.complete_step(3, index)
    assert run.result() == [index, first * 10, index]
    replays_the_same(run)


def test_race_between_a_hook_and_a_step_hook_wins() -> None:
    async def flow() -> Any:
        approval = hook("order-1")
        return list(await race(approval.wait(), work(1)))

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.send("order-1", {"ok": True})
    assert run.result() == [0, {"ok": True}]
    assert cancelled(run.commands) == [3]
    assert [r.kind for r in run.log] == ["hook", "receive"]
    replays_the_same(run)


def test_race_losing_hook_wait_leaves_the_payload_for_a_later_wait() -> None:
    async def flow() -> Any:
        approval = hook("order-2")
        first = list(await race(work(1), approval.wait()))
        return [first, await approval.wait()]

    sim = Simulation()
    run = sim.start(wf(flow))
    finish(run, 2)  # the step wins
    sim.send("order-2", "yes")
    assert run.result() == [[0, 10], "yes"]
    replays_the_same(run)


def test_race_whose_winner_failed_raises_its_error() -> None:
    async def flow() -> Any:
        try:
            await race(work(1), work(2))
        except ValueError as exc:
            return str(exc)
        return "no error"

    run = Simulation().start(wf(flow))
    finish(run, 2, fail={2})
    assert run.result() == "step 2 failed"
    assert cancelled(run.commands) == [1]
    replays_the_same(run)


# --- hooks and child runs ----------------------------------------------------------------------


def test_hook_payloads_sent_early_are_received_in_order_and_replayed() -> None:
    async def flow() -> Any:
        h = hook("feed", multi=True)
        await work(1)
        return [await h.wait(), await h.wait()]

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.send("feed", "a")  # while the step runs
    sim.send("feed", "b")
    finish(run, 2)
    assert run.result() == ["a", "b"]
    receives = [r for r in run.log if r.kind == "receive"]
    assert [json.loads(r.output or "") for r in receives] == ["a", "b"]
    assert len({r.consumes for r in receives}) == 2
    replays_the_same(run)


def test_child_run_outcomes_are_recorded_and_replayed() -> None:
    async def flow() -> Any:
        first = await KID(1)
        try:
            await KID(2)
        except RunFailed as exc:
            return [first, exc.error_type]
        return [first, "no error"]

    sim = Simulation()
    run = sim.start(wf(flow))
    assert run.suspension == cmd.Suspend("waiting", None, ("run:run-1::1",))
    sim.finish_child("run-1::1", 7)
    sim.finish_child("run-1::2", error=KeyError("gone"))
    assert run.result() == [7, "KeyError"]
    assert outputs(run.log) == [
        {"run_id": "run-1::1", "status": "completed", "result": 7},
        {"run_id": "run-1::2", "status": "failed"},
    ]
    replays_the_same(run)


# --- now() and uuid4() ---------------------------------------------------------------------


def test_now_and_uuid4_return_their_recorded_values_on_replay() -> None:
    async def flow() -> Any:
        await work(1)
        return [now().isoformat(), str(uuid4())]

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(3)
    finish(run, 1)
    when, ident = run.result()
    assert when == (T0 + dt.timedelta(seconds=3)).isoformat()
    assert uuid.UUID(ident).version == 4
    assert [r.kind for r in run.log] == ["step", "now", "uuid"]

    sim.clock.advance(100)  # a later replay sees the recorded values, not new ones
    replays_the_same(run)
    assert run.result() == [when, ident]


def test_now_is_the_time_of_the_event_the_workflow_is_processing() -> None:
    async def flow() -> Any:
        seen = [now()]
        await sleep(10)
        seen.append(now())
        return [t.isoformat() for t in seen]

    sim = Simulation()
    run = sim.start(wf(flow))
    sim.clock.advance(25)  # the worker comes late
    run.tick()
    start, woke = run.result()
    assert start == T0.isoformat()
    assert woke == (T0 + dt.timedelta(seconds=25)).isoformat()
    replays_the_same(run)


# --- what workflow code must not do --------------------------------------------------------------


async def _open_connection() -> None:
    await asyncio.open_connection("localhost", 1)


async def _to_thread() -> None:
    await asyncio.to_thread(print, "hello")


async def _subprocess() -> None:
    await asyncio.create_subprocess_exec("true")


async def _getaddrinfo() -> None:
    await asyncio.get_running_loop().getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (_open_connection, "open network connections"),
        (_to_thread, "run functions in threads"),
        (_subprocess, "start subprocesses"),
        (_getaddrinfo, "resolve host names"),
    ],
)
def test_io_in_workflow_code_raises_workflow_sandbox_error(body: Callable[[], Any], what: str) -> None:
    async def flow() -> None:
        await body()

    run = Simulation().start(wf(flow))
    error = failure(run)
    assert error["type"] == "werkfluss.errors.WorkflowSandboxError"
    assert what in error["message"]
    assert "inside a @step" in error["message"]


def test_workflow_code_may_catch_the_sandbox_error() -> None:
    async def flow() -> str:
        try:
            await _to_thread()
        except WorkflowSandboxError:
            return "refused"
        return "ran"

    run = Simulation().start(wf(flow))
    assert run.result() == "refused"


# --- what the run does when the loop is idle ------------------------------------------------------


def test_awaiting_a_plain_future_nobody_resolves_fails_the_run_as_blocked() -> None:
    async def flow() -> None:
        await asyncio.get_running_loop().create_future()

    run = Simulation().start(wf(flow))
    assert error_type(run) == "werkfluss.errors.WorkflowBlocked"
    assert "awaits something that no durable event can resolve" in failure(run)["message"]


def test_an_event_nobody_sets_blocks_only_once_the_steps_in_flight_are_done() -> None:
    async def flow() -> None:
        event = asyncio.Event()
        await asyncio.gather(work(1), event.wait())

    run = Simulation().start(wf(flow))
    assert run.status == "running"  # a step is in flight: its outcome may set things
    assert finishes(run.commands) == []
    finish(run, 1)
    assert error_type(run) == "werkfluss.errors.WorkflowBlocked"


def test_only_a_timer_outstanding_suspends_the_run_sleeping() -> None:
    async def flow() -> None:
        await asyncio.gather(work(1), sleep(30))

    sim = Simulation()
    run = sim.start(wf(flow))
    assert suspensions(run.commands) == []  # the step is in flight
    sim.clock.advance(2)
    finish(run, 1)
    assert suspensions(run.commands) == [cmd.Suspend("sleeping", T0 + dt.timedelta(seconds=30), ())]


def test_a_hook_wait_suspends_the_run_waiting_on_its_event() -> None:
    async def flow() -> Any:
        return await hook("t-1").wait()

    sim = Simulation()
    run = sim.start(wf(flow))
    assert run.suspension == cmd.Suspend("waiting", None, ("hook:t-1",))
    sim.send("t-1", 5)
    assert run.result() == 5


def test_a_hook_wait_with_a_timeout_suspends_with_its_wake_time_and_event() -> None:
    async def flow() -> Any:
        try:
            return await hook("t-2").wait(timeout=60)
        except TimeoutError:
            return "nobody answered"

    sim = Simulation()
    run = sim.start(wf(flow))
    assert run.suspension == cmd.Suspend("waiting", T0 + dt.timedelta(seconds=60), ("hook:t-2",))
    sim.clock.advance(60)
    run.tick()
    assert run.result() == "nobody answered"
    replays_the_same(run)


def test_several_passive_waits_suspend_on_all_of_them_at_once() -> None:
    async def flow() -> Any:
        return await asyncio.gather(hook("t-3").wait(), KID(1), sleep(90))

    sim = Simulation()
    run = sim.start(wf(flow))
    assert suspensions(run.commands) == [
        cmd.Suspend("waiting", T0 + dt.timedelta(seconds=90), ("hook:t-3", "run:run-1::3")),
    ]
    sim.send("t-3", "x")  # wakes the run; it suspends again on what is left
    assert run.suspension == cmd.Suspend("waiting", T0 + dt.timedelta(seconds=90), ("run:run-1::3",))
    sim.finish_child("run-1::3", 1)
    assert run.suspension == cmd.Suspend("sleeping", T0 + dt.timedelta(seconds=90), ())
    sim.clock.advance(90)
    run.tick()
    assert run.result() == ["x", 1, None]
    replays_the_same(run)


# --- timers due within the same instant ------------------------------------------------------------


def test_a_timer_due_within_the_same_instant_replays_at_the_same_clock_time() -> None:
    """The clock does not move, so outcomes are stamped a microsecond apart: the
    zero-length timer started at the first outcome's stamp is due before any
    next outcome could be. It fires before the racing step's outcome is taken
    (which is then not recorded), and a replay at that same clock time must
    fire it too."""

    async def flow() -> Any:
        await work(1)
        winner = list(await race(work(2), sleep(0)))
        await sleep(0)
        return winner

    sim = Simulation()
    run = sim.start(wf(flow))
    finish(run, 1)
    if 2 in run.steps_in_flight:  # the timer is due before this outcome: it is dropped
        finish(run, 2)
    assert run.result() == [1, None]
    assert cancelled(run.commands) == [2]
    assert [r.kind for r in run.log] == ["step", "sleep", "sleep"]
    replays_the_same(run)


def test_a_crash_leaves_the_same_steps_in_flight_as_the_worker_had() -> None:
    async def flow() -> Any:
        await work(1)
        winner = list(await race(work(2), sleep(0)))
        return [winner, await work(4)]

    run = Simulation().start(wf(flow))
    finish(run, 1)
    before = sorted(run.steps_in_flight)
    run.crash()
    assert sorted(run.steps_in_flight) == before
    while run.steps_in_flight:
        finish(run, min(run.steps_in_flight))
    assert run.result() == [[1, None], 40]
    replays_the_same(run)


def test_workflow_tasks_keep_one_hash_and_runs_do_not_share_hashes() -> None:
    """A task's hash is fixed before asyncio registers it in its global task set
    (a hash changed afterwards corrupts that set, and equal hashes across runs
    make it quadratic); its low 32 bits are the creation order on its loop."""
    seen: dict[str, list[tuple[int, bool]]] = {}

    def flow_for(label: str) -> Callable[[], Any]:
        async def flow() -> list[int]:
            tasks = [asyncio.ensure_future(work(i)) for i in range(3)]
            registry = getattr(asyncio.tasks, "_scheduled_tasks", None)
            seen[label] = [(hash(t), registry is None or t in registry) for t in tasks]
            return list(await asyncio.gather(*tasks))
        flow.__name__ = f"flow_{label}"
        return flow

    sim = Simulation()
    runs = [sim.start(wf(flow_for(label))) for label in ("a", "b")]
    for run in runs:
        finish(run, *sorted(run.steps_in_flight))
        assert run.result() == [0, 10, 20]
    for label in ("a", "b"):
        assert all(registered for _, registered in seen[label]), "task not found in asyncio's task set"
    orders = {label: [h & 0xFFFFFFFF for h, _ in seen[label]] for label in seen}
    assert orders["a"] == orders["b"] == sorted(orders["a"])
    assert not {h for h, _ in seen["a"]} & {h for h, _ in seen["b"]}
