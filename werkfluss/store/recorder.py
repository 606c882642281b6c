"""The event log's write side: every record a worker makes goes through one
:class:`Recorder`.

A workflow awaits ``recorder.append(lease, record)`` and continues only once
the record is committed. The recorder writes whatever has queued up while the
previous write was in flight as *one* transaction (group commit): one round
trip and one fsync for the records of many concurrent runs. Every write is
fenced by the run's lease, so a worker that lost a run cannot record anything
for it; such writes fail with :class:`LeaseLost`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from werkfluss import telemetry
from werkfluss.errors import DatabaseError, LeaseLost
from werkfluss.store.connector import Connector, Params, Row


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on one run; ``lease_id`` changes with every claim."""

    run_id: str
    lease_id: str


@dataclass(slots=True)
class EventRecord:
    """One entry of a run's log, as written. JSON fields hold serialized text."""

    seq: int
    kind: str
    name: str
    status: str  # "completed" | "failed"
    input: str | None
    output: str | None
    error: str | None
    attempts: int
    started_at: dt.datetime
    finished_at: dt.datetime
    consumes: int | None = None  # id of the hook payload this record holds


@dataclass(slots=True)
class _Op:
    kind: str  # "append" | "finish" | "renew"
    lease: Lease
    payload: Any
    future: asyncio.Future[Any] = field(repr=False)


