"""Every write a worker makes for the runs it holds, one small dataclass each.

A write knows its statement (a named query), how a list of writes of its
kind becomes that statement's parameters, and how the statement's rows
resolve each write's future. Every write is fenced by the run's lease: a
worker that no longer holds a run cannot write anything for it, and its
future fails with :class:`LeaseLost`.

The :class:`~werkfluss.store.recorder.Recorder` batches writes of many runs
into one transaction, one statement per kind, in :data:`ORDER` (the global
lock order: hook tokens' advisory locks, then those of concurrency keys, then queue
rows, then runs rows).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from werkfluss.errors import LeaseLost
from werkfluss.records import LogRecord, Payload
from werkfluss.store.connector import Params, Row


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on one run; ``lease_id`` changes with every claim."""

    run_id: str
    lease_id: str
    # The run has a concurrency key: taking it off its worker may unpark the
    # key's next run, under the key's lock (unknown: assume it has).
    keyed: bool = True


@dataclass(eq=False)
class Write:
    """Base class: one write for one run, resolved through ``future``."""

    lease: Lease
    future: asyncio.Future[Any] = field(init=False, repr=False)
    order: int = field(init=False, default=0, repr=False)  # set by the recorder: submission order

    kind: ClassVar[str]
    statement: ClassVar[str]
    what: ClassVar[str]

    def __post_init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()

    @staticmethod
    def params(writes: Sequence[Any]) -> Params:
        raise NotImplementedError

    @staticmethod
    def resolve(writes: Sequence[Any], rows: list[Row]) -> None:
        raise NotImplementedError

    def settle(self, value: Any = None) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def lost(self) -> None:
        self.fail(LeaseLost(
            f"run {self.lease.run_id}: this worker no longer holds it; {self.what} not written"))


def _leases(writes: Sequence[Write]) -> dict[str, list[str]]:
    return {"run_ids": [w.lease.run_id for w in writes], "lease_ids": [w.lease.lease_id for w in writes]}


@dataclass(eq=False)
class CreateHook(Write):
    seq: int
    token: str
    multi: bool
    at: dt.datetime

    kind = "hook"
    statement = "create_hooks"
    what = "hook"

    @staticmethod
    def params(writes: Sequence[CreateHook]) -> Params:
        return {
            **_leases(writes),
            "seqs": [w.seq for w in writes],
            "tokens": [w.token for w in writes],
            "multis": [w.multi for w in writes],
            "ats": [w.at for w in writes],
        }

    @staticmethod
    def resolve(writes: Sequence[CreateHook], rows: list[Row]) -> None:
        by_key = {(r["run_id"], r["seq"]): r for r in rows}
        for w in writes:
            row = by_key.get((w.lease.run_id, w.seq))
            if row is None:
                w.lost()
                continue
            error = None
            if not row["created"]:
                error = {
                    "type": "werkfluss.errors.HookConflict",
                    "class": "werkfluss.errors:HookConflict",
                    "message": f"hook token {w.token} is already used by run {row['owner_run']}; "
                               "choose a token unique to this run",
                    "args": [w.token, row["owner_run"]],
                }
            early = [payload_from_json(p) for p in json.loads(row["early"] or "[]")]
            w.settle(HookCreation(error, early))


@dataclass(frozen=True, slots=True)
class HookCreation:
    error: dict[str, Any] | None  # None: created
    early: list[Payload]  # payloads sent before the hook existed


@dataclass(eq=False)
class StartChild(Write):
    seq: int
    child_id: str
    workflow: str
    args: str
    kwargs: str
    traceparent: str | None = None  # the parent's run span, for the child's spans

    kind = "child"
    statement = "start_children"
    what = "child run"

    @staticmethod
    def params(writes: Sequence[StartChild]) -> Params:
        return {
            **_leases(writes),
            "seqs": [w.seq for w in writes],
            "child_ids": [w.child_id for w in writes],
            "workflows": [w.workflow for w in writes],
            "args": [w.args for w in writes],
            "kwargs": [w.kwargs for w in writes],
            "traceparents": [w.traceparent for w in writes],
        }

    @staticmethod
    def resolve(writes: Sequence[StartChild], rows: list[Row]) -> None:
        by_key = {(r["run_id"], r["seq"]): r for r in rows}
        for w in writes:
            row = by_key.get((w.lease.run_id, w.seq))
            if row is None:
                w.lost()
            elif row["started"]:
                w.settle(None)
            else:
                w.settle({
                    "type": "werkfluss.errors.RunIdConflict",
                    "message": f"the child run id {w.child_id} is already taken by another run",
                })


