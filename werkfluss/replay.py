"""Executing one run: the workflow coroutine, matched against its log.

A :class:`RunExecution` is created when a worker claims a run, with the run's
whole log (read once, in the claim). Each durable call the workflow makes —
a step today — takes the next *seq* at the moment of the call:

* if the log has a record at that seq, it must be the same kind and name
  (else :class:`NonDeterminismError` fails the run) and its recorded result is
  returned, or its recorded error raised, without running anything;
* otherwise the step runs (with its retries) and its result is committed
  through the :class:`~werkfluss.log.Recorder` before the workflow continues.

Live and replayed calls return the same thing: the value decoded from the
recorded JSON, and exceptions rebuilt from the recorded error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkfluss import context, serializer, telemetry
from werkfluss.errors import (
    DatabaseError,
    LeaseLost,
    NonDeterminismError,
    SerializationError,
    StepFailed,
    WerkflussError,
)
from werkfluss.log import EventRecord, Lease, Recorder
from werkfluss.steps import Step, run_attempts

if TYPE_CHECKING:
    from werkfluss.workflows import Workflow


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- errors as records ----------------------------------------------------------------


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def error_record(exc: BaseException) -> dict[str, Any]:
    """The JSON-able record of an exception: type, message, traceback (and args to rebuild it)."""
    record: dict[str, Any] = {
        "type": type_name(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "class": f"{type(exc).__module__}:{type(exc).__qualname__}",
    }
    try:
        record["args"] = serializer.encode(list(exc.args))
    except Exception:  # args that are not serializable: the exception is rebuilt as StepFailed
        pass
    return record


def error_json(exc: BaseException) -> str:
    return json.dumps(error_record(exc), ensure_ascii=False)


def rebuild_exception(record: dict[str, Any], *, where: str = "") -> Exception:
    """The exception a recorded error stands for: its own class when that can be
    imported and built from the recorded args, else :class:`StepFailed`."""
    exc: Exception | None = None
    class_path, args = record.get("class"), record.get("args")
    if class_path and args is not None:
        try:
            cls = serializer.resolve_class(class_path)
            if issubclass(cls, Exception):
                exc = cls(*serializer.decode(args))
                if str(exc) != record.get("message"):
                    exc = None  # the class does not rebuild faithfully from its args
        except Exception:
            exc = None
    if exc is None:
        exc = StepFailed(str(record.get("type")), str(record.get("message")), record.get("traceback"))
    if record.get("traceback"):
        exc.add_note(f"recorded by werkfluss{where}; original traceback:\n{record['traceback']}")
    return exc


# --- the outcome of a run ----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str  # "completed" | "failed"
    result: str | None
    error: str | None
    error_type: str | None = None


class _Halt(Exception):
    """Internal: stop driving this run (it was released, abandoned or lost)."""


# --- the execution -----------------------------------------------------------------------


class RunExecution:
    """One claimed run being executed by a worker."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow: Workflow[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        lease: Lease,
        log: list[dict[str, Any]],
        recorder: Recorder,
        executor: Executor | None = None,
        on_halt: Callable[[RunExecution], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.args = args
        self.kwargs = kwargs
        self.lease = lease
        self.recorder = recorder
        self.executor = executor
        self._log = {int(entry["seq"]): entry for entry in log}
        self._last_logged = max(self._log, default=0)
        self._seq = 0
        self._on_halt = on_halt
        self.nondeterminism: NonDeterminismError | None = None
        self.halted: str | None = None  # why the worker stopped driving it
        self.stopping = False  # set by the worker: release at the next step boundary
        self.steps_run = 0

    # --- called by workflow code (through Step.__call__) ---------------------------

    def call_step(
        self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        seq, recorded = self._next_seq("step", step.name)
        return self._step(seq, recorded, step, args, kwargs)

    def call_child(self, workflow: Workflow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise WerkflussError(
            f"awaiting workflow {workflow.name} inside a run (a child run) is not supported yet; "
            "call its steps directly"
        )

    def _next_seq(self, kind: str, name: str) -> tuple[int, dict[str, Any] | None]:
        self._seq += 1
        seq = self._seq
        recorded = self._log.get(seq)
        if recorded is not None and (recorded["kind"] != kind or recorded["name"] != name):
            if self.nondeterminism is None:
                self.nondeterminism = NonDeterminismError(
                    self.run_id, seq,
                    f"{recorded['kind']} {recorded['name']!r}", f"{kind} {name!r}",
                )
            return seq, {"mismatch": True}
        return seq, recorded

    async def _step(
        self,
        seq: int,
        recorded: dict[str, Any] | None,
        step: Step[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if recorded is not None:
            if recorded.get("mismatch"):
                assert self.nondeterminism is not None
                raise self.nondeterminism
            if recorded["status"] == "completed":
                return serializer.decode(recorded["output"])
            raise rebuild_exception(recorded["error"], where=f" for run {self.run_id} seq {seq}")
        if self.stopping:
            self._halt("released")
        if self.nondeterminism is not None:
            raise self.nondeterminism  # never run new steps on a log that does not match
        input_json = serializer.dumps(
            {"args": list(args), "kwargs": kwargs}, what=f"the input of step {step.name}"
        )
        info = context.StepInfo(self.run_id, self.workflow.name, step.name, seq, 1)
        started = _now()
        outcome = await run_attempts(step, args, kwargs, info, self.executor)
        finished = _now()
        error = None if outcome.ok else error_record(outcome.error)  # type: ignore[arg-type]
        record = EventRecord(
            seq=seq, kind="step", name=step.name,
            status="completed" if outcome.ok else "failed",
            input=input_json, output=outcome.output,
            error=None if error is None else json.dumps(error, ensure_ascii=False),
            attempts=outcome.attempts, started_at=started, finished_at=finished,
        )
        await self._record(record)
        self.steps_run += 1
        log = telemetry.logger()
        if outcome.ok:
            if telemetry.debug_enabled():
                log.debug("step.completed", run_id=self.run_id, step=step.name, seq=seq,
                          attempts=outcome.attempts,
                          duration_ms=round((finished - started).total_seconds() * 1000, 3))
            return serializer.loads(outcome.output)
        log.info("step.failed", run_id=self.run_id, step=step.name, seq=seq,
                 attempts=outcome.attempts, error=f"{error['type']}: {error['message']}")  # type: ignore[index]
        rebuilt = rebuild_exception(error, where=f" for run {self.run_id} seq {seq}")  # type: ignore[arg-type]
        raise rebuilt from outcome.error

    async def _record(self, record: EventRecord) -> None:
        if self.halted:
            self._halt(self.halted)
        try:
            await self.recorder.append(self.lease, record)
        except LeaseLost:
            self._halt("lease_lost")
        except DatabaseError:
            self._halt("abandoned")

    def _halt(self, reason: str) -> None:
        """Stop this run here: the workflow's task is cancelled and nothing more is written."""
        if self.halted is None:
            self.halted = reason
            if self._on_halt is not None:
                self._on_halt(self)
        raise asyncio.CancelledError(f"werkfluss: run {self.run_id} {reason}")

    # --- driving the workflow ----------------------------------------------------------

    async def run(self) -> Outcome:
        """Run (or resume) the workflow to its outcome. Cancellation propagates."""
        token = context._execution.set(self)
        try:
            value = await self.workflow.fn(*self.args, **self.kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed(self.nondeterminism or exc)
        finally:
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
