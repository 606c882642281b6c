"""One run's workflow, executing on its own deterministic loop.

A :class:`WorkflowInstance` is created when a worker claims a run, with the
run's log. It runs the workflow function on a
:class:`~werkfluss.runtime.loop.WorkflowLoop` and talks to the worker only in
commands (out) and results (in); it never does I/O. Every entry point —
:meth:`start`, :meth:`step_done`, :meth:`add_inputs`, :meth:`tick`, … —
returns the commands the worker must carry out.

**Replay.** Calls take seqs in call order and are matched against the log by
kind, name and (for steps and child runs) input. Outcomes — *deliveries*:
step results, received payloads, child outcomes — are fed to the workflow in
the order the run first saw them (their ``finished_at``, strictly increasing
per run), one at a time, with the loop run until idle in between; durable
timers fire in between, by their wake-up time. Live execution follows the same
rule, so a replay reaches the same point by the same path: ``gather``,
``wait``, ``as_completed``, ``wait_for`` and ``race`` come out the same.

**Suspension is a fact.** When the loop has nothing ready, the outstanding
durable calls are exactly known. Only durable waits (timers, hook waits,
child runs) → the run suspends now. A step in flight → it waits for the
step. Nothing at all → the workflow awaits something werkfluss cannot wake
(a plain future), and the run fails saying so.

**Speculative delivery.** An outcome is delivered as soon as it is known,
while its record is being committed; records are committed in order, and a
step body starts only after every earlier record of its run is committed, so
nothing outside the database ever depends on a record that could be lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import heapq
import itertools
import json
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkfluss import serializer, telemetry
from werkfluss.clock import Clock
from werkfluss.errors import NonDeterminismError, RecordRefused, SerializationError, WorkflowBlocked
from werkfluss.records import DELIVERY_KINDS, ChildOutcome, LogRecord, Payload
from werkfluss.runtime import commands as cmd
from werkfluss.runtime.durable import DurableCall, load_value
from werkfluss.runtime.failures import error_json, rebuild_exception, type_name
from werkfluss.runtime.loop import DurableTimerHandle, WorkflowLoop
from werkfluss.runtime.state import Lifecycle, RunState

if TYPE_CHECKING:
    from werkfluss.flow import RateLimit
    from werkfluss.runtime.steps import Step
    from werkfluss.runtime.workflows import Workflow

_TICK = dt.timedelta(microseconds=1)


@dataclass(eq=False, slots=True)
class _Pending:
    seq: int
    call: DurableCall
    future: asyncio.Future[Any]


@dataclass(order=True, slots=True)
class _Timer:
    wake_at: dt.datetime
    seq: int
    handle: DurableTimerHandle


def is_delivery(record: LogRecord) -> bool:
    """Whether a log record is the delivery of an outcome (not a call record)."""
    if record.kind not in DELIVERY_KINDS:
        return False
    if record.kind == "child":
        # A legacy child record only held the child's id, written at its start.
        return record.status == "failed" or (record.output is not None and '"status"' in record.output)
    return True


class WorkflowInstance:
    """A run's workflow on its loop; see the module docs.

    Example (the worker's side, simplified)::

        instance = WorkflowInstance(run_id=..., workflow=wf, args="[1]", kwargs="{}",
                                    log=records, clock=clock, started_at=t0)
        for command in instance.start():
            ...   # carry it out; feed results back with step_done(), add_inputs(), ...
    """

    def __init__(
        self,
        *,
        run_id: str,
        workflow: Workflow[..., Any],
        args: str | list[Any],
        kwargs: str | dict[str, Any],
        log: Sequence[LogRecord],
        clock: Clock,
        started_at: dt.datetime,
        payloads: Sequence[Payload] = (),
        children: Sequence[ChildOutcome] = (),
        deadline: dt.datetime | None = None,
        listener: Callable[[RunState, RunState, str], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.deadline = deadline
        self.lifecycle = Lifecycle(run_id, listener)
        self.loop = WorkflowLoop(self)  # type: ignore[abstract]
        self._clock = clock
        self._args = args
        self._kwargs = kwargs
        self._log: dict[int, LogRecord] = {record.seq: record for record in log}
        deliveries = [r for r in log if is_delivery(r)]
        deliveries.sort(key=lambda r: (r.finished_at or started_at, r.seq))
        self._replay: deque[LogRecord] = deque(deliveries)
        self._replaying = True
        self._seq = 0
        self._calls: dict[int, _Pending] = {}
        self._waiting: dict[str, int] = {}  # wait key -> seq of the passive call waiting for it
        self._ready: deque[int] = deque()  # passive calls whose outcome can be delivered now
        self._ready_set: set[int] = set()
        self._timers: list[_Timer] = []
        self._steps: set[int] = set()  # steps in flight (ExecuteStep issued, outcome not yet in)
        self._held: list[cmd.ExecuteStep] = []  # steps not started because the worker is stopping
        # payloads not yet taken, per token, oldest id first (a heap): taking one is O(log n)
        self._inbox: dict[str, list[tuple[int, Payload]]] = {}
        self._inbox_ids: dict[int, str] = {}  # payload id -> token, for payloads in the inbox
        self._taken: set[int] = set()  # payloads delivered in this instance
        self._children: dict[str, ChildOutcome] = {}
        self._hooks: dict[str, Any] = {}  # token -> Hook (creation outcome)
        # "hook:<token>" / "run:<child id>" whose creation the database has not confirmed
        self._creating: set[str] = set()
        self._awaitables: weakref.WeakKeyDictionary[Any, asyncio.Future[Any]] = weakref.WeakKeyDictionary()
        self._discarded: set[int] = set()  # seqs of calls a legacy race record decided
        self._closing = False
        self._commands: list[cmd.Command] = []
        self._time = started_at
        # Stamps order deliveries only; a call record's stamp (its workflow time)
        # does not count, as it does not for the worker that wrote it.
        recorded = [r.finished_at for r in deliveries if r.finished_at is not None]
        self._last_stamp = max([started_at, *recorded])
        self._main: asyncio.Task[Any] | None = None
        self._outcome: cmd.Finish | None = None
        self._stopping = False
        self._ids = itertools.count()
        self.steps_run = 0
        self.has_children = False
        self.nondeterminism: NonDeterminismError | None = None
        self.add_inputs(payloads, children, advance=False)

    # --- facts for the worker -----------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self.lifecycle.state

    @property
    def workflow_time(self) -> dt.datetime:
        """The time workflow code sees (``loop.time()``): the event being processed."""
        return self._time

    @property
    def replaying(self) -> bool:
        return self._replaying

    @property
    def steps_in_flight(self) -> int:
        return len(self._steps)

    def next_wake(self) -> dt.datetime | None:
        """When the earliest durable timer is due (the worker calls :meth:`tick` then)."""
        self._drop_cancelled_timers()
        return self._timers[0].wake_at if self._timers else None

    # --- entry points (each returns the commands to carry out) -------------------------

    def start(self) -> list[cmd.Command]:
        """Begin (or resume from its log): replay what is recorded, then go live."""
        if self.deadline is not None and self.deadline <= self._clock.now():
            self._finish_failed(self._timed_out())
            return self._flush()
        try:
            args = load_value(self._args) if isinstance(self._args, str) else self._args
            kwargs = load_value(self._kwargs) if isinstance(self._kwargs, str) else self._kwargs
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise SerializationError("the run's args must be a JSON array and kwargs a JSON object")
        except SerializationError as exc:
            self._finish_failed(SerializationError(f"cannot load the arguments of run {self.run_id}: {exc}"))
            return self._flush()
        context = contextvars.Context()
        self._main = self.loop.create_task(self._run_workflow(args, kwargs), context=context)
        self._main.add_done_callback(self._main_done)
        self._advance()
        return self._flush()

    def start_failed(self, error: BaseException) -> list[cmd.Command]:
        """The run cannot go on: what it received cannot be read. It fails with ``error``."""
        self.fail(error)
        return self._flush()

    def fail(self, error: BaseException) -> None:
        """End the run as failed with ``error`` (when it cannot go on at all)."""
        if self.state in (RunState.RUNNING, RunState.SUSPENDING) and self._outcome is None:
            self._finish_failed(error)

    def step_done(self, seq: int, outcome: cmd.StepOutcome) -> list[cmd.Command]:
        """A step body finished (with its retries)."""
        self._steps.discard(seq)
        pending = self._calls.get(seq)
        if pending is None or not self._writing():
            self._advance()  # the call was cancelled meanwhile: the outcome is not recorded
            return self._flush()
        call = pending.call
        stamp = self._deliver_timers_before(self._candidate_stamp())
        if self._writing() and seq in self._calls:
            record = cmd_record_for_step(seq, call, outcome, self._take_stamp(stamp))
            self.steps_run += 1
            self._deliver(record, live=True, exc_context=outcome.exception)
        self._advance()
        return self._flush()

    def add_inputs(
        self, payloads: Sequence[Payload] = (), children: Sequence[ChildOutcome] = (), *, advance: bool = True
    ) -> list[cmd.Command]:
        """News from the database: hook payloads and ended child runs."""
        for payload in payloads:
            if payload.id not in self._taken and payload.id not in self._inbox_ids:
                self._inbox_ids[payload.id] = payload.token
                heapq.heappush(self._inbox.setdefault(payload.token, []), (payload.id, payload))
                self._mark_ready(f"hook:{payload.token}")
        for child in children:
            self._children[child.run_id] = child
            self._mark_ready(f"run:{child.run_id}")
        if advance and self.state is RunState.RUNNING:
            self._advance()
        return self._flush()

    def hook_created(
        self, token: str, *, error: dict[str, Any] | None, early: Sequence[Payload]
    ) -> list[cmd.Command]:
        """The database answered a hook's creation (``error`` if the token is taken)."""
        self._creating.discard(f"hook:{token}")
        hook = self._hooks.get(token)
        if hook is not None:
            hook.created(error)
        if error is not None:
            # A token another hook owns: an error in the workflow's design, never
            # a silent no-op. The run fails here, before anything else it does.
            self.fail(rebuild_exception(error))
            return self._flush()
        self.add_inputs(early, advance=False)
        self._mark_ready(f"hook:{token}")
        if self.state is RunState.RUNNING:
            self._advance()
        return self._flush()

    def child_started(self, child_id: str, *, error: dict[str, Any] | None) -> list[cmd.Command]:
        """The database answered a child run's start (``error`` if the id is taken)."""
        self._creating.discard(f"run:{child_id}")
        if error is not None:
            self.fail(rebuild_exception(error))
            return self._flush()
        if self.state is RunState.RUNNING:
            self._advance()
        return self._flush()

    def tick(self) -> list[cmd.Command]:
        """Time passed: fire durable timers that are due, check the deadline."""
        if self.state is RunState.RUNNING:
            self._advance()
        return self._flush()

    def stop(self) -> list[cmd.Command]:
        """The worker is stopping: start no more step bodies; hand the run back
        once the steps in flight are recorded (or suspend it, if it waits)."""
        self._stopping = True
        if self.state is RunState.RUNNING:
            self._settle()
        return self._flush()

    def force_release(self) -> list[cmd.Command]:
        """The worker's grace period is over: give up the steps in flight and hand the run back."""
        self._stopping = True
        if self.state is RunState.RUNNING:
            for seq in sorted(self._steps):
                self._commands.append(cmd.CancelStep(seq))
            self._steps.clear()
            self._held.clear()
            self.lifecycle.move(RunState.RELEASING, "worker stopping")
            self._commands.append(cmd.Release())
        return self._flush()

    def deadline_reached(self) -> list[cmd.Command]:
        """The run's timeout passed: it fails (its steps in flight are abandoned)."""
        if self.state is RunState.RUNNING:
            self._finish_failed(self._timed_out())
        return self._flush()

    def suspended(self) -> None:
        """The suspension is committed: the run has left the worker."""
        self.lifecycle.move(RunState.SUSPENDED, "suspension committed")

    def suspend_refused(self) -> list[cmd.Command]:
        """Something arrived while the suspension was written: keep running
        (the worker then reads the new inputs)."""
        self.lifecycle.move(RunState.RUNNING, "an input arrived while suspending")
        return self._flush()

    def resume(self, payloads: Sequence[Payload], children: Sequence[ChildOutcome]) -> list[cmd.Command]:
        """Claimed again by the worker that suspended it (kept in its cache): go on
        from where it stopped, with what arrived meanwhile."""
        self.lifecycle.move(RunState.RUNNING, "claimed again")
        self._stopping = False
        if self.deadline is not None and self.deadline <= self._clock.now():
            self._finish_failed(self._timed_out())
            return self._flush()
        return self.add_inputs(payloads, children)

    def finished(self) -> None:
        """The outcome is committed."""
        self.lifecycle.move(RunState.FINISHED, "outcome committed")
        self._teardown()

    def evict(self) -> None:
        """Drop a suspended run kept in the worker's cache (it stays suspended)."""
        self._teardown()

    def released(self) -> None:
        self.lifecycle.move(RunState.RELEASED, "handed back")
        self._teardown()

    def record_refused(self, error: RecordRefused) -> list[cmd.Command]:
        """PostgreSQL refused one of the run's writes (a value it cannot store).
        The run fails with that error; its other writes were not applied."""
        state = self.state
        if state in (RunState.RUNNING, RunState.SUSPENDING, RunState.RELEASING):
            if state is RunState.RELEASING:
                # The release is now moot: the run fails instead.
                self.lifecycle.move(RunState.LOST, "write refused while releasing")
                return self._flush()
            self._finish_failed(error)
        elif state is RunState.FINISHING:
            self._outcome = None
            self._emit_finish(_failed_outcome(error, self.has_children))
        return self._flush()

    def lost(self, reason: str) -> list[cmd.Command]:
        """This worker no longer holds the run: stop, write nothing more."""
        if not self.state.final:
            self.lifecycle.move(RunState.LOST, reason)
        return self._abandon()

    def cancelled(self) -> list[cmd.Command]:
        """The run was cancelled (by ``engine.cancel`` or SQL): stop, write nothing more."""
        if not self.state.final and self.state is not RunState.SUSPENDED:
            self.lifecycle.move(RunState.CANCELLED, "cancelled")
        return self._abandon()

    # --- what primitives call -----------------------------------------------------------

    def call(self, call: DurableCall) -> asyncio.Future[Any]:
        """Make a durable call whose outcome is delivered later; returns its future."""
        self._check_open()
        seq = self._next_seq()
        future: asyncio.Future[Any] = self.loop.create_future()
        record = self._match(seq, call)
        if self.nondeterminism is not None:
            return future  # never resolved: the run is failing
        pending = _Pending(seq, call, future)
        self._calls[seq] = pending
        future.add_done_callback(lambda f: self._call_done(seq, f))
        if record is not None and is_delivery(record):
            return future  # its outcome is delivered by the replay, in its turn
        if record is not None:
            call.restore(self, seq, record)  # e.g. a legacy child's start record
        else:
            call.begin(self, seq)
        if call.wait_key is not None:
            self._waiting[call.wait_key] = seq
            self._mark_ready(call.wait_key)
        return future

    def call_now(self, call: DurableCall) -> Any:
        """Make a durable call whose value is known at once (``now``, ``uuid4``, ``hook``, timers)."""
        self._check_open()
        seq = self._next_seq()
        record = self._match(seq, call)
        if self.nondeterminism is not None:
            raise self.nondeterminism
        if record is not None:
            return call.restore(self, seq, record)
        return call.begin(self, seq)

    def peek_legacy(self, kind: str) -> LogRecord | None:
        """A record of ``kind`` at the next seq, taken (for logs written by older releases)."""
        record = self._log.get(self._seq + 1)
        if record is None or record.kind != kind:
            return None
        self._seq += 1
        return record

    def emit(self, command: cmd.Command) -> None:
        """Queue a command for the worker (nothing once the run stops writing)."""
        if self._writing():
            self._commands.append(command)

    def emit_record(self, record: LogRecord) -> None:
        self.emit(cmd.AppendRecord(record))

    def execute_step(self, seq: int, step: Step[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any], *, rate_limit: RateLimit | None = None) -> None:
        from werkfluss.runtime.context import StepInfo

        if not self._writing():
            return
        info = StepInfo(self.run_id, self.workflow.name, step.name, seq, 1)
        command = cmd.ExecuteStep(seq, step, args, kwargs, info, rate_limit)
        if self._stopping:
            self._held.append(command)
            return
        self._steps.add(seq)
        self._commands.append(command)

    def cancel_step(self, seq: int) -> None:
        if seq in self._steps:
            self._steps.discard(seq)
            self.emit(cmd.CancelStep(seq))
        self._held = [c for c in self._held if c.seq != seq]

    def create_hook(self, seq: int, token: str, multi: bool) -> None:
        if self._writing():
            self._creating.add(f"hook:{token}")
            self._commands.append(cmd.CreateHook(seq, token, multi, self.workflow_time))

    def start_child(self, seq: int, child_id: str, workflow: str, args: str, kwargs: str) -> None:
        self.has_children = True
        if self._writing():
            self._creating.add(f"run:{child_id}")
            self._commands.append(cmd.StartChild(seq, child_id, workflow, args, kwargs))

    def cancel_child(self, child_id: str) -> None:
        self.emit(cmd.CancelChild(child_id))

    def awaitable(self, future: asyncio.Future[Any]) -> Any:
        """A coroutine awaiting a durable call's future (what primitives return)."""
        coro = _await(future)
        self._awaitables[coro] = future
        return coro

    def discard(self, awaitable: Any) -> None:
        """Drop an awaitable that will never be awaited (its durable call is cancelled)."""
        future = self._awaitables.pop(awaitable, None) if _weakrefable(awaitable) else None
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        elif isinstance(awaitable, asyncio.Future):
            future = awaitable
        if future is not None and not future.done():
            for seq, pending in self._calls.items():
                if pending.future is future:
                    self._discarded.add(seq)
                    break
            future.cancel()

    def now(self) -> dt.datetime:
        """The database's time now (for values recorded by ``now()``)."""
        return max(self._clock.now(), self._time)

    def take_payload(self, token: str) -> Payload | None:
        """The oldest payload for ``token`` not yet consumed (it stays until consumed)."""
        queue = self._inbox.get(token)
        return queue[0][1] if queue else None

    def consume_payload(self, payload_id: int) -> None:
        self._taken.add(payload_id)
        token = self._inbox_ids.pop(payload_id, None)
        if token is None:
            return
        queue = self._inbox[token]
        if queue[0][0] == payload_id:
            heapq.heappop(queue)
        else:  # not the oldest (cannot happen today: only the oldest is taken)
            queue.remove(next(item for item in queue if item[0] == payload_id))
            heapq.heapify(queue)
        if not queue:
            del self._inbox[token]

    def child_outcome(self, child_id: str) -> ChildOutcome | None:
        return self._children.get(child_id)

    def register_hook(self, token: str, hook: Any) -> None:
        self._hooks[token] = hook

    def hook_for(self, token: str) -> Any:
        return self._hooks.get(token)

    def start_timer(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        """A durable timer (``asyncio.sleep``, ``wait_for`` and ``werkfluss.sleep`` end here)."""
        from werkfluss.runtime.timers import TimerCall

        wake_at = dt.datetime.fromtimestamp(round(when, 6), dt.UTC)
        call = TimerCall(wake_at, self.workflow_time)
        recorded_wake = self.call_now(call)
        handle = DurableTimerHandle(recorded_wake.timestamp(), callback, args, self.loop, context, self._seq)
        handle._scheduled = True  # type: ignore[attr-defined]
        heapq.heappush(self._timers, _Timer(recorded_wake, self._seq, handle))
        return handle

    def cancel_timer(self, handle: DurableTimerHandle) -> None:
        handle._scheduled = False  # type: ignore[attr-defined]

    # --- the engine room -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError(f"run {self.run_id} is leaving this worker; no durable calls now")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _match(self, seq: int, call: DurableCall) -> LogRecord | None:
        record = self._log.get(seq)
        if record is None:
            return None
        same = record.kind == call.kind and (call.name is None or record.name == call.name)
        if same and record.input is not None:
            expected = call.input_json()
            if expected is not None and not _same_json(record.input, expected):
                self._nondeterministic(
                    seq, f"{record.kind} {record.name!r} with input {_short(record.input)}",
                    f"{call.kind} {call.name!r} with input {_short(expected)}",
                )
                return None
        if not same:
            self._nondeterministic(seq, f"{record.kind} {record.name!r}", call.describe())
            return None
        return record

    def _nondeterministic(self, seq: int, expected: str, actual: str) -> None:
        if self.nondeterminism is None:
            self.nondeterminism = NonDeterminismError(self.run_id, seq, expected, actual)
            if self._writing() and self.state is RunState.RUNNING:
                self._finish_failed(self.nondeterminism)

    def _mark_ready(self, key: str) -> None:
        seq = self._waiting.get(key)
        if seq is not None and seq not in self._ready_set:
            self._ready.append(seq)
            self._ready_set.add(seq)

    def _call_done(self, seq: int, future: asyncio.Future[Any]) -> None:
        pending = self._calls.pop(seq, None)
        if pending is None:
            return
        key = pending.call.wait_key
        if key is not None and self._waiting.get(key) == seq:
            del self._waiting[key]
        if future.cancelled() and self._writing():
            pending.call.cancel(self, seq)

    def _writing(self) -> bool:
        return self.state.writing and self._outcome is None

    def _candidate_stamp(self) -> dt.datetime:
        return max(self._clock.now(), self._last_stamp + _TICK)

    def _take_stamp(self, stamp: dt.datetime) -> dt.datetime:
        stamp = max(stamp, self._last_stamp + _TICK)
        self._last_stamp = stamp
        self._time = max(self._time, stamp)
        return stamp

    def _deliver_timers_before(self, stamp: dt.datetime) -> dt.datetime:
        """Fire every timer due at or before ``stamp`` (they happened first)."""
        while self._writing() and self._fire_timer(stamp):
            stamp = max(stamp, self._candidate_stamp())
        return stamp

    def _fire_timer(self, until: dt.datetime) -> bool:
        self._drop_cancelled_timers()
        if not self._timers or self._timers[0].wake_at > until:
            return False
        timer = heapq.heappop(self._timers)
        self._time = max(self._time, timer.wake_at)
        timer.handle._scheduled = False  # type: ignore[attr-defined]
        self.loop._ready.append(timer.handle)
        self._run()
        return True

    def _drop_cancelled_timers(self) -> None:
        while self._timers and self._timers[0].handle.cancelled():
            heapq.heappop(self._timers)

    def _deliver(self, record: LogRecord, *, live: bool, exc_context: BaseException | None = None) -> None:
        """Resolve the call at ``record.seq`` with the record's outcome, then run until idle."""
        pending = self._calls.get(record.seq)
        if pending is None and record.seq in self._discarded:
            return  # decided by a legacy race record
        if pending is None:
            self._nondeterministic(
                record.seq, f"an outcome for {record.kind} {record.name!r}",
                "no such call waiting (the workflow did not make it, or cancelled it)",
            )
            return
        if not live:
            self._time = max(self._time, record.finished_at or self._time)
        if live and record.consumes is not None:
            self.consume_payload(record.consumes)
        legacy = bool(getattr(pending.call, "legacy", False))
        try:
            value = pending.call.resolve(self, record)
        except BaseException as exc:
            # A failed record raises the failure it holds, which may itself be a
            # SerializationError (a step result that could not be stored).
            if isinstance(exc, SerializationError) and record.status == "completed":
                self._finish_failed(SerializationError(
                    f"cannot load the outcome of {record.kind} {record.name!r} at seq {record.seq} "
                    f"of run {self.run_id}: {exc}"
                ))
                return
            if exc_context is not None and exc.__cause__ is None:
                exc.__cause__ = exc_context
            if live and not legacy:
                self._emit_record(record)
            if not pending.future.done():
                pending.future.set_exception(exc)
            self._run()
            return
        if live and not legacy:
            self._emit_record(record)
        if not pending.future.done():
            pending.future.set_result(value)
        self._run()

    def _emit_record(self, record: LogRecord) -> None:
        self._commands.append(cmd.AppendRecord(record))

    def _run(self) -> None:
        self.loop.run_until_idle()
        errors = self.loop.take_errors()
        if errors and self._writing():
            error = errors[0]
            telemetry.logger().error("run.loop_error", run_id=self.run_id,
                                     error=f"{type_name(error)}: {error}")

    def _advance(self) -> None:
        """Run the workflow as far as it can go now, then decide what the run does."""
        self._run()
        while self.state is RunState.RUNNING and self._outcome is None and self.nondeterminism is None:
            if self._replay:
                record = self._replay[0]
                if self._fire_timer(record.finished_at or self._time):
                    continue
                self._replay.popleft()
                self._deliver(record, live=False)
                continue
            if self._replaying:
                self._replaying = False
                self._fire_due_timers()
                self._check_log_consumed()
                continue
            if self.deadline is not None and self._clock.now() >= self.deadline:
                self._finish_failed(self._timed_out())
                break
            if self._fire_timer(self._candidate_stamp()):
                continue
            if self._deliver_ready():
                continue
            break
        self._settle()

    def _fire_due_timers(self) -> None:
        # Due by the stamp the next outcome would get, not only by the clock:
        # the run fires those before any outcome anyway (an outcome it may then
        # not record, its call cancelled), so it fires them at once, live and
        # after a replay alike.
        while self._writing() and self._fire_timer(self._candidate_stamp()):
            pass

    def _check_log_consumed(self) -> None:
        """After the replay, every recorded call must have been made again."""
        if self._outcome is not None or self.nondeterminism is not None:
            return
        extra = [seq for seq in self._log if seq > self._seq]
        if extra and self.loop.has_ready is False:
            record = self._log[min(extra)]
            if self._main is not None and self._main.done():
                actual = "nothing (the workflow returned)"
            else:
                actual = "nothing (the workflow did not get there)"
            self._nondeterministic(record.seq, f"{record.kind} {record.name!r}", actual)

    def _deliver_ready(self) -> bool:
        """Deliver one outcome that is available now (a payload, a child's end)."""
        while self._ready:
            seq = self._ready.popleft()
            self._ready_set.discard(seq)
            pending = self._calls.get(seq)
            if pending is None:
                continue
            record = pending.call.deliverable(self, seq)
            if record is None:
                continue
            stamp = self._deliver_timers_before(self._candidate_stamp())
            if not self._writing() or seq not in self._calls:
                return True
            record.finished_at = self._take_stamp(stamp)
            if record.started_at is None:
                record.started_at = record.finished_at
            self._deliver(record, live=True)
            return True
        return False

    def _settle(self) -> None:
        """The loop is idle: finish, suspend, hand back, keep waiting, or fail."""
        if self.state is not RunState.RUNNING:
            return
        if self._outcome is not None:
            return
        if self._replay or self._replaying:
            return  # not settled before the replay is done
        if self._steps:
            return  # a step is in flight: its outcome will come
        if self._creating:
            return  # the database has not confirmed a hook or a child run yet
        if self._stopping and self._held:
            self.lifecycle.move(RunState.RELEASING, "worker stopping")
            self._commands.append(cmd.Release())
            return
        passive_timers = [t for t in self._timers if not t.handle.cancelled()]
        passive_calls = [p for p in self._calls.values() if p.call.wait_key is not None]
        if passive_timers or passive_calls:
            events = sorted({p.call.wait_key for p in passive_calls if p.call.wait_key})
            wake_at = min(t.wake_at for t in passive_timers) if passive_timers else None
            status = "waiting" if events else "sleeping"
            self.lifecycle.move(RunState.SUSPENDING, status)
            self._commands.append(cmd.Suspend(status, wake_at, tuple(events)))
            return
        if self._held:
            return
        waiting = [p.call.describe() for p in self._calls.values()]
        self._finish_failed(WorkflowBlocked(
            f"run {self.run_id}: the workflow awaits something that no durable event can resolve"
            + (f" ({', '.join(waiting)})" if waiting else "")
            + "; workflow code may only await steps, sleep, hooks, child runs and asyncio "
            "combinators over them (not plain futures, events or locks nobody will set)"
        ))

    # --- the workflow function ------------------------------------------------------------

    async def _run_workflow(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return await self.workflow.fn(*args, **kwargs)

    def _main_done(self, task: asyncio.Task[Any]) -> None:
        if not self._writing() or self.nondeterminism is not None:
            return
        if self._log_goes_on(task):
            return
        if task.cancelled():
            self._finish_failed(asyncio.CancelledError(f"the workflow of run {self.run_id} was cancelled"))
            return
        error = task.exception()
        if error is not None:
            self._finish_failed(error)
            return
        try:
            result = serializer.dumps(task.result(), what=f"the result of workflow {self.workflow.name}")
        except SerializationError as exc:
            self._finish_failed(exc)
            return
        self._emit_finish(cmd.Finish("completed", result, None, None, self.has_children))

    def _log_goes_on(self, task: asyncio.Task[Any]) -> bool:
        """The workflow ended (returned, raised or was cancelled) where its log
        goes on: the recorded run did not end there, so the code changed."""
        error = None if task.cancelled() else task.exception()
        if task.cancelled():
            ended = "was cancelled"
        elif error is not None:
            ended = f"raised {type_name(error)}"
        else:
            ended = "returned"
        if self._replay:
            record = self._replay[0]
            self._nondeterministic(record.seq, f"an outcome for {record.kind} {record.name!r}",
                                   f"nothing (the workflow {ended} before it)")
            return True
        unconsumed = [seq for seq in self._log if seq > self._seq]
        if unconsumed:
            record = self._log[min(unconsumed)]
            self._nondeterministic(record.seq, f"{record.kind} {record.name!r}",
                                   f"nothing (the workflow {ended})")
            return True
        return False

    def _timed_out(self) -> TimeoutError:
        when = self.deadline.isoformat() if self.deadline else "its deadline"
        return TimeoutError(f"run {self.run_id} did not finish by {when} (its timeout)")

    def _finish_failed(self, error: BaseException) -> None:
        self._emit_finish(_failed_outcome(error, self.has_children))

    def _emit_finish(self, outcome: cmd.Finish) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        if self.state in (RunState.RUNNING, RunState.SUSPENDING):
            self.lifecycle.move(RunState.FINISHING, outcome.status)
        for seq in sorted(self._steps):
            self._commands.append(cmd.CancelStep(seq))
        self._steps.clear()
        self._held.clear()
        self._commands.append(outcome)

    def _abandon(self) -> list[cmd.Command]:
        commands: list[cmd.Command] = [cmd.CancelStep(seq) for seq in sorted(self._steps)]
        self._steps.clear()
        self._held.clear()
        self._commands.clear()
        self._teardown()
        return commands

    def _teardown(self) -> None:
        """Drop the workflow's coroutines and loop (the run is not executing here any more).

        Coroutines are closed here, on the run's loop with durable calls
        refused, so that a ``finally:`` in workflow code cannot run a step
        body as a plain call when the garbage collector closes it later.
        """
        if self._closing:
            return
        self._closing = True
        if self._main is not None:
            self._main.remove_done_callback(self._main_done)
        self.loop.close_tasks()
        self._main = None
        self.loop.close()

    def _flush(self) -> list[cmd.Command]:
        commands, self._commands = self._commands, []
        return commands


def cmd_record_for_step(
    seq: int, call: DurableCall, outcome: cmd.StepOutcome, stamp: dt.datetime
) -> LogRecord:
    """The delivery record of a step's outcome."""
    return LogRecord(
        seq=seq, kind="step", name=call.name or "", status="completed" if outcome.ok else "failed",
        input=call.input_json(), output=outcome.output if outcome.ok else None,
        error=None if outcome.ok or outcome.error is None else _json(outcome.error),
        attempts=outcome.attempts, started_at=outcome.started_at, finished_at=stamp,
    )


async def _await(future: asyncio.Future[Any]) -> Any:
    return await future


def _weakrefable(value: Any) -> bool:
    try:
        weakref.ref(value)
    except TypeError:
        return False
    return True


def _failed_outcome(error: BaseException, has_children: bool) -> cmd.Finish:
    return cmd.Finish("failed", None, error_json(error), type_name(error), has_children)


def _same_json(recorded: str, current: str) -> bool:
    if recorded == current:
        return True
    try:
        return json.loads(recorded) == json.loads(current)
    except (ValueError, RecursionError):
        return False


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
