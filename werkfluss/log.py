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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from werkfluss import telemetry
from werkfluss.connector import Connector, Params
from werkfluss.errors import DatabaseError, LeaseLost


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
        appends = [op for op in batch if op.kind == "append"]
        finishes = [op for op in batch if op.kind == "finish"]
        renews = [op for op in batch if op.kind == "renew"]
        statements: list[tuple[str, Params]] = []
        if appends:
            statements.append(("append_events", _append_params(appends)))
        if finishes:
            statements.append(("finish_runs", _finish_params(finishes)))
        if renews:
            leases = [lease for op in renews for lease in op.payload[0]]
            statements.append(("renew_leases", {
                "run_ids": [lease.run_id for lease in leases],
                "lease_ids": [lease.lease_id for lease in leases],
                "lease_seconds": max(op.payload[1] for op in renews),
            }))
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
        self.records += len(appends)
        rows = iter(results)
        if appends:
            landed = {(r["run_id"], r["seq"]) for r in next(rows)}
            for op in appends:
                key = (op.lease.run_id, op.payload.seq)
                _resolve(op, key in landed, "record")
        if finishes:
            done = set(next(rows)[0]["run_ids"])
            for op in finishes:
                _resolve(op, op.lease.run_id in done, "outcome")
        if renews:
            renewed = {r["run_id"] for r in next(rows)}
            for op in renews:
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
    }


def _finish_params(ops: list[_Op]) -> Params:
    return {
        "run_ids": [op.lease.run_id for op in ops],
        "lease_ids": [op.lease.lease_id for op in ops],
        "statuses": [op.payload[0] for op in ops],
        "results": [op.payload[1] for op in ops],
        "errors": [op.payload[2] for op in ops],
    }
