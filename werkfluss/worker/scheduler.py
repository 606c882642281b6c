"""The scheduler: fires the ticks of the schedules of the workflows a worker serves.

Every worker runs one; no election is needed. A pass reads the schedules
whose next tick has come by the database's clock, lets
:meth:`Schedule.plan <werkfluss.cron.Schedule.plan>` decide which ticks get a
run (catch-up), and asks the database to fire them: ``_fire_schedule``
starts each tick's run at the id ``schedule:<name>:<tick in UTC>`` and moves
the next tick on, only if the schedule's revision is still the one read. So
of all the workers that computed the same ticks one fires them, and a worker
killed at any point leaves either nothing or everything of a pass's
fire behind: the next pass (any worker's) takes it from there.

Between passes the scheduler waits until the next tick (seconds counted by
the database), a notification that a schedule changed (``werkfluss_queue``
with ``schedule:<workflow>``), or the poll interval.

    scheduler = Scheduler(connector, workflows=["app.reports.nightly"], poll_interval=5.0)
    seconds = await scheduler.run_once()   # fire what is due now; seconds until the next tick
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import cast

from werkfluss import telemetry
from werkfluss.cron import Catchup, Overlap, Schedule
from werkfluss.errors import InvalidArgument
from werkfluss.store import schedules
from werkfluss.store.connector import Connector
from werkfluss.store.schedules import StoredSchedule

# Schedules handled per read; more due ones are read again at once.
BATCH = 100


class Scheduler:
    """Fires the due ticks of ``workflows``' schedules; ``start()``/``stop()`` or :meth:`run_once`."""

    def __init__(
        self, connector: Connector, *, workflows: Sequence[str], poll_interval: float, worker_id: str = ""
    ) -> None:
        self._connector = connector
        self.workflows = sorted(workflows)
        self.poll_interval = poll_interval
        self.worker_id = worker_id
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Test signals: passes made, runs started, fires lost to another worker.
        self.passes = 0
        self.started = 0
        self.lost = 0

    def notified(self, payload: str | None) -> None:
        """A ``werkfluss_queue`` notification: look again if a schedule of ours changed."""
        if payload is None or (payload.startswith("schedule:") and payload[9:] in self.workflows):
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name="werkfluss-scheduler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            self._wake.set()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        log = telemetry.logger()
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = await self.run_once()
            except Exception as err:  # the loop must outlive any single failure
                if failures == 0:
                    log.warning("schedule.pass_failed", worker_id=self.worker_id, error=str(err),
                                error_type=type(err).__name__)
                failures += 1
                wait = min(self.poll_interval, 0.05 * 2**min(failures, 6))
            else:
                failures = 0
            delay = self.poll_interval if wait is None else min(self.poll_interval, max(wait, 0.0) + 0.002)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def run_once(self) -> float | None:
        """Fire every due tick; return the seconds until the next one (``None``: none is coming)."""
        due, now = await schedules.due_schedules(self._connector, workflows=self.workflows, limit=BATCH)
        for stored in due:
            assert now is not None
            await self._handle(stored, now)
        self.passes += 1
        if len(due) == BATCH:
            return 0.0
        return await schedules.seconds_until_next_tick(self._connector, workflows=self.workflows)

    async def _handle(self, stored: StoredSchedule, now: dt.datetime) -> None:
        log = telemetry.logger()
        try:
            spec = Schedule(stored.cron, timezone=stored.timezone, catchup=cast(Catchup, stored.catchup),
                            overlap=cast(Overlap, stored.overlap), catchup_limit=stored.catchup_limit)
            first = stored.next_tick if stored.next_tick is not None else spec.next_tick(stored.since)
            plan = None if first is None else spec.plan(first, now)
        except InvalidArgument as err:
            # Only a definition given through SQL can get here: Python checks before storing.
            await self._break(stored, str(err))
            return
        if plan is None or plan.next_tick is None:
            await self._break(stored, f"{stored.cron!r} has no tick within 50 years")
            return
        run_ids = await schedules.fire(self._connector, name=stored.name, revision=stored.revision,
                                       ticks=plan.ticks, next_tick=plan.next_tick, skipped=plan.skipped)
        if run_ids is None:
            self.lost += 1
            return
        self.started += len(run_ids)
        if plan.ticks or plan.skipped:
            log.info("schedule.fired", schedule=stored.name, workflow=stored.workflow, run_ids=run_ids,
                     skipped=plan.skipped + len(plan.ticks) - len(run_ids),
                     next_tick=plan.next_tick.isoformat(), worker_id=self.worker_id)

    async def _break(self, stored: StoredSchedule, error: str) -> None:
        telemetry.logger().error("schedule.broken", schedule=stored.name, workflow=stored.workflow,
                                 error=error, worker_id=self.worker_id)
        await schedules.mark_broken(self._connector, name=stored.name, revision=stored.revision, error=error)
