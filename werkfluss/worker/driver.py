"""Driving one held run: the runtime's commands out, their results back in.

A :class:`RunDriver` owns one claimed run on a worker. It feeds the run's
:class:`~werkfluss.runtime.instance.WorkflowInstance` one event at a time
(from a queue, so the instance is never entered twice at once) and carries
out the commands the instance returns: step bodies on the worker's loop or
thread pool, writes through the recorder, child cancellations, timers on the
one clock. It reacts to the run's state through the instance's lifecycle
listener and ends when the run has left the worker.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkfluss import telemetry, tracing
from werkfluss.clock import Cancellable
from werkfluss.errors import DatabaseError, LeaseLost, RecordRefused, SerializationError, WerkflussError
from werkfluss.flow import RateLimit
from werkfluss.runtime import commands as cmd
from werkfluss.runtime.failures import error_json
from werkfluss.runtime.instance import WorkflowInstance
from werkfluss.runtime.state import RunState
from werkfluss.store import dispatch
from werkfluss.store import flow as flow_store
from werkfluss.store import writes as w
from werkfluss.worker.executor import run_attempts

if TYPE_CHECKING:
    from werkfluss.worker.worker import Worker

Event = Callable[[], list[cmd.Command]]


class RunDriver:
    """One claimed run on a worker (see the module docs)."""

    def __init__(self, worker: Worker, claimed: dispatch.ClaimedRun, instance: WorkflowInstance,
                 *, resumed: bool) -> None:
        self.worker = worker
        self.claimed = claimed
        self.run_id = claimed.run_id
        self.lease = claimed.lease
        self.instance = instance
        self.resumed = resumed
        self.seen_wakeups = claimed.inputs.wakeups
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._steps: dict[int, asyncio.Task[None]] = {}
        self._last_write: asyncio.Future[Any] | None = None
        self._write_failed = False
        self._wake_timer: Cancellable | None = None
        self._wake_at: Any = None
        self._deadline_timer: Cancellable | None = None
        self._refreshing = False
        self._refresh_again = False
        self.abandoned = False  # the worker gave the run up: no step attempt may start
        self._started = time.monotonic()
        self._suspension: cmd.Suspend | None = None
        self._steps_before = instance.steps_run  # a run resumed from the cache counts on
        self._done = asyncio.Event()
        self._finish_command: cmd.Finish | None = None
        self.task: asyncio.Task[None] | None = None
        self.span = tracing.start_run_span(  # None unless OpenTelemetry is installed
            claimed.run_id, claimed.workflow, claimed.traceparent, claims=claimed.claims,
            resumed=resumed, replaying=len(claimed.log))
        instance.lifecycle.listen(self._transition)

    # --- what the worker calls ----------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"werkfluss-run-{self.run_id}")

    def post(self, event: Event) -> None:
        """Feed an event to the instance (from any callback on the worker's loop)."""
        self._events.put_nowait(event)

    def abandon(self, reason: str) -> None:
        """The worker lost the run (its heartbeat failed, it was reaped): at once,
        no attempt of any step may start; the instance hears of it in turn."""
        self.abandoned = True
        self.post(lambda: self.instance.lost(reason))

    def refresh(self) -> None:
        """Read what arrived for the run (payloads, ended children); coalesced."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self.worker.spawn(self._refresh())

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        await self._done.wait()

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        instance = self.instance
        try:
            if self.claimed.inputs.error is not None:
                self._carry_out(instance.start_failed(SerializationError(
                    f"cannot load what run {self.run_id} received: {self.claimed.inputs.error}")))
            elif self.resumed:
                self._carry_out(instance.resume(self.claimed.inputs.payloads, self.claimed.inputs.children))
            else:
                self._carry_out(instance.start())
            if instance.deadline is not None and not instance.state.final:
                self._deadline_timer = self.worker.clock.call_at(
                    instance.deadline, lambda: self.post(instance.deadline_reached))
            while not self._left():
                event = await self._events.get()
                self._carry_out(event())
        except asyncio.CancelledError:
            if not self._left():
                self._carry_out(instance.lost("the worker stopped driving it"))
            raise
        except Exception as err:  # a bug in werkfluss: loud, and this run alone pays for it
            telemetry.logger().exception("worker.driver_failed", run_id=self.run_id, error=str(err))
            if not self._left():
                instance.lost(f"internal error: {err!r}")
                await self._fail_after_internal_error(err)
        finally:
            self._cleanup()

    async def _fail_after_internal_error(self, err: Exception) -> None:
        """Record the run as failed with the internal error, so that it is seen
        (and can be retried) instead of being claimed again and again."""
        error = WerkflussError(
            f"werkfluss could not execute run {self.run_id}: {type(err).__name__}: {err}. "
            "This is a bug in werkfluss; please report it with this run's log"
        )
        write = w.FinishRun(self.lease, "failed", None, error_json(error))
        try:
            await self.worker.recorder.submit(write)
        except (LeaseLost, RecordRefused, DatabaseError):
            pass

    def _left(self) -> bool:
        state = self.instance.state
        return state.final or state is RunState.SUSPENDED

    def _cleanup(self) -> None:
        for task in self._steps.values():
            task.cancel()
        self._steps.clear()
        for timer in (self._wake_timer, self._deadline_timer):
            if timer is not None:
                timer.cancel()
        if self.span is not None:
            tracing.end_run_span(self.span, *self._outcome())
        self._done.set()
        # The run no longer tells this driver anything: no reference cycle
        # keeps the two alive once the worker lets go of them.
        self.instance.lifecycle.unlisten(self._transition)
        self.worker.driver_done(self)

    def _outcome(self) -> tuple[str, str | None]:
        """How this execution of the run ended, for its span."""
        state = self.instance.state
        if state is RunState.FINISHED and self._finish_command is not None:
            return self._finish_command.status, self._finish_command.error_type
        if state is RunState.SUSPENDED and self._suspension is not None:
            return self._suspension.status, None
        if state is RunState.LOST:
            return "lost", self.instance.lifecycle.reason
        return state.value, None

    def _transition(self, old: RunState, new: RunState, reason: str) -> None:
        self.worker.run_moved(self, old, new, reason)

    # --- commands ------------------------------------------------------------------------

    def _carry_out(self, commands: list[cmd.Command]) -> None:
        for command in commands:
            if isinstance(command, cmd.ExecuteStep):
                self._steps[command.seq] = asyncio.get_running_loop().create_task(
                    self._execute(command), name=f"werkfluss-step-{self.run_id}-{command.seq}")
            elif isinstance(command, cmd.CancelStep):
                task = self._steps.pop(command.seq, None)
                if task is not None:
                    task.cancel()
            elif isinstance(command, cmd.AppendRecord):
                child_id = _delivered_child(command.record)
                self._submit(w.AppendEvent(self.lease, command.record, child_id), None)
            elif isinstance(command, cmd.CreateHook):
                self._submit(w.CreateHook(self.lease, command.seq, command.token, command.multi, command.at),
                             self._hook_answered(command.token))
            elif isinstance(command, cmd.MarkHookMulti):
                self._submit(w.MarkHookMulti(self.lease, command.token), None)
            elif isinstance(command, cmd.StartChild):
                self._submit(w.StartChild(self.lease, command.seq, command.child_id, command.workflow,
                                          command.args, command.kwargs, tracing.traceparent_of(self.span)),
                             self._child_answered(command.child_id))
            elif isinstance(command, cmd.CancelChild):
                self.worker.cancel_run_soon(command.child_id)
            elif isinstance(command, cmd.Suspend):
                self._suspend(command)
            elif isinstance(command, cmd.Finish):
                self._finish(command)
            elif isinstance(command, cmd.Release):
                self._submit(w.ReleaseRun(self.lease), lambda _: self._released())
            else:  # pragma: no cover - a command this driver does not know is a bug
                raise TypeError(f"unknown command {command!r}")
        self._schedule_wake()

    def _submit(self, write: w.Write, on_done: Callable[[Any], list[cmd.Command] | None] | None) -> None:
        future = self.worker.recorder.submit(write)
        self._last_write = future

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            error = f.exception()
            if error is None:
                result = f.result()
                if isinstance(result, w.HookCreation) and result.error is not None:
                    self._write_failed = True  # the run fails: no step body may start now
                if on_done is not None:
                    self.post(lambda: on_done(result) or [])
                return
            self._write_failed = True
            self.post(lambda: self._write_error(write, error))

        future.add_done_callback(done)

    def _hook_answered(self, token: str) -> Callable[[w.HookCreation], list[cmd.Command]]:
        def answered(creation: w.HookCreation) -> list[cmd.Command]:
            return self.instance.hook_created(token, error=creation.error, early=creation.early)

        return answered

    def _child_answered(self, child_id: str) -> Callable[[dict[str, Any] | None], list[cmd.Command]]:
        def answered(error: dict[str, Any] | None) -> list[cmd.Command]:
            return self.instance.child_started(child_id, error=error)

        return answered

    def _write_error(self, write: w.Write, error: BaseException) -> list[cmd.Command]:
        instance = self.instance
        if instance.state.final or instance.state is RunState.SUSPENDED:
            return []
        if isinstance(error, RecordRefused):
            return instance.record_refused(error)
        if isinstance(error, LeaseLost):
            log = telemetry.logger()
            log.warning("worker.lease_lost", run_id=self.run_id, worker_id=self.worker.worker_id,
                        during=write.what, reason=str(error))
            return instance.lost(str(error))
        telemetry.logger().warning("worker.run_abandoned", run_id=self.run_id,
                                   worker_id=self.worker.worker_id, error=f"{type(error).__name__}: {error}")
        return instance.lost(f"write failed: {error}")

    def _suspend(self, command: cmd.Suspend) -> None:
        deadline = self.instance.deadline
        due = command.wake_at
        if deadline is not None:
            due = deadline if due is None else min(due, deadline)
        waiting_on = ", ".join(command.events)[:1000] or None
        self._suspension = command
        self._submit(
            w.SuspendRun(self.lease, command.status, command.wake_at, due, waiting_on, self.seen_wakeups),
            self._suspend_answered,
        )

    def _suspend_answered(self, suspended: bool) -> list[cmd.Command]:
        if suspended:
            self.instance.suspended()
            if telemetry.debug_enabled() and self._suspension is not None:
                command = self._suspension
                telemetry.logger().debug(
                    "run.suspended", run_id=self.run_id, status=command.status,
                    wake_at=command.wake_at.isoformat() if command.wake_at else None,
                    waiting_on=", ".join(command.events) or None)
            return []
        commands = self.instance.suspend_refused()
        self.refresh()
        return commands

    def _finish(self, command: cmd.Finish) -> None:
        self._finish_command = command

        def committed(_: Any) -> list[cmd.Command]:
            self.instance.finished()
            self._log_outcome(command)
            if command.has_children:
                self.worker.cancel_children_soon(self.run_id)
            return []

        self._submit(w.FinishRun(self.lease, command.status, command.result, command.error), committed)

    def _released(self) -> list[cmd.Command]:
        self.instance.released()
        return []

    def _log_outcome(self, command: cmd.Finish) -> None:
        log = telemetry.logger()
        duration_ms = round((time.monotonic() - self._started) * 1000, 3)
        workflow = self.instance.workflow.name
        if command.status == "completed":
            log.info("run.completed", run_id=self.run_id, workflow=workflow,
                     steps=self.instance.steps_run - self._steps_before, duration_ms=duration_ms)
            return
        error_type = command.error_type or ""
        if self.instance.nondeterminism is not None:
            event = "run.nondeterminism"
        elif error_type == "TimeoutError" and "(its timeout)" in (command.error or ""):
            event = "run.timed_out"
        else:
            event = "run.failed"
        log.error(event, run_id=self.run_id, workflow=workflow, error_type=error_type,
                  duration_ms=duration_ms)

    # --- steps ------------------------------------------------------------------------------

    async def _execute(self, command: cmd.ExecuteStep) -> None:
        # A step body starts only once every earlier write of its run is
        # committed, and each attempt only while this worker's heartbeat vouches
        # for its leases and the run is still its own.
        barrier = self._last_write
        if barrier is not None and not barrier.done():
            await _settled(barrier)

        rate_limit = command.rate_limit
        waited = False

        async def may_run() -> None:
            nonlocal waited
            while True:
                await self.worker.lease_valid()
                if self._write_failed or self.abandoned or self._left() or command.seq not in self._steps:
                    raise asyncio.CancelledError(
                        f"step {command.seq} of run {self.run_id} may not run here now")
                if rate_limit is None:
                    return
                wait = await self._take_token(rate_limit, waited)
                if wait <= 0:
                    return
                if not waited:
                    telemetry.logger().info("step.rate_limited", run_id=self.run_id, step=command.step.name,
                                            seq=command.seq, rate_limit=rate_limit.name,
                                            wait_ms=round(wait * 1000, 3))
                waited = True
                # Waiters wake a little apart, so that they do not all ask for the same token.
                await asyncio.sleep(wait + random.uniform(0, 0.1 * wait + 0.005))

        def may_start() -> bool:  # asked in a pool thread just before a sync body starts
            return (self.worker.liveness.valid() and not (self._write_failed or self.abandoned)
                    and command.seq in self._steps)

        try:
            with tracing.step_span(self.span, self.run_id, command.step.name, command.seq) as span:
                outcome = await run_attempts(command.step, command.args, command.kwargs, command.info,
                                             self.worker.executor, self.worker.clock,
                                             before_attempt=may_run, may_start=may_start)
                span.done(outcome.attempts, outcome.ok, outcome.exception)
        except asyncio.CancelledError:
            self._steps.pop(command.seq, None)
            return
        self._steps.pop(command.seq, None)
        log = telemetry.logger()
        took = (self.worker.clock.now() - outcome.started_at).total_seconds()
        if not outcome.ok and outcome.error is not None:
            error = f"{outcome.error.get('type')}: {outcome.error.get('message')}"
            log.info("step.failed", run_id=self.run_id, step=command.step.name, seq=command.seq,
                     attempts=outcome.attempts, error=error, duration_ms=round(took * 1000, 3))
        elif telemetry.debug_enabled():
            log.debug("step.completed", run_id=self.run_id, step=command.step.name, seq=command.seq,
                      attempts=outcome.attempts, duration_ms=round(took * 1000, 3))
        self.post(lambda: self.instance.step_done(command.seq, outcome))

    async def _take_token(self, rate_limit: RateLimit, waited: bool) -> float:
        """0 once a token of the step's rate limit is taken, else the seconds to wait."""
        failures = 0
        while True:
            try:
                return await flow_store.take_token(
                    self.worker.connector, name=rate_limit.name, capacity=rate_limit.limit,
                    period=rate_limit.period, run_id=self.run_id, waited=waited)
            except DatabaseError as err:
                if failures == 0:
                    telemetry.logger().warning("step.rate_limit_failed", run_id=self.run_id,
                                               rate_limit=rate_limit.name, error=str(err))
                failures += 1
                await asyncio.sleep(min(1.0, 0.05 * 2**failures))
                await self.worker.lease_valid()

    # --- time -------------------------------------------------------------------------------

    def _schedule_wake(self) -> None:
        if self._left() or self.instance.state is not RunState.RUNNING:
            return
        wake = self.instance.next_wake()
        if wake == self._wake_at:
            return
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        self._wake_at = wake
        if wake is not None:
            self._wake_timer = self.worker.clock.call_at(wake, self._tick)

    def _tick(self) -> None:
        self._wake_at = None
        self._wake_timer = None
        self.post(self.instance.tick)

    # --- inputs -----------------------------------------------------------------------------

    async def _refresh(self) -> None:
        try:
            while True:
                self._refresh_again = False
                try:
                    inputs = await dispatch.run_inputs(self.worker.connector, self.run_id)
                except DatabaseError:
                    return  # the wake-up count tells the suspension; nothing is lost
                if inputs.error is not None:
                    self.post(self._fail_unreadable(inputs.error))
                    return
                self.post(self._feed(inputs))
                if not self._refresh_again:
                    return
        finally:
            self._refreshing = False


    def _fail_unreadable(self, problem: str) -> Event:
        error = SerializationError(f"cannot load what run {self.run_id} received: {problem}")
        return lambda: self.instance.start_failed(error)

    def _feed(self, inputs: dispatch.RunInputs) -> Event:
        def feed() -> list[cmd.Command]:
            # The wake-up count moves only together with the inputs it counts: a
            # suspension decided before the instance has seen them must compare
            # the old count (and be refused), never the new one.
            self.seen_wakeups = max(self.seen_wakeups, inputs.wakeups)
            return self.instance.add_inputs(inputs.payloads, inputs.children)

        return feed


def _delivered_child(record: Any) -> str | None:
    if record.kind != "child" or not record.output:
        return None
    try:
        value = json.loads(record.output)
    except ValueError:
        return None
    return value.get("run_id") if isinstance(value, dict) and "status" in value else None


def _settled(future: asyncio.Future[Any]) -> asyncio.Future[None]:
    """A future done when ``future`` is, whatever its outcome (what
    ``asyncio.wait([future])`` does, with one callback instead of a set,
    a counter and a waiter)."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(settle)
    return waiter
