"""Commands out, results in: what a run asks its worker to do.

The runtime never does I/O. A :class:`~werkfluss.runtime.instance.WorkflowInstance`
turns what happened (a step finished, a payload arrived, time passed) into
commands; the worker carries them out and feeds the results back. Every
command is a small frozen dataclass, so a test can run a workflow against a
list instead of a database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkfluss.records import LogRecord

if TYPE_CHECKING:
    from werkfluss.flow import RateLimit
    from werkfluss.runtime.context import StepInfo
    from werkfluss.runtime.steps import Step


@dataclass(frozen=True, slots=True)
class ExecuteStep:
    """Run a step body (with its retries) once every earlier write of the run is committed."""

    seq: int
    step: Step[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    info: StepInfo
    #: The bucket each attempt takes a token from (the step's rate limit, for its key).
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class CancelStep:
    """Stop a step body that is no longer wanted (its call was cancelled)."""

    seq: int


@dataclass(frozen=True, slots=True)
class AppendRecord:
    """Append a record to the run's log (fenced by the lease, committed in order)."""

    record: LogRecord


@dataclass(frozen=True, slots=True)
class CreateHook:
    """Create a hook and its log record; the result comes back as ``hook_created``."""

    seq: int
    token: str
    multi: bool
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class MarkHookMulti:
    """Let a hook receive many payloads (the workflow iterates it)."""

    token: str


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start a child run (idempotent by its id); the result comes back as ``child_started``."""

    seq: int
    child_id: str
    workflow: str
    args: str  # JSON text
    kwargs: str  # JSON text


@dataclass(frozen=True, slots=True)
class CancelChild:
    """Cancel a child run that is no longer wanted."""

    child_id: str


@dataclass(frozen=True, slots=True)
class Suspend:
    """Leave the worker until ``wake_at`` or until one of ``events`` happens."""

    status: str  # "sleeping" | "waiting"
    wake_at: dt.datetime | None
    events: tuple[str, ...]  # "hook:<token>" | "run:<child id>"


@dataclass(frozen=True, slots=True)
class Finish:
    """Commit the run's outcome."""

    status: str  # "completed" | "failed"
    result: str | None  # JSON text
    error: str | None  # JSON text of the error record
    error_type: str | None = None
    has_children: bool = False  # cancel unfinished children once committed


@dataclass(frozen=True, slots=True)
class Release:
    """Hand the run back to the queue, claimable at once (the worker is stopping)."""


Command = (
    ExecuteStep | CancelStep | AppendRecord | CreateHook | MarkHookMulti | StartChild | CancelChild
    | Suspend | Finish | Release
)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What running a step body (with its retries) produced."""

    ok: bool
    output: str | None  # JSON text of the value when ok
    error: dict[str, Any] | None  # error record when not ok
    attempts: int
    started_at: dt.datetime
    exception: BaseException | None = None  # the live exception (for a traceback chain)