@dataclass(eq=False)
class AppendEvent(Write):
    record: LogRecord
    child_id: str | None = None  # a child whose outcome this record delivers

    kind = "append"
    statement = "append_events"
    what = "record"

    @staticmethod
    def params(writes: Sequence[AppendEvent]) -> Params:
        records = [w.record for w in writes]
        return {
            **_leases(writes),
            "seqs": [r.seq for r in records],
            "kinds": [r.kind for r in records],
            "names": [r.name for r in records],
            "statuses": [r.status for r in records],
            "inputs": [r.input for r in records],
            "outputs": [r.output for r in records],
            "errors": [r.error for r in records],
            "attempts": [r.attempts for r in records],
            "started_ats": [r.started_at for r in records],
            "finished_ats": [r.finished_at for r in records],
            "consumes": [r.consumes for r in records],
            "children": [w.child_id for w in writes],
        }

    @staticmethod
    def resolve(writes: Sequence[AppendEvent], rows: list[Row]) -> None:
        landed = {(r["run_id"], r["seq"]) for r in rows}
        for w in writes:
            if (w.lease.run_id, w.record.seq) in landed:
                w.settle()
            else:
                w.lost()


@dataclass(eq=False)
class MarkHookMulti(Write):
    token: str

    kind = "multi"
    statement = "mark_hooks_multi"
    what = "hook"

    @staticmethod
    def params(writes: Sequence[MarkHookMulti]) -> Params:
        return {**_leases(writes), "tokens": [w.token for w in writes]}

    @staticmethod
    def resolve(writes: Sequence[MarkHookMulti], rows: list[Row]) -> None:
        for w in writes:
            w.settle()


@dataclass(eq=False)
class SuspendRun(Write):
    status: str
    wake_at: dt.datetime | None
    due_at: dt.datetime | None
    waiting_on: str | None
    wakeups: int

    kind = "suspend"
    statement = "suspend_runs"
    what = "suspension"

    @staticmethod
    def params(writes: Sequence[SuspendRun]) -> Params:
        return {
            **_leases(writes),
            "statuses": [w.status for w in writes],
            "wake_ats": [w.wake_at for w in writes],
            "due_ats": [w.due_at for w in writes],
            "waiting_ons": [w.waiting_on for w in writes],
            "wakeups": [w.wakeups for w in writes],
        }

    @staticmethod
    def resolve(writes: Sequence[SuspendRun], rows: list[Row]) -> None:
        """True: suspended; False: an input arrived meanwhile (the run stays held)."""
        held = {r["run_id"]: bool(r["suspended"]) for r in rows}
        for w in writes:
            if w.lease.run_id in held:
                w.settle(held[w.lease.run_id])
            else:
                w.lost()


@dataclass(eq=False)
class FinishRun(Write):
    status: str
    result: str | None
    error: str | None

    kind = "finish"
    statement = "finish_runs"
    what = "outcome"

    @staticmethod
    def params(writes: Sequence[FinishRun]) -> Params:
        return {
            **_leases(writes),
            "statuses": [w.status for w in writes],
            "results": [w.result for w in writes],
            "errors": [w.error for w in writes],
        }

    @staticmethod
    def resolve(writes: Sequence[FinishRun], rows: list[Row]) -> None:
        done = set(rows[0]["run_ids"]) if rows else set()
        for w in writes:
            if w.lease.run_id in done:
                w.settle()
            else:
                w.lost()


@dataclass(eq=False)
class ReleaseRun(Write):
    kind = "release"
    statement = "release_runs"
    what = "release"

    @staticmethod
    def params(writes: Sequence[ReleaseRun]) -> Params:
        return _leases(writes)

    @staticmethod
    def resolve(writes: Sequence[ReleaseRun], rows: list[Row]) -> None:
        done = set(rows[0]["run_ids"]) if rows else set()
        for w in writes:
            if w.lease.run_id in done:
                w.settle()
            else:
                w.lost()


# One statement per kind, in this order (the global lock order).
ORDER: tuple[type[Write], ...] = (CreateHook, StartChild, AppendEvent, MarkHookMulti, SuspendRun,
                                  FinishRun, ReleaseRun)


def payload_from_json(entry: dict[str, Any]) -> Payload:
    """A payload as ``_run_inputs`` and ``create_hooks`` return it (JSON)."""
    received = entry["received_at"]
    if isinstance(received, str):
        received = dt.datetime.fromisoformat(received)
    return Payload(int(entry["id"]), str(entry["token"]),
                   json.dumps(entry["payload"], ensure_ascii=False, separators=(",", ":")), received)
