"""The write side of the log: every write a worker makes goes through one
:class:`Recorder`.

Writes (see :mod:`werkfluss.store.writes`) queue up while the previous batch
is being committed and are then written as *one* transaction (group commit):
one round trip and one fsync for the records of many concurrent runs. A
write's future resolves once it is committed (or fails).

One run's bad write never touches another run:

* a **transient** failure (connection lost, serialization failure, deadlock)
  retries the whole batch at once on a fresh connection — every statement is
  safe to run again — for as long as the worker is alive;
* a **refused value** (PostgreSQL cannot store it) makes the recorder write
  the batch run by run, write by write, so that the one write it refuses
  fails with :class:`~werkfluss.errors.RecordRefused` (with the writes of that
  run after it) and everything else commits.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from werkfluss import telemetry
from werkfluss.errors import DatabaseBusy, DatabaseUnavailable, LeaseLost, RecordRefused
from werkfluss.store.connector import Connector, Params
from werkfluss.store.writes import ORDER, CreateHook, FinishRun, ReleaseRun, SuspendRun, Write

# Writes that take a run off its worker: they free a slot of its queue and key.
RELEASING: tuple[type[Write], ...] = (SuspendRun, FinishRun, ReleaseRun)


class Recorder:
    """Group-committing writer for one worker.

    Example::

        recorder = Recorder(connector)
        recorder.start()
        write = AppendEvent(lease, record)
        recorder.submit(write)
        await write.future          # committed when this returns
        await recorder.stop()
    """

    def __init__(
        self,
        connector: Connector,
        *,
        max_batch: int = 1000,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._connector = connector
        self._max_batch = max_batch
        self._alive = alive
        self._pending: list[Write] = []
        # Leases with a write that was not committed: nothing later of theirs
        # may commit (a run's records commit in order, or not at all). A
        # refused value only bars what is not the run's (failed) outcome.
        self._broken: dict[str, tuple[BaseException, int]] = {}  # lease -> (error, last order then)
        self._orders = itertools.count(1)
        self._last_order = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0  # committed write transactions (for benchmarks and tests)
        self.records = 0
        self.retries = 0
        self.isolations = 0
        self.batch_sizes: list[int] = []  # recent batch sizes (telemetry reads and clears)

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
            for write in self._pending:
                write.fail(LeaseLost("the recorder stopped before writing"))
            self._pending.clear()

    def submit(self, write: Write) -> asyncio.Future[Any]:
        """Queue a write; its future resolves when it is committed."""
        self._last_order = write.order = next(self._orders)
        if self._task is None:
            write.fail(LeaseLost("the recorder is not running"))
        else:
            self._pending.append(write)
            self._wakeup.set()
        return write.future

    @property
    def queued(self) -> int:
        return len(self._pending)

    # --- the writer --------------------------------------------------------------------

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
            try:
                await self._write(batch)
                self._settled(batch)
            except asyncio.CancelledError:
                for write in batch:
                    write.fail(LeaseLost("the recorder was stopped in the middle of a write"))
                raise
            except Exception as err:  # a bug: fail the writes, keep the recorder alive
                telemetry.logger().error("recorder.write_failed", error=f"{type(err).__name__}: {err}",
                                         writes=len(batch))
                for write in batch:
                    write.fail(err)
                self._settled(batch)

    async def _write(self, batch: list[Write]) -> None:
        for attempt in itertools.count():
            try:
                await self._commit(batch)
                return
            except (DatabaseUnavailable, DatabaseBusy) as err:
                if not self._alive() or (self._closing and isinstance(err, DatabaseUnavailable)):
                    for write in batch:
                        write.fail(LeaseLost(f"the worker lost the database: {err}"))
                    return
                self.retries += 1
                if attempt == 0:
                    telemetry.logger().warning("recorder.retrying", error=str(err), writes=len(batch))
                await asyncio.sleep(0 if attempt == 0 else min(1.0, 0.05 * 2**attempt))
            except Exception as err:  # refused, or unexpected: find whose write it is
                if not isinstance(err, RecordRefused):
                    telemetry.logger().error("recorder.write_failed", error=f"{type(err).__name__}: {err}",
                                             writes=len(batch))
                self.isolations += 1
                await self._isolate(batch)
                return

    def _barred(self, write: Write) -> bool:
        """Fail ``write`` if an earlier write of its run was not committed."""
        broken = self._broken.get(write.lease.lease_id)
        if broken is None or write.future.done():
            return write.future.done()
        if isinstance(write, ReleaseRun):
            return False  # handing the run back is always safe: it resumes from what is committed
        error, last_order = broken
        if isinstance(error, RecordRefused) and isinstance(write, FinishRun) and write.order > last_order:
            return False  # the outcome the run was given after the refusal (it fails with it)
        write.fail(type(error)(f"{error} (an earlier write of run {write.lease.run_id} was not committed)"))
        return True

    def _settled(self, writes: Sequence[Write]) -> None:
        """Remember the runs whose writes failed, so their later writes are barred."""
        for write in writes:
            if write.future.done() and not write.future.cancelled():
                error = write.future.exception()
                if error is not None and write.lease.lease_id not in self._broken:
                    self._broken[write.lease.lease_id] = (error, self._last_order)
        if len(self._broken) > 10_000:  # runs long gone; a lease never comes back
            for key in list(self._broken)[:5_000]:
                del self._broken[key]

    async def _commit(self, batch: Sequence[Write]) -> None:
        by_kind: dict[type[Write], list[Write]] = {}
        for write in batch:
            if not self._barred(write):
                by_kind.setdefault(type(write), []).append(write)
        plan: list[tuple[type[Write] | None, list[Write]]] = []
        statements: list[tuple[str, Params]] = []
        # Advisory locks first, in the global lock order: hook tokens, then the
        # concurrency keys of the runs this batch takes off their worker.
        if CreateHook in by_kind:
            tokens = [w.token for w in by_kind[CreateHook]]  # type: ignore[attr-defined]
            statements.append(("lock_hook_tokens", {"tokens": tokens}))
            plan.append((None, []))
        releasing = [w.lease.run_id for kind in RELEASING for w in by_kind.get(kind, ()) if w.lease.keyed]
        if releasing:
            statements.append(("lock_flow_keys", {"run_ids": releasing}))
            plan.append((None, []))
        for kind in ORDER:
            writes = by_kind.get(kind)
            if not writes:
                continue
            statements.append((kind.statement, kind.params(writes)))
            plan.append((kind, writes))
        if not statements:
            return
        results = await self._connector.run_batch(statements)
        self.batches += 1
        self.batch_sizes.append(len(batch))
        if len(self.batch_sizes) > 1000:
            del self.batch_sizes[:500]
        if telemetry.debug_enabled():
            telemetry.logger().debug("recorder.committed", writes=len(batch))
        for (planned, writes), rows in zip(plan, results, strict=True):
            if planned is not None:
                if planned.kind == "append":
                    self.records += len(writes)
                planned.resolve(writes, rows)

    async def _isolate(self, batch: list[Write]) -> None:
        """Write run by run, write by write: fail only what PostgreSQL refuses."""
        by_run: dict[str, list[Write]] = {}
        for write in batch:
            by_run.setdefault(write.lease.run_id, []).append(write)
        log = telemetry.logger()
        for run_id, writes in by_run.items():
            for index, write in enumerate(writes):
                if self._barred(write):
                    continue
                try:
                    await self._write_alone(write)
                except Exception as err:
                    refused = err if isinstance(err, RecordRefused) else RecordRefused(
                        f"the write failed: {type(err).__name__}: {err}")
                    log.warning("recorder.write_refused", run_id=run_id, kind=write.kind, error=str(refused))
                    write.fail(refused)
                    self._broken[write.lease.lease_id] = (refused, self._last_order)
                    for later in writes[index + 1:]:
                        later.fail(RecordRefused(f"{refused} (an earlier write of run {run_id} was refused)"))
                    break

    async def _write_alone(self, write: Write) -> None:
        for attempt in itertools.count():
            try:
                await self._commit([write])
                return
            except (DatabaseUnavailable, DatabaseBusy) as err:
                if not self._alive():
                    write.fail(LeaseLost(f"the worker lost the database: {err}"))
                    return
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
