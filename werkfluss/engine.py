"""The :class:`Engine`: werkfluss's entry point in a Python program.

    async with Engine("postgresql://localhost/app") as engine:
        await engine.migrate()
        handle = await engine.start(onboard, "user-123")
        async with engine.worker(concurrency=32):
            print(await handle.result(timeout=60))

``Engine()`` with no DSN uses ``$WERKFLUSS_DATABASE_URL``, else starts the
embedded PostgreSQL (see :mod:`werkfluss.store.embedded`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from werkfluss import limits, serializer, telemetry, tracing
from werkfluss.cron import Catchup, Overlap, Schedule, make_schedule
from werkfluss.durations import Duration, optional_duration, parse_duration
from werkfluss.errors import HookRefused, InvalidArgument, QueueNotFound, ScheduleNotFound
from werkfluss.flow import OPTION_NAMES, Queue, StartOptions, registered_queues
from werkfluss.runs import STATUSES, RunHandle, RunInfo
from werkfluss.runtime import workflows
from werkfluss.runtime.workflows import Workflow
from werkfluss.store import flow as flow_store
from werkfluss.store import migrations, retention, schedules
from werkfluss.store import workers as registry
from werkfluss.store.connector import Connector
from werkfluss.store.embedded import start_embedded
from werkfluss.store.flow import QueueInfo
from werkfluss.store.listener import Listener
from werkfluss.store.schedules import ScheduleInfo
from werkfluss.store.workers import WorkerInfo
from werkfluss.worker.worker import Worker

ENV_DSN = "WERKFLUSS_DATABASE_URL"
ENV_LISTEN_DSN = "WERKFLUSS_LISTEN_URL"


class Engine:
    """Connects to the database and starts, inspects and steers runs.

    Parameters:
        dsn: a libpq connection string or URL. Default: ``$WERKFLUSS_DATABASE_URL``,
            else the embedded PostgreSQL.
        pool_size: the most connections this engine opens at once (default 10;
            a LISTEN connection comes on top).
        result_poll_interval: how often ``handle.result()`` re-checks when no
            notification arrives (seconds, default 5).
        listen_dsn: a direct connection for LISTEN when ``dsn`` goes through a
            pooler in transaction mode (PgBouncer), where LISTEN does not work.
            Default: ``$WERKFLUSS_LISTEN_URL``, else ``dsn``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool_size: int = 10,
        result_poll_interval: float = 5.0,
        listen_dsn: str | None = None,
    ) -> None:
        self._dsn = dsn or os.environ.get(ENV_DSN) or None
        self._listen_dsn = listen_dsn or os.environ.get(ENV_LISTEN_DSN) or None
        self._pool_size = pool_size
        self.result_poll_interval = result_poll_interval
        self._connector: Connector | None = None
        self._listener: Listener | None = None
        self._open_lock = asyncio.Lock()
        self.embedded = False  # True once an embedded PostgreSQL was started for this engine

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (starting the embedded PostgreSQL if no DSN is configured)."""
        async with self._open_lock:
            if self._connector is not None:
                return
            if self._dsn is None:
                self._dsn = await asyncio.to_thread(start_embedded)
                self.embedded = True
            connector = Connector(self._dsn, max_size=self._pool_size)
            await connector.open()
            self._connector = connector

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        connector, self._connector = self._connector, None
        if connector is not None:
            await connector.close()

    @property
    def dsn(self) -> str | None:
        """The connection string in use (``None`` until an embedded server has started)."""
        return self._dsn

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            raise RuntimeError(
                "the engine is not open: use `async with Engine(...)` or `await engine.open()`"
            )
        return self._connector

    async def listener(self) -> Listener | None:
        """The engine's LISTEN connection, started on first use (it reconnects by
        itself; while it is down, callers fall back to polling)."""
        return await self._listener_ready(required=False)

    async def _listener_ready(self, *, required: bool = True) -> Listener:
        """The engine's LISTEN connection, started on first use."""
        await self.open()
        if self._listener is None:
            self._listener = Listener(self.connector, dsn=self._listen_dsn)
        ok = await self._listener.start()
        if not ok and required:
            await self._listener.stop()
            self._listener = None
            await self.connector.open()  # re-raises the connection error, if any
            raise RuntimeError("could not LISTEN for notifications")  # pragma: no cover
        return self._listener

    # --- schema ------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Create or update the ``werkfluss`` schema; idempotent, safe to run concurrently.

        Returns the names of the migrations applied by this call.
        """
        await self.open()
        return await migrations.migrate(self.connector)

    # --- runs --------------------------------------------------------------------------

    async def start(
        self,
        workflow: Workflow[..., Any] | str,
        /,
        *args: Any,
        run_id: str | None = None,
        timeout: Duration | None = None,
        options: StartOptions | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run of ``workflow`` (a ``@workflow`` or its registered name).

        ``run_id`` is an idempotency key: starting again with the same id
        returns the existing run (its first arguments win). ``timeout`` fails
        the run if it has not finished that long after it may start.
        ``options`` (a :class:`~werkfluss.StartOptions`) chooses the queue, the
        concurrency key, the priority, a delayed or debounced start. Arguments
        must be serializable (see :mod:`werkfluss.serializer`); nothing is
        stored if they are not.

            handle = await engine.start(onboard, "user-123", run_id="onboard:user-123")
            await engine.start(export, "c-42", options=StartOptions(concurrency_key="c-42", delay="10m"))
        """
        # Everything is checked before the database is touched, with the
        # limits the SQL function applies (werkfluss.limits, werkfluss.flow).
        name = limits.check_workflow_name(workflows.name_of(workflow))
        if run_id is not None:
            run_id = limits.check_run_id(run_id)
        timeout_s = optional_duration(timeout, what="timeout")
        if timeout_s == 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
        if options is not None and not isinstance(options, StartOptions):
            raise InvalidArgument(
                f"options must be a werkfluss.StartOptions, not {type(options).__name__}")
        opts = options or StartOptions()
        _refuse_misplaced_options(workflow, kwargs)
        if opts.debounce is not None and run_id is not None:
            raise InvalidArgument(
                "a debounced start returns the run that the burst of starts becomes, so it cannot "
                "choose its run_id; pass run_id or debounce, not both")
        queue = opts.queue if opts.queue is not None else (
            workflow.queue if isinstance(workflow, workflows.Workflow) else None)
        queue_name = queue.name if isinstance(queue, Queue) else queue
        if opts.concurrency_key is not None and queue_name is None and not isinstance(workflow, str):
            raise InvalidArgument(
                f"concurrency_key needs a queue, and {name} has none: pass StartOptions(queue=...) "
                "or give the workflow one with @workflow(queue=...)")
        args_json = serializer.dumps(list(args), what=f"the arguments of {name}")
        kwargs_json = serializer.dumps(kwargs, what=f"the keyword arguments of {name}")
        params = dict(
            name=name, args=args_json, run_id=run_id, kwargs=kwargs_json, timeout_seconds=timeout_s,
            queue=queue_name, concurrency_key=opts.concurrency_key, priority=opts.priority,
            start_at=opts.start_at, delay_seconds=opts.delay_seconds,
            debounce_seconds=opts.debounce_seconds, debounce_key=opts.debounce_key,
            traceparent=tracing.current_traceparent(),
        )
        await self.open()
        try:
            row = await self.connector.fetch_one("start_run", **params)
        except QueueNotFound:
            # A queue this process declares and the database does not know yet.
            declared = queue if isinstance(queue, Queue) else registered_queues().get(queue_name or "")
            if declared is None:
                raise
            await self.declare_queue(declared)
            row = await self.connector.fetch_one("start_run", **params)
        assert row is not None
        handle = RunHandle(self, row["run_id"])
        telemetry.logger().info("run.started", run_id=handle.run_id, workflow=name)
        return handle

    async def declare_queue(self, queue: Queue) -> str:
        """Write ``queue``'s limits to the database: ``"created"``, ``"changed"`` or
        ``"unchanged"``. Workers do this for the queues of the workflows they
        serve when they start; call it to create a queue before any worker
        runs (or see ``werkfluss.declare_queue`` in SQL).

            await engine.declare_queue(Queue("exports", concurrency=20, per_key=5))
        """
        if not isinstance(queue, Queue):
            raise InvalidArgument(f"declare_queue needs a werkfluss.Queue, not {type(queue).__name__}")
        await self.open()
        outcome = await flow_store.declare_queue(self.connector, queue)
        if outcome != "unchanged":
            telemetry.logger().info(f"queue.{outcome}", queue=queue.name)
        return outcome

    async def queues(self) -> list[QueueInfo]:
        """Every queue: its limits, the runs holding a worker, and what waits (see
        :class:`~werkfluss.store.flow.QueueInfo`).

            for q in await engine.queues():
                print(q.name, f"{q.running}/{q.concurrency}", q.depth)
        """
        await self.open()
        return await flow_store.list_queues(self.connector)

    def handle(self, run_id: str) -> RunHandle:
        """A handle for an existing run (no query is made until you use it)."""
        return RunHandle(self, run_id)

    async def runs(
        self,
        *,
        status: str | None = None,
        workflow: Workflow[..., Any] | str | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """The most recent runs, newest first, optionally filtered."""
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        name = None if workflow is None else workflows.name_of(workflow)
        await self.open()
        rows = await self.connector.fetch_all(
            "list_runs", status=status, workflow=name, limit=limit
        )
        return [RunInfo.from_row(row) for row in rows]

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run; ``False`` if it had already finished (raises :class:`RunNotFound`)."""
        run_id = limits.check_existing_run_id(run_id)
        await self.open()
        row = await self.connector.fetch_one("cancel_run", run_id=run_id)
        cancelled = bool(row and row["cancelled"])
        if cancelled:
            telemetry.logger().info("run.cancel_requested", run_id=run_id)
        return cancelled

    async def send(self, token: str, payload: Any = None) -> Literal["delivered", "stored"]:
        """Deliver ``payload`` to the hook with ``token``.

        Returns ``"delivered"``, or ``"stored"`` when the token (one a workflow
        chooses) has no hook yet: the payload is kept for the hook that will
        claim it. Raises :class:`HookRefused` (and stores nothing) if the token
        was never issued, the hook was single-use and already used, or its run
        has ended.

            await engine.send("order-42:approval", {"approved": True})
        """
        token = limits.check_token(token)
        payload_json = serializer.dumps(payload, what="the hook payload")
        await self.open()
        row = await self.connector.fetch_one("send", token=token, payload=payload_json)
        outcome = row["outcome"] if row else "unknown_token"
        if outcome not in ("delivered", "stored"):
            raise HookRefused(token, outcome)
        telemetry.logger().info("hook.sent", token=token, outcome=outcome)
        return "stored" if outcome == "stored" else "delivered"

    async def retry(self, run_id: str) -> bool:
        """Resume a failed or cancelled run from where it failed.

        The failed steps (and failed child runs) run again; the steps that
        completed keep their recorded results. Returns ``False`` if the run is
        neither failed nor cancelled (raises :class:`RunNotFound` for an
        unknown id). See ``werkfluss.retry_run`` in the SQL reference.

            await engine.retry("onboard:user-123")
        """
        run_id = limits.check_existing_run_id(run_id)
        await self.open()
        row = await self.connector.fetch_one("retry_run", run_id=run_id)
        retried = bool(row and row["retried"])
        if retried:
            telemetry.logger().info("run.retry_requested", run_id=run_id)
        return retried

    async def prune(
        self, older_than: Duration = "14d", *, batch_size: int = 500, dry_run: bool = False
    ) -> int:
        """Delete finished runs older than ``older_than`` (with their log, hooks
        and payloads), in batches of ``batch_size``; returns how many.

        With ``dry_run=True`` nothing is deleted: returns how many runs would be.
        Workers prune by themselves on their ``retention`` setting.

            deleted = await engine.prune("30d")
        """
        seconds = parse_duration(older_than, what="older_than")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= 10000:
            raise InvalidArgument(f"batch_size must be a whole number from 1 to 10000, got {batch_size!r}")
        await self.open()
        if dry_run:
            return await retention.count_prunable(self.connector, older_than_seconds=seconds)
        total = 0
        while True:
            deleted = await retention.prune_batch(
                self.connector, older_than_seconds=seconds, batch_size=batch_size, wait=True)
            total += max(deleted, 0)
            if deleted < batch_size:
                break
        if total:
            telemetry.logger().info("runs.pruned", runs=total, older_than_s=seconds)
        return total

    async def workers(self, *, recent: Duration = "1h") -> list[WorkerInfo]:
        """Live workers and those that stopped or died within ``recent``, newest heartbeat first."""
        await self.open()
        return await registry.list_workers(self.connector,
                                           recent_seconds=parse_duration(recent, what="recent"))

    async def served_workflows(self) -> set[str]:
        """The workflows that live workers serve now (running, heartbeat within their lease).

        A pending run of any other workflow waits until a worker that serves it starts:

            if "app.onboard" not in await engine.served_workflows():
                print("start a worker: python -m werkfluss.worker --app app")
        """
        await self.open()
        return await registry.served_workflows(self.connector)

    # --- schedules ---------------------------------------------------------------------

    async def schedule(
        self,
        workflow: Workflow[..., Any] | str,
        cron: str | Schedule,
        /,
        *,
        name: str | None = None,
        timezone: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        catchup: Catchup | None = None,
        overlap: Overlap | None = None,
        catchup_limit: int | None = None,
    ) -> ScheduleInfo:
        """Create the schedule ``name`` (default: the workflow's name), or
        redefine it: a run of ``workflow`` at every tick of ``cron``.

        Each run receives its scheduled time first, then ``args`` and
        ``kwargs``. The options are those of :class:`~werkfluss.Schedule`
        (``cron`` may be one). Redefining keeps the schedule paused if it is;
        a new cron expression or time zone counts ticks from now. Everything is
        checked before the database is touched (:class:`InvalidCron`,
        :class:`UnknownTimezone`, :class:`InvalidArgument`,
        :class:`SerializationError`).

            await engine.schedule(rollup, "0 * * * *", name="rollup-eu", args=["eu"],
                                  timezone="Europe/Berlin")
        """
        wf_name = limits.check_workflow_name(workflows.name_of(workflow))
        spec = make_schedule(cron, timezone=timezone, catchup=catchup, overlap=overlap,
                             catchup_limit=catchup_limit)
        schedule_name = limits.check_schedule_name(wf_name if name is None else name)
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise InvalidArgument(f"args must be a list or tuple of arguments, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise InvalidArgument(f"kwargs must be a dict, not {type(kwargs).__name__}")
        if isinstance(workflow, Workflow):
            try:
                inspect.signature(workflow.fn).bind(None, *args, **(kwargs or {}))
            except TypeError as err:
                raise InvalidArgument(
                    f"{wf_name} cannot be called with its scheduled time followed by args={list(args)!r} "
                    f"and kwargs={dict(kwargs or {})!r}: {err}"
                ) from None
            except ValueError:
                pass
        args_json = serializer.dumps(list(args), what=f"the arguments of schedule {schedule_name}")
        kwargs_json = serializer.dumps(dict(kwargs or {}),
                                       what=f"the keyword arguments of schedule {schedule_name}")
        await self.open()
        await schedules.create(
            self.connector, name=schedule_name, workflow=wf_name, cron=spec.cron, timezone=spec.timezone,
            args=args_json, kwargs=kwargs_json, catchup=spec.catchup, overlap=spec.overlap,
            catchup_limit=spec.catchup_limit,
        )
        telemetry.logger().info("schedule.created", schedule=schedule_name, workflow=wf_name, cron=spec.cron,
                                timezone=spec.timezone)
        return await self.get_schedule(schedule_name)

    async def schedules(self, *, workflow: Workflow[..., Any] | str | None = None) -> list[ScheduleInfo]:
        """Every schedule (optionally of one workflow), by name, with its next
        tick, last run and that run's status.

            for s in await engine.schedules():
                print(s.name, s.next_tick, s.last_run_id, s.last_run_status, s.paused)
        """
        wf_name = None if workflow is None else workflows.name_of(workflow)
        await self.open()
        found, now = await schedules.list_schedules(self.connector, workflow=wf_name)
        return [_with_next_tick(info, now) for info in found]

    async def get_schedule(self, name: str) -> ScheduleInfo:
        """One schedule (raises :class:`ScheduleNotFound`)."""
        name = limits.check_schedule_name(name)
        await self.open()
        info, now = await schedules.get(self.connector, name)
        if info is None:
            raise ScheduleNotFound(name)
        return _with_next_tick(info, now)

    async def pause_schedule(self, name: str) -> bool:
        """Stop starting runs at its ticks; ``False`` if it was paused already.
        Runs already started go on. Raises :class:`ScheduleNotFound`."""
        name = limits.check_schedule_name(name)
        await self.open()
        changed = await schedules.pause(self.connector, name)
        if changed:
            telemetry.logger().info("schedule.paused", schedule=name)
        return changed

    async def resume_schedule(self, name: str) -> bool:
        """Start runs at its ticks again, from the next tick on (the ticks that
        fell into the pause do not run); ``False`` if it was not paused."""
        name = limits.check_schedule_name(name)
        await self.open()
        changed = await schedules.resume(self.connector, name)
        if changed:
            telemetry.logger().info("schedule.resumed", schedule=name)
        return changed

    async def trigger_schedule(self, name: str) -> RunHandle:
        """Start a run of the schedule now, outside its ticks (also while it is
        paused; the overlap policy does not apply). Its scheduled time is now.

            handle = await engine.trigger_schedule("nightly-report")
        """
        name = limits.check_schedule_name(name)
        await self.open()
        run_id = await schedules.trigger(self.connector, name)
        telemetry.logger().info("schedule.triggered", schedule=name, run_id=run_id)
        return RunHandle(self, run_id)

    async def delete_schedule(self, name: str) -> None:
        """Delete the schedule; the runs it started are kept. Raises
        :class:`ScheduleNotFound`. A schedule declared with
        ``@workflow(schedule=...)`` comes back when a worker serving that code
        starts: remove it from the code."""
        name = limits.check_schedule_name(name)
        await self.open()
        await schedules.delete(self.connector, name)
        telemetry.logger().info("schedule.deleted", schedule=name)

    # --- workers -----------------------------------------------------------------------

    def worker(
        self,
        *,
        concurrency: int = 10,
        workflows: Iterable[Workflow[..., Any] | str] | None = None,
        lease: Duration = "30s",
        poll_interval: Duration = "5s",
        shutdown_grace: Duration = "10s",
        cache_size: int = 256,
        worker_id: str | None = None,
        retention: Duration | None = "14d",
        prune_interval: Duration = "5m",
    ) -> Worker:
        """A worker in this process; use it as ``async with engine.worker(concurrency=32):``.

        See :class:`~werkfluss.worker.worker.Worker` for the options.
        """
        return Worker(
            self._worker_connection,
            concurrency=concurrency,
            workflows=workflows,
            lease=lease,
            poll_interval=poll_interval,
            shutdown_grace=shutdown_grace,
            cache_size=cache_size,
            worker_id=worker_id,
            retention=retention,
            prune_interval=prune_interval,
        )

    async def _worker_connection(self) -> tuple[Connector, Listener]:
        """What a worker needs: the pool and the LISTEN connection."""
        await self.open()
        listener = await self._listener_ready()
        return self.connector, listener


def _refuse_misplaced_options(workflow: Workflow[..., Any] | str, kwargs: dict[str, Any]) -> None:
    """``engine.start(wf, concurrency_key="c-42")`` passes a keyword argument to the
    workflow; if the workflow takes no such argument, it was meant as an option."""
    misplaced = sorted(OPTION_NAMES & kwargs.keys())
    if not misplaced or not isinstance(workflow, workflows.Workflow):
        return
    try:
        parameters = inspect.signature(workflow.fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins and the like
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [m for m in misplaced if m not in parameters]
    if unknown:
        example = ", ".join(f"{m}=..." for m in unknown)
        raise InvalidArgument(
            f"{workflow.name} takes no argument {unknown[0]!r}: start options go in "
            f"options=StartOptions({example})")


def _with_next_tick(info: ScheduleInfo, now: dt.datetime | None) -> ScheduleInfo:
    """The tick a schedule fires next: as stored, or — not computed by a
    worker yet — from its definition; none while it is paused or broken."""
    if info.paused or info.error is not None:
        return dataclasses.replace(info, next_tick=None)
    if info.next_tick is not None:
        return info
    try:
        spec = Schedule(info.cron, timezone=info.timezone, catchup=cast(Catchup, info.catchup),
                        overlap=cast(Overlap, info.overlap), catchup_limit=info.catchup_limit)
    except InvalidArgument:
        return info  # a worker will say why (the schedule's error)
    after = info.since if now is None else max(info.since, now)
    return dataclasses.replace(info, next_tick=spec.next_tick(after))
