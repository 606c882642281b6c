"""Keeping the runs a worker holds up to date: lease renewal, and reacting
to news about them (cancelled, a hook payload arrived, a child finished)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkfluss import telemetry
from werkfluss.errors import DatabaseError, LeaseLost

if TYPE_CHECKING:
    from werkfluss.engine import Engine
    from werkfluss.runtime.replay import RunExecution
    from werkfluss.store.recorder import Recorder


@dataclass
class _Held:
    execution: RunExecution
    task: asyncio.Task[None]
    finishing: bool = False
    deadline_timer: asyncio.TimerHandle | None = None


class HeldRuns:
    """Part of :class:`~werkfluss.worker.Worker`: what it does for runs it holds."""

    engine: Engine
    worker_id: str
    lease_seconds: float
    _held: dict[str, _Held]
    _background: set[asyncio.Task[Any]]

    @property
    def recorder(self) -> Recorder:
        raise NotImplementedError

    def _on_runs(self, payload: str | None) -> None:
        # Runs finished or were cancelled: one we hold may have been cancelled,
        # or a run we hold may be waiting for one of them (its child).
        if not self._held:
            return
        ids = list(self._held) if payload is None or payload == "*" else payload.split(",")
        suspects = [run_id for run_id in ids if run_id in self._held]
        parents = {run_id.rsplit(":", 1)[0] for run_id in ids} & self._held.keys()
        if payload in (None, "*"):
            parents = set(self._held)
        if suspects:
            self._spawn(self._check_cancelled(suspects))
        for parent in parents:
            self._spawn(self._refresh(parent))

    def _on_wake(self, payload: str | None) -> None:
        targets = list(self._held) if payload is None else [payload]
        for run_id in targets:
            if run_id in self._held:
                self._spawn(self._refresh(run_id))

    async def _refresh(self, run_id: str) -> None:
        """Read what a held run may be waiting for (payloads, finished children)."""
        held = self._held.get(run_id)
        if held is None:
            return
        try:
            row = await self.engine.connector.fetch_one("run_inputs", run_id=run_id)
        except DatabaseError:
            return  # the wake-up count tells the suspension; nothing is lost
        if row is not None and self._held.get(run_id) is held:
            held.execution.waits.add_inputs(
                row["wakeups"] or 0, json.loads(row["inbox"]), json.loads(row["children"])
            )

    async def _check_cancelled(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            held = self._held.get(run_id)
            if held is None or held.finishing:
                continue
            try:
                row = await self.engine.connector.fetch_one("get_run", run_id=run_id)
            except DatabaseError:
                return
            if row is not None and row["status"] == "cancelled":
                held.execution.halted = "cancelled"
                held.task.cancel()

    def _cancel_child(self, child_id: str) -> None:
        async def cancel() -> None:
            try:
                await self.engine.connector.fetch_one("cancel_run", run_id=child_id)
            except Exception as err:  # the child ends with its parent at the latest
                telemetry.logger().warning("worker.cancel_child_failed", run_id=child_id, error=str(err))

        self._spawn(cancel())

    def _spawn(self, coro: Any) -> None:
        """A small background task, kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- leases --------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        log = telemetry.logger()
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            held = {run_id: h for run_id, h in self._held.items() if not h.finishing}
            for h in held.values():
                h.execution.waits.poke()  # safety net: a run blocked on waits leaves
            if not held:
                last_ok = time.monotonic()
                continue
            try:
                renewed = await self.recorder.renew(
                    [h.execution.lease for h in held.values()], self.lease_seconds
                )
            except (DatabaseError, LeaseLost) as err:
                if time.monotonic() - last_ok > self.lease_seconds:
                    # Our leases have run out: others may own these runs now.
                    for run_id, h in held.items():
                        if self._held.get(run_id) is h:
                            h.execution.halted = "abandoned"
                            h.task.cancel()
                log.warning("worker.renew_failed", worker_id=self.worker_id, error=str(err))
                continue
            last_ok = time.monotonic()
            for run_id, h in held.items():
                if run_id not in renewed and self._held.get(run_id) is h and not h.finishing:
                    h.execution.halted = h.execution.halted or "lease_lost"
                    h.task.cancel()


