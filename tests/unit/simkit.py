"""Small helpers for the runtime tests driven through ``werkfluss.testing.Simulation``."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from werkfluss.records import LogRecord
from werkfluss.runtime import commands as cmd
from werkfluss.runtime.workflows import Workflow
from werkfluss.testing import SimulatedRun


def wf(fn: Callable[..., Coroutine[Any, Any, Any]], name: str | None = None) -> Workflow[..., Any]:
    """A workflow that stays out of the global registry (the tests define many)."""
    return Workflow(fn, name or f"tests.unit.{fn.__name__}")


def failure(run: SimulatedRun) -> dict[str, Any]:
    """The error record of a run that failed."""
    assert run.outcome is not None, f"run {run.run_id} has not finished (status: {run.status})"
    assert run.outcome.status == "failed", run.outcome
    assert run.outcome.result is None
    error: dict[str, Any] = json.loads(run.outcome.error or "{}")
    return error


def error_type(run: SimulatedRun) -> str | None:
    """The ``error_type`` of the run's outcome."""
    assert run.outcome is not None, f"run {run.run_id} has not finished (status: {run.status})"
    return run.outcome.error_type


def rows(log: Iterable[LogRecord]) -> list[tuple[int, str, str, str]]:
    """``(seq, kind, name, status)`` of each record, in commit order."""
    return [(r.seq, r.kind, r.name, r.status) for r in log]


def outputs(log: Iterable[LogRecord]) -> list[Any]:
    return [None if r.output is None else json.loads(r.output) for r in log]


def executed(commands: Iterable[cmd.Command]) -> list[int]:
    """Seqs of the steps whose bodies were asked for (``ExecuteStep``), in order."""
    return [c.seq for c in commands if isinstance(c, cmd.ExecuteStep)]


def cancelled(commands: Iterable[cmd.Command]) -> list[int]:
    return [c.seq for c in commands if isinstance(c, cmd.CancelStep)]


def kinds(commands: Iterable[cmd.Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


def since(run: SimulatedRun, mark: int) -> list[cmd.Command]:
    """The commands the run issued after ``mark = len(run.commands)`` was taken."""
    return run.commands[mark:]


def finishes(commands: Iterable[cmd.Command]) -> list[cmd.Finish]:
    return [c for c in commands if isinstance(c, cmd.Finish)]


def suspensions(commands: Iterable[cmd.Command]) -> list[cmd.Suspend]:
    return [c for c in commands if isinstance(c, cmd.Suspend)]


def outcome_key(outcome: cmd.Finish | None) -> tuple[Any, ...] | None:
    """What a run's outcome says: status, result, error type and message.

    ``has_children`` is left out: a replay that finds every child's outcome in
    the log does not start (nor count) them again, and there is nothing left
    to cancel either way."""
    if outcome is None:
        return None
    error = json.loads(outcome.error) if outcome.error else None
    message = error.get("message") if isinstance(error, dict) else None
    return (outcome.status, outcome.result, outcome.error_type, message)


def same_log(a: Iterable[LogRecord], b: Iterable[LogRecord]) -> bool:
    return [_comparable(r) for r in a] == [_comparable(r) for r in b]


def _comparable(record: LogRecord) -> tuple[Any, ...]:
    error = json.loads(record.error) if record.error else None
    if isinstance(error, dict):
        error = (error.get("type"), error.get("message"))
    return (record.seq, record.kind, record.name, record.status, record.input, record.output, error,
            record.attempts, record.started_at, record.finished_at, record.consumes)
