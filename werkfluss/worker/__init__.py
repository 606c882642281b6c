"""The worker: claims runs of the workflows it knows and executes them.

In-process::

    async with engine.worker(concurrency=32):
        ...                         # runs are executed while the block runs

As a process (``python -m werkfluss.worker --app myapp.workflows``), see
:mod:`werkfluss.worker.__main__`.

What a worker does:

* **Claims** due runs with ``FOR UPDATE SKIP LOCKED`` when it has free slots,
  woken by ``LISTEN/NOTIFY`` and by the next known due time, with a slow poll
  as the safety net.
* **Renews** the leases of the runs it holds every ``lease / 3`` seconds; a run
  whose lease could not be renewed is dropped at once (another worker may
  have it by now).
* **Stops gracefully**: no new claims; in-flight steps finish and are recorded,
  then each run is released at its next step boundary and made claimable at
  once (not left to lease expiry); after ``shutdown_grace`` seconds whatever is
  still running is cancelled and released.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from werkfluss import telemetry
from werkfluss.durations import Duration, parse_duration
from werkfluss.errors import ConfigurationError, DatabaseError, InvalidArgument, LeaseLost
from werkfluss.runtime import workflows
from werkfluss.runtime.failures import error_json
from werkfluss.runtime.replay import Outcome, RunExecution
from werkfluss.store import dispatch
from werkfluss.store.connector import sleep_backoff
from werkfluss.store.listener import QUEUE_CHANNEL, RUNS_CHANNEL, WAKE_CHANNEL
from werkfluss.store.migrations import check_schema
from werkfluss.store.recorder import Lease, Recorder
from werkfluss.worker.held import HeldRuns, _Held

if TYPE_CHECKING:
    from werkfluss.engine import Engine
    from werkfluss.runtime.workflows import Workflow


class Worker(HeldRuns):
    """Executes runs from the database; use ``async with`` or ``start()``/``stop()``.

    Parameters:
        concurrency: runs executed at the same time (default 10).
        workflows: the workflows (objects or names) to serve; default: all
            registered in this process when the worker starts.
        lease: how long a claim lasts without renewal (default ``"30s"``); a
            killed worker's runs are taken over after at most this long.
        poll_interval: the safety-net poll when no notification arrives (``"5s"``).
        shutdown_grace: how long ``stop()`` lets in-flight steps finish (``"10s"``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int = 10,
        workflows: Iterable[Workflow[..., Any] | str] | None = None,
        lease: Duration = "30s",
        poll_interval: Duration = "5s",
        shutdown_grace: Duration = "10s",
        worker_id: str | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        self.engine = engine
        self.concurrency = concurrency
        self.lease_seconds = parse_duration(lease, what="lease", allow_zero=False)
        self.poll_interval = parse_duration(poll_interval, what="poll_interval", allow_zero=False)
        self.shutdown_grace = parse_duration(shutdown_grace, what="shutdown_grace")
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._requested = list(workflows) if workflows is not None else None
        self._workflows: dict[str, Workflow[..., Any]] = {}
        self._held: dict[str, _Held] = {}
        self._to_release: list[Lease] = []
        self._recorder: Recorder | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=max(4, concurrency), thread_name_prefix="werkfluss-step"
        )
        self._wake = asyncio.Event()
        self._maybe_more = False
        self._stopping = False
        self._started = False
        self._force = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Any] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.runs_finished = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def workflow_names(self) -> list[str]:
        return sorted(self._workflows)

    @property
    def recorder(self) -> Recorder:
        if self._recorder is None:
            raise RuntimeError("the worker has not started")
        return self._recorder

    async def start(self) -> None:
        """Check the schema, start listening, and begin claiming."""
        if self._started:
            return
        self._workflows = self._resolve_workflows()
        await self.engine.open()
        await check_schema(self.engine.connector)
        listener = await self.engine._listener_ready()
        self._unsubscribe = [
            listener.subscribe(QUEUE_CHANNEL, self._on_queue),
            listener.subscribe(RUNS_CHANNEL, self._on_runs),
            listener.subscribe(WAKE_CHANNEL, self._on_wake),
        ]
        self._recorder = Recorder(self.engine.connector)
        self._recorder.start()
        self._started = True
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="werkfluss-claimer"),
            asyncio.create_task(self._renew_loop(), name="werkfluss-renewer"),
        ]
        telemetry.logger().info(
            "worker.started",
            worker_id=self.worker_id,
            workflows=self.workflow_names,
            concurrency=self.concurrency,
            lease_s=self.lease_seconds,
        )

    def _resolve_workflows(self) -> dict[str, Workflow[..., Any]]:
        if self._requested is None:
            found = workflows.registered()
        else:
            found = {}
            for item in self._requested:
                wf = item if isinstance(item, workflows.Workflow) else workflows.get(item)
                found[wf.name] = wf
        if not found:
            raise ConfigurationError(
                "this worker has no workflows to serve: import the module that defines them "
                "before starting it (python -m werkfluss.worker --app myapp.workflows)"
            )
        return found

    async def stop(self, grace: Duration | None = None) -> None:
        """Stop claiming, let in-flight steps finish (up to the grace period),
        release every run still held, and shut down."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        log = telemetry.logger()
        log.info("worker.stopping", worker_id=self.worker_id, running=len(self._held))
        claimer, renewer = self._tasks
        # Let the claim loop finish its round trip rather than cancel it mid-query.
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(claimer), timeout=5)
        except TimeoutError:
            claimer.cancel()
        grace_s = self.shutdown_grace if grace is None else parse_duration(grace, what="grace")
        for held in self._held.values():
            held.execution.stopping = True
        tasks = [held.task for held in self._held.values()]
        if tasks:
            all_done = asyncio.create_task(asyncio.wait(tasks))
            forced = asyncio.create_task(self._force.wait())
            await asyncio.wait([all_done, forced], timeout=grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
            all_done.cancel()
            forced.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        renewer.cancel()
        await asyncio.gather(claimer, renewer, return_exceptions=True)
        released: list[str] = []
        if self._to_release:
            try:
                released = await dispatch.release_leases(self.engine.connector, self._to_release)
            except DatabaseError as err:
                log.warning("worker.release_failed", error=str(err), runs=len(self._to_release))
        await self.recorder.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._started = False
        log.info("worker.stopped", worker_id=self.worker_id, released=len(released))

    def force_stop(self) -> None:
        """Make a running ``stop()`` cancel in-flight runs now instead of after the grace period."""
        self._force.set()

    # --- notifications -----------------------------------------------------------------

    def _on_queue(self, payload: str | None) -> None:
        if payload is None or payload == "" or payload in self._workflows:
            self._wake.set()

    # --- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        log = telemetry.logger()
        connector = self.engine.connector
        names = self.workflow_names
        failures = 0
        while not self._stopping:
            self._wake.clear()
            wait = self.poll_interval
            free = self.concurrency - len(self._held)
            if free > 0:
                try:
                    claimed = await dispatch.claim_runs(
                        connector, workflows=names, limit=free,
                        worker_id=self.worker_id, lease_seconds=self.lease_seconds,
                    )
                    due = None
                    if len(claimed) < free:
                        due = await dispatch.seconds_until_due(connector, workflows=names)
                except Exception as err:  # the claim loop must outlive any single failure
                    if failures == 0:
                        log.warning("worker.claim_failed", worker_id=self.worker_id, error=str(err),
                                    error_type=type(err).__name__)
                    await sleep_backoff(failures)
                    failures += 1
                    continue
                if failures:
                    log.info("worker.reconnected", worker_id=self.worker_id)
                    failures = 0
                for run in claimed:
                    self._launch(run)
                self._maybe_more = len(claimed) == free
                if self._maybe_more:
                    continue
                if due is not None:
                    wait = min(wait, max(due, 0.0) + 0.002)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def _launch(self, run: dispatch.ClaimedRun) -> None:
        log = telemetry.logger()
        if run.previous_worker_id is not None:
            log.warning(
                "worker.lease_taken_over",
                run_id=run.run_id,
                workflow=run.workflow,
                worker_id=self.worker_id,
                previous_worker_id=run.previous_worker_id,
                claims=run.claims,
            )
        execution = RunExecution(
            run_id=run.run_id,
            workflow=self._workflows[run.workflow],
            args=run.args,
            kwargs=run.kwargs,
            lease=run.lease,
            log=run.log,
            recorder=self.recorder,
            executor=self._executor,
            on_halt=self._on_halt,
            wakeups=run.wakeups,
            inbox=run.inbox,
            children=run.children,
            deadline=run.deadline,
            cancel_child=self._cancel_child,
        )
        task = asyncio.create_task(self._drive(execution), name=f"werkfluss-run-{run.run_id}")
        held = _Held(execution, task)
        self._held[run.run_id] = held
        if run.deadline is not None:
            delay = (run.deadline - dt.datetime.now(dt.UTC)).total_seconds()
            held.deadline_timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._on_deadline, run.run_id, held
            )
        log.debug("run.claimed", run_id=run.run_id, workflow=run.workflow,
                  worker_id=self.worker_id, replaying=len(run.log))

    def _on_deadline(self, run_id: str, held: _Held) -> None:
        if self._held.get(run_id) is held and not held.finishing and held.execution.halted is None:
            held.execution.halted = "timed_out"
            held.task.cancel()

    def _on_halt(self, execution: RunExecution) -> None:
        held = self._held.get(execution.run_id)
        if held is not None:
            held.task.cancel()  # also cancels steps the workflow is gathering

    async def _drive(self, execution: RunExecution) -> None:
        log = telemetry.logger()
        run_id = execution.run_id
        started = time.monotonic()
        try:
            if execution.deadline is not None and execution.deadline <= dt.datetime.now(dt.UTC):
                execution.halted = "timed_out"  # past its deadline already: do not start it
                outcome = _timed_out(execution)
            else:
                try:
                    outcome = await execution.run()
                except asyncio.CancelledError:
                    if execution.halted != "timed_out":
                        self._after_halt(execution)
                        return
                    outcome = _timed_out(execution)
            held = self._held.get(run_id)
            if held is not None:
                held.finishing = True
            try:
                await self.recorder.finish(
                    execution.lease, outcome.status, outcome.result, outcome.error
                )
            except LeaseLost:
                log.warning("worker.lease_lost", run_id=run_id, worker_id=self.worker_id,
                            during="finish")
                return
            except DatabaseError as err:
                log.warning("worker.run_abandoned", run_id=run_id, worker_id=self.worker_id,
                            error=str(err))
                self._to_release.append(execution.lease)
                return
            self.runs_finished += 1
            duration_ms = round((time.monotonic() - started) * 1000, 3)
            if outcome.status == "completed":
                log.info("run.completed", run_id=run_id, workflow=execution.workflow.name,
                         steps=execution.steps_run, duration_ms=duration_ms)
            else:
                event = "run.nondeterminism" if execution.nondeterminism else (
                    "run.timed_out" if execution.halted == "timed_out" else "run.failed")
                log.error(event, run_id=run_id, workflow=execution.workflow.name,
                          error_type=outcome.error_type, duration_ms=duration_ms)
            if execution.children_started or execution.halted == "timed_out":
                await self._cancel_children(run_id)
        finally:
            was_full = len(self._held) >= self.concurrency
            held = self._held.pop(run_id, None)
            if held is not None and held.deadline_timer is not None:
                held.deadline_timer.cancel()
            if self._maybe_more or was_full:
                self._wake.set()  # a slot is free: there may be work we could not take

    async def _cancel_children(self, run_id: str) -> None:
        """A run that ended leaves no child running (children are cancelled)."""
        try:
            await self.engine.connector.fetch_one("cancel_children", run_id=run_id)
        except DatabaseError as err:
            telemetry.logger().warning("worker.cancel_child_failed", run_id=run_id, error=str(err))

    def _after_halt(self, execution: RunExecution) -> None:
        log = telemetry.logger()
        reason = execution.halted or ("released" if self._stopping else "cancelled")
        if reason == "suspended":
            self._wake.set()  # its wake-up time may be the next thing due
        elif reason == "lease_lost":
            log.warning("worker.lease_lost", run_id=execution.run_id, worker_id=self.worker_id)
        elif reason == "cancelled":
            log.info("run.cancelled", run_id=execution.run_id, worker_id=self.worker_id)
        elif reason == "abandoned":
            log.warning("worker.run_abandoned", run_id=execution.run_id, worker_id=self.worker_id)
            self._to_release.append(execution.lease)
        else:
            self._to_release.append(execution.lease)

def _timed_out(execution: RunExecution) -> Outcome:
    deadline = execution.deadline.isoformat() if execution.deadline else "its deadline"
    error = TimeoutError(f"run {execution.run_id} did not finish by {deadline} (its timeout)")
    return Outcome("failed", None, error_json(error), "TimeoutError")
