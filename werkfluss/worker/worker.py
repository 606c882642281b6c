"""The worker: claims runs of the workflows it knows and drives them.

In-process::

    async with engine.worker(concurrency=32):
        ...                         # runs are executed while the block runs

As a process: ``python -m werkfluss.worker --app myapp.workflows`` (see
:mod:`werkfluss.worker.__main__`).

What a worker does:

* **Claims** due runs with ``FOR UPDATE SKIP LOCKED`` when it has free slots,
  woken by ``LISTEN/NOTIFY`` and by the next known due time, with a slow poll
  as the safety net. The claim keeps within the limits of the runs' queues
  (see :mod:`werkfluss.flow`); the worker declares the queues of the
  workflows it serves when it starts.
* **Schedules**: keeps the schedules its workflows declare
  (``@workflow(schedule=...)``) in the database and fires the ticks of the
  schedules of the workflows it serves (see :mod:`werkfluss.worker.scheduler`).
* **Beats** one heartbeat row every ``lease / 3`` seconds instead of renewing
  every held run, and **reaps** workers whose heartbeat stopped, so their runs
  are taken over after one lease (see :mod:`werkfluss.worker.heartbeat`).
* **Prunes** finished runs older than its ``retention`` (default 14 days), in
  small batches, one worker at a time (see :mod:`werkfluss.worker.retention`).
* **Keeps** recently suspended runs in memory: when the same worker claims
  such a run again and nobody else ran it since, it goes on without
  replaying its log.
* **Stops gracefully**: no new claims; in-flight steps finish and are recorded,
  then each run is handed back, claimable at once; after ``shutdown_grace``
  whatever is still running is cancelled and handed back.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from werkfluss import telemetry
from werkfluss.clock import DatabaseClock
from werkfluss.durations import Duration, parse_duration
from werkfluss.errors import ConfigurationError, DatabaseError, InvalidArgument
from werkfluss.flow import Queue, registered_queues
from werkfluss.runtime import workflows
from werkfluss.runtime.instance import WorkflowInstance
from werkfluss.runtime.state import RunState
from werkfluss.runtime.workflows import Workflow
from werkfluss.store import dispatch, schedules
from werkfluss.store import flow as flow_store
from werkfluss.store import workers as registry
from werkfluss.store.connector import Connector
from werkfluss.store.listener import QUEUE_CHANNEL, RUNS_CHANNEL, WAKE_CHANNEL, Listener
from werkfluss.store.migrations import check_schema
from werkfluss.store.recorder import Recorder
from werkfluss.store.writes import ReleaseRun
from werkfluss.worker.driver import RunDriver
from werkfluss.worker.heartbeat import Liveness
from werkfluss.worker.retention import Pruner
from werkfluss.worker.scheduler import Scheduler

Connect = Callable[[], Awaitable[tuple[Connector, Listener]]]

MAX_CONCURRENCY = 10_000


@dataclass
class _Cached:
    instance: WorkflowInstance
    claims: int


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("werkfluss")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


class Worker:
    """Executes runs from the database; use ``async with`` or ``start()``/``stop()``.

    Create one with :meth:`Engine.worker <werkfluss.Engine.worker>`.

    Parameters:
        concurrency: runs executed at the same time (1 to 10,000; default 10).
        workflows: the workflows (objects or names) to serve; default: all
            registered in this process when the worker starts.
        lease: how long the worker's heartbeat vouches for its runs (default
            ``"30s"``, from 500 ms to 1 h); a killed worker's runs are taken over
            after at most this long.
        poll_interval: the safety-net poll when no notification arrives (``"5s"``).
        shutdown_grace: how long ``stop()`` lets in-flight steps finish (``"10s"``).
        cache_size: suspended runs kept in memory to resume without replay (default 256).
        retention: finished runs older than this are deleted, with their log,
            hooks and payloads (default ``"14d"``; ``None`` or ``"off"`` keeps
            everything). Workers take turns: one prunes at a time.
        prune_interval: how often the worker prunes (default ``"5m"``, ±25 % jitter).
    """

    def __init__(
        self,
        connect: Connect,
        *,
        concurrency: int = 10,
        workflows: Iterable[Workflow[..., Any] | str] | None = None,
        lease: Duration = "30s",
        poll_interval: Duration = "5s",
        shutdown_grace: Duration = "10s",
        worker_id: str | None = None,
        cache_size: int = 256,
        retention: Duration | None = "14d",
        prune_interval: Duration = "5m",
    ) -> None:
        if not _whole(concurrency, 1, MAX_CONCURRENCY):
            raise InvalidArgument(
                f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, got {concurrency!r}")
        if not _whole(cache_size, 0, 1_000_000):
            raise InvalidArgument(f"cache_size must be a whole number from 0 to 1000000, got {cache_size!r}")
        self.lease_seconds = parse_duration(lease, what="lease", allow_zero=False)
        if not 0.5 <= self.lease_seconds <= 3600:
            raise InvalidArgument(f"lease must be from 500ms to 1h, got {lease!r}")
        self.poll_interval = parse_duration(poll_interval, what="poll_interval", allow_zero=False)
        if not 0.01 <= self.poll_interval <= 3600:
            raise InvalidArgument(f"poll_interval must be from 10ms to 1h, got {poll_interval!r}")
        self.shutdown_grace = parse_duration(shutdown_grace, what="shutdown_grace")
        if self.shutdown_grace > 3600:
            raise InvalidArgument(f"shutdown_grace must be at most 1h, got {shutdown_grace!r}")
        self.retention_seconds = (
            None if retention is None or retention == "off"
            else parse_duration(retention, what="retention", allow_zero=False)
        )
        self.prune_interval = parse_duration(prune_interval, what="prune_interval", allow_zero=False)
        if not 0.01 <= self.prune_interval <= 86400:
            raise InvalidArgument(f"prune_interval must be from 10ms to 1 day, got {prune_interval!r}")
        self.pruner: Pruner | None = None  # while started with a retention
        self.concurrency = concurrency
        self.cache_size = cache_size
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = DatabaseClock()
        self.liveness = Liveness(self.lease_seconds)
        self.executor = ThreadPoolExecutor(max_workers=max(4, min(concurrency, 64)),
                                           thread_name_prefix="werkfluss-step")
        self._connect = connect
        self._requested = list(workflows) if workflows is not None else None
        self._workflows: dict[str, Workflow[..., Any]] = {}
        self._drivers: dict[str, RunDriver] = {}
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._connector: Connector | None = None
        self._beat: Connector | None = None  # the heartbeat's own connection
        self._writes: Connector | None = None  # the recorder's own connections
        # Names the connections this worker writes through (63 characters at most):
        # the reaper ends them if this worker is declared dead.
        self.app_name = f"werkfluss-w-{uuid.uuid4().hex[:12]}"
        self._recorder: Recorder | None = None
        self.scheduler: Scheduler | None = None
        self._wake = asyncio.Event()
        # Until when (monotonic) the last claim said nothing more is
        # claimable: it got fewer runs than it asked for, and no
        # notification or suspension came since. None: unknown, claim.
        self._idle_until: float | None = None
        self._stop_heartbeat = asyncio.Event()
        self._force = asyncio.Event()
        self._stopping = False
        self._started = False
        self._claiming = False
        self._tasks: list[asyncio.Task[None]] = []
        self._pruning: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._checking: set[str] = set()
        self.runs_finished = 0
        self.takeovers = 0

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

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            raise RuntimeError("the worker has not started")
        return self._connector

    @property
    def _heartbeat_connector(self) -> Connector:
        return self._beat if self._beat is not None else self.connector

    @property
    def held(self) -> int:
        """Runs this worker holds right now."""
        return len(self._drivers)

    async def start(self) -> None:
        """Check the schema, register, start listening, and begin claiming."""
        if self._started:
            return
        self._workflows = self._resolve_workflows()
        engine_connector, listener = await self._connect()
        # The worker's own pools: claims and reads, writes (named, so the reaper
        # can end them if this worker is declared dead), the heartbeat. A query
        # that cannot get a connection within a second fails and is retried, so
        # the pools reconnect as soon as the server is back.
        acquire = min(1.0, self.lease_seconds / 3)
        connector = engine_connector.sibling(max_size=4, application_name="werkfluss-worker",
                                             acquire_timeout=acquire)
        await connector.open()
        self._connector = connector
        connector.write_idle_timeout = min(connector.write_idle_timeout, self.lease_seconds)
        await check_schema(connector)
        await self._declare_schedules(connector)
        await registry.register(
            connector, id=self.worker_id, host=socket.gethostname(), pid=os.getpid(), version=_version(),
            workflows=self.workflow_names, concurrency=self.concurrency, lease_seconds=self.lease_seconds,
            clock=self.clock, app_name=self.app_name,
        )
        self.liveness.confirmed(time.monotonic() - 0.001)
        await self._declare_queues(connector)
        self.scheduler = Scheduler(connector, workflows=self.workflow_names, poll_interval=self.poll_interval,
                                   worker_id=self.worker_id)
        self._unsubscribe = [
            listener.subscribe(QUEUE_CHANNEL, self._on_queue),
            listener.subscribe(QUEUE_CHANNEL, self.scheduler.notified),
            listener.subscribe(RUNS_CHANNEL, self._on_runs),
            listener.subscribe(WAKE_CHANNEL, self._on_wake),
        ]
        self._beat = connector.sibling(max_size=1, application_name="werkfluss-heartbeat",
                                       acquire_timeout=acquire)
        await self._beat.open()
        self._writes = connector.sibling(max_size=2, application_name=self.app_name,
                                         acquire_timeout=acquire)
        self._writes.write_idle_timeout = connector.write_idle_timeout
        await self._writes.open()
        self._recorder = Recorder(self._writes, alive=self.liveness.valid)
        self._recorder.start()
        self._started = True
        self._stopping = False
        self._stop_heartbeat.clear()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="werkfluss-claimer"),
            asyncio.create_task(self._heartbeat_loop(), name="werkfluss-heartbeat"),
        ]
        self.scheduler.start()
        if self.retention_seconds is not None:
            self.pruner = Pruner(connector, retention=self.retention_seconds,
                                 interval=self.prune_interval, worker_id=self.worker_id)
            self._pruning = asyncio.create_task(self.pruner.run(), name="werkfluss-retention")
        telemetry.logger().info(
            "worker.started", worker_id=self.worker_id, workflows=self.workflow_names,
            concurrency=self.concurrency, lease_s=self.lease_seconds, retention_s=self.retention_seconds,
        )

    async def _declare_queues(self, connector: Connector) -> None:
        """Write the queues declared in this process and the default queue of
        each workflow served, so that SQL starters and other workers agree."""
        log = telemetry.logger()
        queues = registered_queues()
        for wf in self._workflows.values():
            if isinstance(wf.queue, Queue):
                queues.setdefault(wf.queue.name, wf.queue)
        for queue in queues.values():
            outcome = await flow_store.declare_queue(connector, queue)
            if outcome == "changed":
                log.warning("queue.changed", queue=queue.name, worker_id=self.worker_id,
                            concurrency=queue.concurrency, per_key=queue.per_key,
                            worker_concurrency=queue.worker_concurrency, rate_limit=queue.rate_limit,
                            key_rate_limit=queue.key_rate_limit)
            elif outcome == "created":
                log.info("queue.created", queue=queue.name, worker_id=self.worker_id)
        for name, wf in self._workflows.items():
            await flow_store.declare_workflow_queue(connector, name, wf.queue_name)

    async def _declare_schedules(self, connector: Connector) -> None:
        """Store the schedules the served workflows declare in code (pause state
        is kept); delete those once declared for them that the code declares no more."""
        declared = [
            schedules.Declared(name=wf.name, workflow=wf.name, cron=wf.schedule.cron,
                               timezone=wf.schedule.timezone, catchup=wf.schedule.catchup,
                               overlap=wf.schedule.overlap, catchup_limit=wf.schedule.catchup_limit)
            for wf in self._workflows.values() if wf.schedule is not None
        ]
        changed, removed = await schedules.declare(connector, declared=declared, served=self.workflow_names)
        if changed or removed:
            telemetry.logger().info("schedule.declared", worker_id=self.worker_id, changed=changed,
                                    removed=removed)

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
        hand back every run still held, and shut down."""
        if not self._started or self._stopping:
            return
        log = telemetry.logger()
        grace_s = self.shutdown_grace if grace is None else parse_duration(grace, what="grace")
        self._stopping = True
        self._wake.set()
        if self.scheduler is not None:
            await self.scheduler.stop()
        pruning, self._pruning = self._pruning, None
        if pruning is not None:  # a batch in flight is one short transaction: cut it off
            pruning.cancel()
            await asyncio.gather(pruning, return_exceptions=True)
        claimer, heartbeat = self._tasks
        await asyncio.gather(claimer, return_exceptions=True)
        drivers = list(self._drivers.values())
        for driver in drivers:
            driver.post(driver.instance.stop)
        held = len(drivers)
        if drivers:
            waits = [asyncio.ensure_future(d.wait()) for d in drivers]
            forced = asyncio.ensure_future(self._force.wait())
            await asyncio.wait([asyncio.ensure_future(asyncio.wait(waits)), forced], timeout=grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            for driver in list(self._drivers.values()):
                driver.post(driver.instance.force_release)
            remaining = [asyncio.ensure_future(d.wait()) for d in self._drivers.values()]
            if remaining:
                await asyncio.wait(remaining, timeout=max(1.0, self.lease_seconds / 3))
            for driver in list(self._drivers.values()):
                if driver.task is not None:
                    driver.task.cancel()
            await asyncio.gather(*(d.task for d in drivers if d.task is not None), return_exceptions=True)
            for task in waits:
                task.cancel()
        await self.recorder.stop()
        self._stop_heartbeat.set()
        await asyncio.gather(heartbeat, return_exceptions=True)
        try:
            await registry.stopped(self.connector, id=self.worker_id)
        except DatabaseError as err:
            log.warning("worker.deregister_failed", worker_id=self.worker_id, error=str(err))
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        # Background queries (cancelling child runs, checking for cancellations)
        # are short: let them finish rather than cancel them in flight, which
        # costs the server a cancel request (and trips some poolers).
        if self._background:
            await asyncio.wait(list(self._background), timeout=1.0)
        for task in list(self._background):
            task.cancel()
        for extra in (self._beat, self._writes, self._connector):
            if extra is not None:
                await extra.close()
        self._beat = self._writes = None
        for cached in self._cache.values():
            cached.instance.evict()
        self._cache.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._started = False
        log.info("worker.stopped", worker_id=self.worker_id, released=held)

    def force_stop(self) -> None:
        """Make a running ``stop()`` cancel in-flight steps now instead of after the grace period."""
        self._force.set()

    # --- for drivers ---------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A small background task, kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def lease_valid(self) -> None:
        await self.liveness.wait_valid()

    def cancel_run_soon(self, run_id: str) -> None:
        async def cancel() -> None:
            try:
                await self.connector.fetch_one("cancel_run", run_id=run_id)
            except Exception as err:  # the child ends with its parent at the latest
                telemetry.logger().warning("worker.cancel_child_failed", run_id=run_id, error=str(err))

        self.spawn(cancel())

    def cancel_children_soon(self, run_id: str) -> None:
        async def cancel() -> None:
            try:
                await self.connector.fetch_one("cancel_children", run_id=run_id)
            except DatabaseError as err:
                telemetry.logger().warning("worker.cancel_child_failed", run_id=run_id, error=str(err))

        self.spawn(cancel())

    def run_moved(self, driver: RunDriver, old: RunState, new: RunState, reason: str) -> None:
        """The one callback for a held run's transitions."""
        if new is RunState.SUSPENDED:
            self._remember(driver)
            self._idle_until = None  # its wake-up time may come before the next one known
            self._wake.set()
        elif new is RunState.FINISHED:
            self.runs_finished += 1
        elif new is RunState.CANCELLED:
            telemetry.logger().info("run.cancelled", run_id=driver.run_id, workflow=driver.claimed.workflow,
                                    worker_id=self.worker_id)

    def driver_done(self, driver: RunDriver) -> None:
        if self._drivers.get(driver.run_id) is driver:
            del self._drivers[driver.run_id]
        # A slot is free: claim again, unless the last claim found nothing
        # more to take and nothing came since (then the next notification,
        # the next due run or the poll wakes the loop, as for an idle worker).
        idle_until = self._idle_until
        if idle_until is None or time.monotonic() >= idle_until:
            self._wake.set()

    # --- the cache of suspended runs ---------------------------------------------------

    def _remember(self, driver: RunDriver) -> None:
        if self.cache_size == 0 or self._stopping:
            driver.instance.evict()
            return
        self._cache[driver.run_id] = _Cached(driver.instance, driver.claimed.claims)
        self._cache.move_to_end(driver.run_id)
        while len(self._cache) > self.cache_size:
            _, oldest = self._cache.popitem(last=False)
            oldest.instance.evict()

    def _forget(self, run_id: str) -> None:
        cached = self._cache.pop(run_id, None)
        if cached is not None:
            cached.instance.evict()

    # --- notifications -----------------------------------------------------------------

    def _on_queue(self, payload: str | None) -> None:
        if payload is None or payload == "" or payload in self._workflows:
            self._idle_until = None
            self._wake.set()

    def _on_runs(self, payload: str | None) -> None:
        # Runs finished or were cancelled: one we hold may have been cancelled.
        ids = None if payload is None or payload == "*" else payload.split(",")
        for run_id in ids if ids is not None else list(self._cache):
            self._forget(run_id)
        targets = list(self._drivers) if ids is None else [i for i in ids if i in self._drivers]
        if targets:
            fresh = [t for t in targets if t not in self._checking]
            self._checking.update(fresh)
            if fresh:
                self.spawn(self._check_cancelled(fresh))

    def _on_wake(self, payload: str | None) -> None:
        targets = list(self._drivers) if payload is None else [payload]
        for run_id in targets:
            driver = self._drivers.get(run_id)
            if driver is not None:
                driver.refresh()

    async def _check_cancelled(self, run_ids: list[str]) -> None:
        try:
            for run_id in run_ids:
                driver = self._drivers.get(run_id)
                if driver is None:
                    continue
                try:
                    row = await self.connector.fetch_one("run_outcome", run_id=run_id)
                except DatabaseError:
                    return
                if row is not None and row["status"] == "cancelled" and self._drivers.get(run_id) is driver:
                    driver.post(driver.instance.cancelled)
        finally:
            self._checking.difference_update(run_ids)

    # --- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        log = telemetry.logger()
        names = self.workflow_names
        failures = 0
        while not self._stopping:
            self._wake.clear()
            self._idle_until = None  # until this iteration's claim says otherwise
            wait = self.poll_interval
            free = self.concurrency - len(self._drivers)
            if free > 0 and self.liveness.valid():
                try:
                    claimed, cached, due = await self._claim(names, free)
                except Exception as err:  # the claim loop must outlive any single failure
                    if failures == 0:
                        log.warning("worker.claim_failed", worker_id=self.worker_id, error=str(err),
                                    error_type=type(err).__name__)
                    await asyncio.sleep(min(0.5, 0.05 * 2**failures))
                    failures += 1
                    continue
                if failures:
                    log.info("worker.reconnected", worker_id=self.worker_id)
                    failures = 0
                for run in claimed:
                    self._launch(run, cached.get(run.run_id))
                if len(claimed) == free:
                    continue  # there may be more: claim again at once
                if due is not None:
                    wait = min(wait, max(due, 0.0) + 0.002)
                self._idle_until = time.monotonic() + (math.inf if due is None else max(due, 0.0))
            elif free > 0:
                wait = min(wait, 0.1)  # waiting for the heartbeat to vouch for us again
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _claim(
        self, names: list[str], free: int
    ) -> tuple[list[dispatch.ClaimedRun], dict[str, WorkflowInstance], float | None]:
        self._claiming = True
        try:
            claim = await dispatch.claim_runs(self.connector, workflows=names, limit=free,
                                              worker_id=self.worker_id, clock=self.clock)
            claimed = claim.runs
            # Decide now, once, which runs go on from memory: taken out of the
            # cache here, nothing can evict them before they are launched.
            cached: dict[str, WorkflowInstance] = {}
            for run in claimed:
                entry = self._cache.pop(run.run_id, None)
                if entry is None:
                    continue
                if entry.claims + 1 == run.claims and entry.instance.state is RunState.SUSPENDED:
                    cached[run.run_id] = entry.instance
                else:
                    entry.instance.evict()
            reading = [c for c in claimed if c.has_log and c.run_id not in cached]
            try:
                if reading:
                    logs = await dispatch.read_logs(self.connector, [c.run_id for c in reading])
                    for run in reading:
                        run.log = logs.get(run.run_id, [])
            except BaseException:
                for instance in cached.values():
                    instance.evict()
                raise
            return claimed, cached, claim.next_due
        finally:
            self._claiming = False

    def _launch(self, run: dispatch.ClaimedRun, cached: WorkflowInstance | None) -> None:
        log = telemetry.logger()
        if run.taken_over and run.previous_worker_id != self.worker_id:
            self.takeovers += 1
            log.warning("worker.lease_taken_over", run_id=run.run_id, workflow=run.workflow,
                        worker_id=self.worker_id, previous_worker_id=run.previous_worker_id,
                        claims=run.claims)
        if cached is not None:
            instance = cached
            resumed = True
        else:
            instance = WorkflowInstance(
                run_id=run.run_id, workflow=self._workflows[run.workflow], args=run.args, kwargs=run.kwargs,
                log=run.log, clock=self.clock, started_at=run.started_at, payloads=run.inputs.payloads,
                children=run.inputs.children, deadline=run.deadline,
            )
            resumed = False
        driver = RunDriver(self, run, instance, resumed=resumed)
        self._drivers[run.run_id] = driver
        driver.start()
        if telemetry.debug_enabled():
            log.debug("run.claimed", run_id=run.run_id, workflow=run.workflow, worker_id=self.worker_id,
                      replaying=len(run.log), resumed=resumed, claims=run.claims,
                      waited_ms=round(run.waited * 1000, 3))

    # --- heartbeats --------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        log = telemetry.logger()
        interval = self.lease_seconds / 3
        failures = 0
        while not self._stop_heartbeat.is_set():
            try:
                beat = await asyncio.wait_for(registry.heartbeat(
                    self._heartbeat_connector, id=self.worker_id, runs_held=len(self._drivers),
                    state="stopping" if self._stopping else "running", clock=self.clock,
                ), timeout=max(0.5, interval))
            except (DatabaseError, TimeoutError) as err:
                if failures == 0:
                    log.warning("worker.heartbeat_failed", worker_id=self.worker_id,
                                error=str(err) or "timeout")
                failures += 1
                if not self.liveness.valid() and self._drivers:
                    self._lose_all("its heartbeat failed for longer than its lease")
                await self._pause(min(interval, 0.25))
                continue
            if failures:
                log.info("worker.heartbeat_recovered", worker_id=self.worker_id, failures=failures)
                failures = 0
            if beat.state == "dead":
                log.warning("worker.reaped", worker_id=self.worker_id, held=len(self._drivers))
                self._lose_all("another worker took its runs over while it was silent")
                try:
                    await registry.register(
                        self.connector, id=self.worker_id, host=socket.gethostname(), pid=os.getpid(),
                        version=_version(), workflows=self.workflow_names, concurrency=self.concurrency,
                        lease_seconds=self.lease_seconds, clock=self.clock, app_name=self.app_name,
                    )
                except DatabaseError:
                    continue
                self.liveness.confirmed(time.monotonic())
                continue
            self.liveness.confirmed(beat.sent)
            if not self._claiming and beat.holding > len(self._drivers):
                await self._reconcile()
            try:
                await asyncio.wait_for(registry.reap(self._heartbeat_connector),
                                       timeout=max(0.5, interval))
            except (DatabaseError, TimeoutError):
                pass
            await self._pause(interval)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_heartbeat.wait(), seconds)
        except TimeoutError:
            pass

    def _lose_all(self, reason: str) -> None:
        self.liveness.reset()
        for driver in list(self._drivers.values()):
            driver.abandon(reason)

    async def _reconcile(self) -> None:
        """Hand back runs the queue says this worker holds but it does not know
        (a claim whose answer was lost, a run it gave up while cut off)."""
        try:
            leases = await registry.held_runs(self.connector, id=self.worker_id)
        except DatabaseError:
            return
        strays = [lease for lease in leases if lease.run_id not in self._drivers]
        if strays and not self._claiming:
            telemetry.logger().warning("worker.releasing_strays", worker_id=self.worker_id,
                                       runs=[lease.run_id for lease in strays][:20], count=len(strays))
            for lease in strays:
                self.recorder.submit(ReleaseRun(lease)).add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