class Recorder:
    """Group-committing writer for one worker.

    Example::

        recorder = Recorder(connector)
        recorder.start()
        await recorder.append(lease, record)         # committed when this returns
        await recorder.finish(lease, "completed", '"done"', None)
        await recorder.stop()
    """

    def __init__(self, connector: Connector, *, max_batch: int = 1000) -> None:
        self._connector = connector
        self._max_batch = max_batch
        self._pending: list[_Op] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0  # committed write transactions (for benchmarks and tests)
        self.records = 0

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="werkfluss-recorder")

    async def stop(self) -> None:
        """Write everything already submitted, then stop."""
        task = self._task
        if task is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await task
        finally:
            self._task = None
            for op in self._pending:
                if not op.future.done():
                    op.future.set_exception(LeaseLost("the recorder stopped before writing"))
            self._pending.clear()

    # --- what workflows await ----------------------------------------------------

    async def append(self, lease: Lease, record: EventRecord) -> None:
        """Commit one log record for the run held by ``lease``."""
        await self._submit("append", lease, record)

    async def finish(
        self, lease: Lease, status: str, result: str | None, error: str | None
    ) -> None:
        """Commit a run's outcome (``completed``/``failed``); it leaves the queue."""
        await self._submit("finish", lease, (status, result, error))

    async def suspend(
        self,
        lease: Lease,
        status: str,
        wake_at: dt.datetime | None,
        due_at: dt.datetime | None,
        waiting_on: str | None,
        wakeups: int,
    ) -> None:
        """Release a sleeping or waiting run until ``due_at`` (or until an event)."""
        await self._submit("suspend", lease, (status, wake_at, due_at, waiting_on, wakeups))

    async def create_hook(
        self, lease: Lease, seq: int, token: str, multi: bool, at: dt.datetime
    ) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
        """Create a hook and its log record; returns (status, error, early payloads)."""
        result: tuple[str, dict[str, Any] | None, list[dict[str, Any]]] = await self._submit(
            "hook", lease, (seq, token, multi, at)
        )
        return result

    async def start_child(
        self, lease: Lease, seq: int, child_id: str, workflow: str, args: str, kwargs: str,
        at: dt.datetime,
    ) -> None:
        """Start a child run and record its start in the parent's log."""
        await self._submit("child", lease, (seq, child_id, workflow, args, kwargs, at))

    async def mark_multi(self, token: str) -> None:
        """Let a hook receive many payloads (the workflow iterates it)."""
        await self._submit("multi", Lease("", ""), token)

    async def renew(self, leases: Iterable[Lease], lease_seconds: float) -> set[str]:
        """Extend leases; return the run ids still held (the rest were lost)."""
        leases = list(leases)
        if not leases:
            return set()
        held: set[str] = await self._submit("renew", leases[0], (leases, lease_seconds))
        return held

    def _submit(self, kind: str, lease: Lease, payload: Any) -> asyncio.Future[Any]:
        if self._task is None:
            raise LeaseLost("the recorder is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(kind, lease, payload, future))
        self._wakeup.set()
        return future

    # --- the writer ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: len(batch)]
            await self._write(batch)

    async def _write(self, batch: list[_Op]) -> None:
        by_kind: dict[str, list[_Op]] = {}
        for op in batch:
            by_kind.setdefault(op.kind, []).append(op)
        # One statement per kind, in an order that keeps every lock order:
        # hook tokens' advisory locks first, then queue rows, then runs rows.
        plan: list[tuple[str, list[_Op]]] = []
        statements: list[tuple[str, Params]] = []
        for kind in _ORDER:
            ops = by_kind.get(kind)
            if not ops:
                continue
            if kind == "hook":
                statements.append(("lock_hook_tokens", {"tokens": [op.payload[1] for op in ops]}))
                plan.append(("", []))
            statements.append((_STATEMENTS[kind], _PARAMS[kind](ops)))
            plan.append((kind, ops))
        try:
            results = await self._connector.run_batch(statements)
        except asyncio.CancelledError as err:  # stopped mid-write: nobody knows if it landed
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(LeaseLost(f"write interrupted: {err!r}"))
            raise
        except Exception as err:
            # The whole batch failed (connection lost, or a value the driver
            # could not send). Its runs are abandoned; the recorder carries on.
            telemetry.logger().warning("recorder.write_failed", error=str(err), ops=len(batch))
            failure = err if isinstance(err, DatabaseError) else DatabaseError(f"write failed: {err!r}")
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(failure)
            return
        self.batches += 1
        self.records += len(by_kind.get("append", ()))
        for (kind, ops), rows in zip(plan, results, strict=True):
            if kind:
                _RESOLVE[kind](ops, rows)


def _resolve_append(ops: list[_Op], rows: list[Row]) -> None:
    landed = {(r["run_id"], r["seq"]) for r in rows}
    for op in ops:
        _resolve(op, (op.lease.run_id, op.payload.seq) in landed, "record")


def _resolve_by_run(what: str) -> Any:
    def resolve(ops: list[_Op], rows: list[Row]) -> None:
        done = set(rows[0]["run_ids"]) if rows else set()
        for op in ops:
            _resolve(op, op.lease.run_id in done, what)

    return resolve


def _resolve_hooks(ops: list[_Op], rows: list[Row]) -> None:
    by_key = {(r["run_id"], r["seq"]): r for r in rows}
    for op in ops:
        row = by_key.get((op.lease.run_id, op.payload[0]))
        if row is None:
            _resolve(op, False, "hook")
        elif not op.future.done():
            error = json.loads(row["error"]) if row["error"] else None
            op.future.set_result((row["status"], error, json.loads(row["early"] or "[]")))


def _resolve_children(ops: list[_Op], rows: list[Row]) -> None:
    landed = {(r["run_id"], r["seq"]) for r in rows}
    for op in ops:
        _resolve(op, (op.lease.run_id, op.payload[0]) in landed, "child run")


def _resolve_done(ops: list[_Op], rows: list[Row]) -> None:
    for op in ops:
        if not op.future.done():
            op.future.set_result(None)


def _resolve_renew(ops: list[_Op], rows: list[Row]) -> None:
    renewed = {r["run_id"] for r in rows}
    for op in ops:
        if not op.future.done():
            op.future.set_result({x.run_id for x in op.payload[0]} & renewed)


def _resolve(op: _Op, landed: bool, what: str) -> None:
    if op.future.done():
        return
    if landed:
        op.future.set_result(True)
    else:
        op.future.set_exception(
            LeaseLost(f"run {op.lease.run_id}: this worker no longer holds it; {what} not written")
        )


def _append_params(ops: list[_Op]) -> Params:
    records: list[EventRecord] = [op.payload for op in ops]
    return {
        "run_ids": [op.lease.run_id for op in ops],
        "lease_ids": [op.lease.lease_id for op in ops],
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
    }


def _hook_params(ops: list[_Op]) -> Params:
    return {
        "run_ids": [op.lease.run_id for op in ops],
        "lease_ids": [op.lease.lease_id for op in ops],
        "seqs": [op.payload[0] for op in ops],
        "tokens": [op.payload[1] for op in ops],
        "multis": [op.payload[2] for op in ops],
        "ats": [op.payload[3] for op in ops],
    }


def _child_params(ops: list[_Op]) -> Params:
    return {
        "run_ids": [op.lease.run_id for op in ops],
        "lease_ids": [op.lease.lease_id for op in ops],
        "seqs": [op.payload[0] for op in ops],
        "child_ids": [op.payload[1] for op in ops],
        "workflows": [op.payload[2] for op in ops],
        "args": [op.payload[3] for op in ops],
        "kwargs": [op.payload[4] for op in ops],
        "deadlines": [None for _ in ops],
        "ats": [op.payload[5] for op in ops],
    }


def _suspend_params(ops: list[_Op]) -> Params:
    return {
        "run_ids": [op.lease.run_id for op in ops],
        "lease_ids": [op.lease.lease_id for op in ops],
        "statuses": [op.payload[0] for op in ops],
        "wake_ats": [op.payload[1] for op in ops],
        "due_ats": [op.payload[2] for op in ops],
        "waiting_ons": [op.payload[3] for op in ops],
        "wakeups": [op.payload[4] for op in ops],
    }


def _multi_params(ops: list[_Op]) -> Params:
    return {"tokens": [op.payload for op in ops]}


def _renew_params(ops: list[_Op]) -> Params:
    leases = [lease for op in ops for lease in op.payload[0]]
    return {
        "run_ids": [lease.run_id for lease in leases],
        "lease_ids": [lease.lease_id for lease in leases],
        "lease_seconds": max(op.payload[1] for op in ops),
    }


def _finish_params(ops: list[_Op]) -> Params:
    return {
        "run_ids": [op.lease.run_id for op in ops],
        "lease_ids": [op.lease.lease_id for op in ops],
        "statuses": [op.payload[0] for op in ops],
        "results": [op.payload[1] for op in ops],
        "errors": [op.payload[2] for op in ops],
    }


_ORDER = ("hook", "child", "append", "multi", "suspend", "finish", "renew")
_STATEMENTS = {
    "hook": "create_hooks",
    "child": "start_children",
    "append": "append_events",
    "multi": "mark_hooks_multi",
    "suspend": "suspend_runs",
    "finish": "finish_runs",
    "renew": "renew_leases",
}
_PARAMS = {
    "hook": _hook_params,
    "child": _child_params,
    "append": _append_params,
    "multi": _multi_params,
    "suspend": _suspend_params,
    "finish": _finish_params,
    "renew": _renew_params,
}
_RESOLVE = {
    "hook": _resolve_hooks,
    "child": _resolve_children,
    "append": _resolve_append,
    "multi": _resolve_done,
    "suspend": _resolve_by_run("suspension"),
    "finish": _resolve_by_run("outcome"),
    "renew": _resolve_renew,
}
