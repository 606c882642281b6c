"""Executing one run: the workflow coroutine, matched against its log.

A :class:`RunExecution` is created when a worker claims a run, with the run's
whole log (read once, in the claim). Each durable call the workflow makes —
a step, ``sleep``, ``hook()``, a hook wait, a child run, ``race`` — takes the
next *seq* at the moment of the call:

* if the log has a record at that seq, it must be the same kind and name
  (else :class:`NonDeterminismError` fails the run) and its recorded outcome
  is returned, or its recorded error raised, without running anything;
* otherwise the call runs, and its outcome is committed through the
  :class:`~werkfluss.store.recorder.Recorder` before the workflow continues.

When everything the workflow waits for is *passive* — a timer, a hook
payload, a child run — and no step is running, the run is suspended: its
lease is released with a wake-up time, the coroutine is dropped, and any
worker resumes it later by replaying the log (see :mod:`werkfluss.runtime.waits`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkfluss import serializer, telemetry
from werkfluss.errors import DatabaseError, LeaseLost, NonDeterminismError, SerializationError
from werkfluss.runtime import context
from werkfluss.runtime.failures import error_json, error_record, rebuild_exception, type_name
from werkfluss.runtime.steps import Step, run_attempts
from werkfluss.runtime.waits import WaitSet, parse_time
from werkfluss.store.recorder import EventRecord, Lease, Recorder

if TYPE_CHECKING:
    from werkfluss.runtime.workflows import Workflow

__all__ = ["Outcome", "RunExecution", "error_record", "rebuild_exception", "type_name"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Outcome:
    status: str  # "completed" | "failed"
    result: str | None
    error: str | None
    error_type: str | None = None


_MISMATCH: dict[str, Any] = {"mismatch": True}


class RunExecution:
    """One claimed run being executed by a worker."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow: Workflow[..., Any],
        args: list[Any] | str,
        kwargs: dict[str, Any] | str,
        lease: Lease,
        log: list[dict[str, Any]],
        recorder: Recorder,
        executor: Executor | None = None,
        on_halt: Callable[[RunExecution], None] | None = None,
        wakeups: int = 0,
        inbox: list[dict[str, Any]] | None = None,
        children: list[dict[str, Any]] | None = None,
        deadline: dt.datetime | None = None,
        cancel_child: Callable[[str], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.args = args
        self.kwargs = kwargs
        self.lease = lease
        self.recorder = recorder
        self.executor = executor
        self.deadline = deadline
        self._log = {int(entry["seq"]): entry for entry in log}
        self._last_logged = max(self._log, default=0)
        self._seq = 0
        self._on_halt = on_halt
        self._cancel_child = cancel_child
        self._calls: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._pending: list[asyncio.Future[Any]] = []  # hook creations not yet awaited
        self._deferred: BaseException | None = None  # raised at the next durable call
        self.waits = WaitSet(self, wakeups=wakeups, inbox=inbox or [], children=children or [])
        self.nondeterminism: NonDeterminismError | None = None
        self.halted: str | None = None  # why the worker stopped driving it
        self.stopping = False  # set by the worker: release at the next step boundary
        self.steps_run = 0
        self.children_started = False
        self.done = False  # the workflow function has returned or raised

    # --- sequence numbers and the log ------------------------------------------------

    def next_seq(self, kind: str, name: str | None) -> tuple[int, dict[str, Any] | None]:
        """Take the next seq; return it with the log's record there (if any).

        ``name=None`` matches any name (hooks with generated tokens).
        """
        self._seq += 1
        seq = self._seq
        self.waits.note_progress()
        recorded = self._log.get(seq)
        if recorded is not None and (
            recorded["kind"] != kind or (name is not None and recorded["name"] != name)
        ):
            if self.nondeterminism is None:
                self.nondeterminism = NonDeterminismError(
                    self.run_id, seq,
                    f"{recorded['kind']} {recorded['name']!r}",
                    f"{kind} {name if name is not None else '(generated)'!r}",
                )
            return seq, _MISMATCH
        return seq, recorded

    def check(self, recorded: dict[str, Any] | None) -> None:
        """Raise the mismatch a call was given, if it was given one."""
        if recorded is _MISMATCH:
            assert self.nondeterminism is not None
            raise self.nondeterminism

    def register_call(self, coro: Coroutine[Any, Any, Any], seq: int) -> Coroutine[Any, Any, Any]:
        """Remember which seq a durable call's coroutine has (``race`` asks)."""
        self._calls[coro] = seq
        return coro

    def seq_of(self, awaitable: object) -> int | None:
        try:
            return self._calls.get(awaitable)
        except TypeError:
            return None

    async def before_durable(self) -> None:
        """Run before any new durable work: stop if the run is being suspended
        or released, and surface errors of hook creations made since."""
        if self.waits.suspending or self.halted:
            raise asyncio.CancelledError(f"werkfluss: run {self.run_id} is leaving this worker")
        if self._pending:
            pending, self._pending = self._pending, []
            async with self.waits.active():
                for future in pending:
                    await future
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        if self.nondeterminism is not None:
            raise self.nondeterminism  # never do new work on a log that does not match

    def defer(self, future: asyncio.Future[Any] | None = None, error: BaseException | None = None) -> None:
        if future is not None:
            self._pending.append(future)
        if error is not None and self._deferred is None:
            self._deferred = error

    async def record(self, record: EventRecord) -> None:
        """Commit a log record (fenced by the lease); stop the run if that fails."""
        await self.write(self.recorder.append(self.lease, record))

    async def write(self, operation: Coroutine[Any, Any, Any]) -> Any:
        """Await one recorder operation; a lost lease or database halts the run."""
        if self.halted:
            operation.close()
            self.halt(self.halted)
        async with self.waits.active():
            try:
                return await operation
            except LeaseLost:
                self.halt("lease_lost")
            except DatabaseError:
                self.halt("abandoned")

    def halt(self, reason: str) -> None:
        """Stop this run here: the workflow's task is cancelled and nothing more is written."""
        if self.halted is None:
            self.halted = reason
            if self._on_halt is not None:
                self._on_halt(self)
        raise asyncio.CancelledError(f"werkfluss: run {self.run_id} {reason}")

    def cancel_child(self, child_id: str) -> None:
        if self._cancel_child is not None:
            self._cancel_child(child_id)

    # --- steps ----------------------------------------------------------------------------

    def call_step(self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seq, recorded = self.next_seq("step", step.name)
        return self.register_call(self._step(seq, recorded, step, args, kwargs), seq)

    def call_child(self, workflow: Workflow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from werkfluss.runtime.children import call_child

        return call_child(self, workflow, args, kwargs)

    async def _step(
        self,
        seq: int,
        recorded: dict[str, Any] | None,
        step: Step[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        self.check(recorded)
        if recorded is not None:
            branch = context.race_branch_for(seq)
            if branch is not None and recorded.get("finished_at"):
                branch.event_time = parse_time(recorded["finished_at"])
            if recorded["status"] == "completed":
                return serializer.decode(recorded["output"])
            raise rebuild_exception(recorded["error"], where=f" for run {self.run_id} seq {seq}")
        if self.stopping:
            self.halt("released")
        await self.before_durable()
        input_json = serializer.dumps(
            {"args": list(args), "kwargs": kwargs}, what=f"the input of step {step.name}"
        )
        info = context.StepInfo(self.run_id, self.workflow.name, step.name, seq, 1)
        started = utcnow()
        async with self.waits.active():
            outcome = await run_attempts(step, args, kwargs, info, self.executor)
        finished = utcnow()
        error = None if outcome.ok else error_record(outcome.error)  # type: ignore[arg-type]
        await self.record(EventRecord(
            seq=seq, kind="step", name=step.name,
            status="completed" if outcome.ok else "failed",
            input=input_json, output=outcome.output,
            error=None if error is None else json.dumps(error, ensure_ascii=False),
            attempts=outcome.attempts, started_at=started, finished_at=finished,
        ))
        self.steps_run += 1
        branch = context.race_branch_for(seq)
        if branch is not None:
            branch.event_time = finished  # for the race: when this branch finished
        log = telemetry.logger()
        if outcome.ok:
            if telemetry.debug_enabled():
                log.debug("step.completed", run_id=self.run_id, step=step.name, seq=seq,
                          attempts=outcome.attempts,
                          duration_ms=round((finished - started).total_seconds() * 1000, 3))
            return serializer.loads(outcome.output)
        assert error is not None
        log.info("step.failed", run_id=self.run_id, step=step.name, seq=seq,
                 attempts=outcome.attempts, error=f"{error['type']}: {error['message']}")
        raise rebuild_exception(error, where=f" for run {self.run_id} seq {seq}") from outcome.error

    # --- driving the workflow --------------------------------------------------------------

    async def run(self) -> Outcome:
        """Run (or resume) the workflow to its outcome. Cancellation propagates."""
        try:
            args = serializer.loads(self.args) if isinstance(self.args, str) else self.args
            kwargs = serializer.loads(self.kwargs) if isinstance(self.kwargs, str) else self.kwargs
        except SerializationError as exc:
            return self._failed(exc)
        token = context._execution.set(self)
        try:
            value = await self.workflow.fn(*args, **kwargs)
            await self.before_durable()  # hook creations still in flight
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed(self.nondeterminism or exc)
        finally:
            self.done = True
            context._execution.reset(token)
        if self.nondeterminism is not None:
            return self._failed(self.nondeterminism)
        if self._seq < self._last_logged:
            # The code finished without reaching records the log already has.
            extra = self._log[self._seq + 1]
            self.nondeterminism = NonDeterminismError(
                self.run_id, self._seq + 1, f"{extra['kind']} {extra['name']!r}",
                "nothing (the workflow returned)",
            )
            return self._failed(self.nondeterminism)
        try:
            result = serializer.dumps(value, what=f"the result of workflow {self.workflow.name}")
        except SerializationError as exc:
            return self._failed(exc)
        return Outcome("completed", result, None)

    def _failed(self, exc: BaseException) -> Outcome:
        return Outcome("failed", None, error_json(exc), type_name(exc))
