"""Prometheus metrics for workers (``pip install "werkfluss[metrics]"``).

``python -m werkfluss.worker --app myapp.workflows --metrics-port 9464`` serves
them at ``http://127.0.0.1:9464/metrics``. In your own process::

    from werkfluss.worker.metrics import WorkerMetrics

    worker = engine.worker(concurrency=32)
    metrics = WorkerMetrics(worker)
    metrics.start()                         # count events, sample the queue
    host, port = metrics.serve(9464)        # or expose metrics.registry yourself
    async with worker:
        ...
    await metrics.stop()

The counters and histograms are fed by werkfluss's telemetry events
(:func:`werkfluss.telemetry.observe`): ``run.claimed``, ``run.completed``,
``run.failed``, ``step.completed``, ``step.retrying``, ``recorder.committed``
and the rest, so they count what every worker in the process does. Use one
``WorkerMetrics`` per process. The queue gauges come from a light query
(``queue_depth``) every ``sample_interval``; they describe the whole
database, so every worker reports the same values (aggregate them with
``max``, not ``sum``). The names are listed in ``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkfluss import telemetry
from werkfluss.durations import Duration, parse_duration
from werkfluss.errors import ConfigurationError, DatabaseError, InvalidArgument
from werkfluss.store import flow as flow_store

if TYPE_CHECKING:
    from werkfluss.worker.worker import Worker

# Seconds; steps may take from milliseconds to many minutes.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 900.0, 3600.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_FAILED = ("run.failed", "run.timed_out", "run.nondeterminism")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need the prometheus-client package: pip install 'werkfluss[metrics]'"
        ) from None
    return prometheus_client


class WorkerMetrics:
    """The Prometheus metrics of a worker process (see the module docs).

    Parameters:
        worker: the worker whose held runs and concurrency are reported, and
            whose connection samples the queue.
        registry: a ``prometheus_client.CollectorRegistry`` to register in;
            default: a new one, with the process, platform and GC collectors.
        sample_interval: how often the queue is sampled (default ``"15s"``,
            from 100 ms to 1 h).
    """

    def __init__(self, worker: Worker, *, registry: Any = None, sample_interval: Duration = "15s") -> None:
        prom = _prometheus()
        what = "the metrics sample interval (--metrics-interval)"
        self.sample_interval = parse_duration(sample_interval, what=what, allow_zero=False)
        if not 0.1 <= self.sample_interval <= 3600:
            raise InvalidArgument(f"{what} must be from 100ms to 1h, got {sample_interval!r}")
        self.worker = worker
        if registry is None:
            registry = prom.CollectorRegistry()
            prom.ProcessCollector(registry=registry)
            prom.PlatformCollector(registry=registry)
            prom.GCCollector(registry=registry)
        self.registry = registry
        counter, gauge, histogram = prom.Counter, prom.Gauge, prom.Histogram
        r = registry
        self.runs_started = counter("werkfluss_runs_started", "Runs whose first execution began here",
                                    ["workflow"], registry=r)
        self.runs_claimed = counter("werkfluss_runs_claimed", "Claims of runs, resumptions included",
                                    ["workflow"], registry=r)
        self.runs_finished = counter(
            "werkfluss_runs_finished", "Runs that ended here, by status (completed, failed, cancelled)",
            ["workflow", "status"], registry=r)
        self.step_duration = histogram(
            "werkfluss_step_duration_seconds", "Step executions (all attempts), by step and status",
            ["step", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.step_retries = counter("werkfluss_step_retries", "Step attempts that failed and were retried",
                                    ["step"], registry=r)
        self.claim_latency = histogram(
            "werkfluss_claim_latency_seconds", "How long runs were due before a worker here claimed them",
            ["workflow"], buckets=LATENCY_BUCKETS, registry=r)
        self.takeovers = counter("werkfluss_lease_takeovers",
                                 "Runs claimed here after their previous worker was declared dead",
                                 ["workflow"], registry=r)
        self.batch_size = histogram("werkfluss_group_commit_writes",
                                    "Writes committed together in one transaction (group commit)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.runs_held = gauge("werkfluss_runs_held", "Runs held by the worker right now", registry=r)
        self.runs_held.set_function(lambda: worker.held)
        self.concurrency = gauge("werkfluss_worker_concurrency", "Runs the worker may hold at once",
                                 registry=r)
        self.concurrency.set(worker.concurrency)
        self.queue_depth = gauge("werkfluss_queue_depth", "Runs due and not claimed, by workflow",
                                 ["workflow"], registry=r)
        self.queue_oldest = gauge(
            "werkfluss_queue_oldest_due_seconds",
            "How long the oldest due, unclaimed run of each workflow has been waiting", ["workflow"],
            registry=r)
        self.flow_running = gauge("werkfluss_flow_queue_running",
                                  "Runs of a queue holding a worker (what its limits count)", ["queue"],
                                  registry=r)
        self.flow_limit = gauge("werkfluss_flow_queue_concurrency",
                                "A queue's concurrency limit (queues with one)", ["queue"], registry=r)
        self.flow_waiting = gauge(
            "werkfluss_flow_queue_waiting",
            "Runs of a queue waiting: ready (for a slot or a worker), parked (their key at its limit), "
            "throttled (for their key's start token), scheduled (a delayed or debounced start)",
            ["queue", "state"], registry=r)
        self.flow_keys_at_limit = gauge("werkfluss_flow_queue_keys_at_limit",
                                        "Concurrency keys of a queue with per_key runs holding a worker",
                                        ["queue"], registry=r)
        self.queue_sampled = gauge("werkfluss_queue_sampled_timestamp_seconds",
                                   "When the queue gauges were last sampled (Unix time)", registry=r)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "run.claimed": self._claimed,
            "run.completed": self._finished("completed"),
            "run.cancelled": self._finished("cancelled"),
            "step.completed": self._step("completed"),
            "step.failed": self._step("failed"),
            "step.retrying": self._retrying,
            "worker.lease_taken_over": self._taken_over,
            "recorder.committed": self._committed,
        }
        for event in _FAILED:
            self._handlers[event] = self._finished("failed")
        self._seen_workflows: set[str] = set()
        self._unobserve: Callable[[], None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._server: Any = None
        self._thread: Any = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start counting events and sampling the queue (call it on the worker's event loop)."""
        if self._unobserve is None:
            self._unobserve = telemetry.observe(self._on_event)
        if self._sampler is None:
            self._stopping.clear()
            self._sampler = asyncio.get_running_loop().create_task(self._sample_loop(),
                                                                   name="werkfluss-metrics")

    def serve(self, port: int, host: str = "127.0.0.1") -> tuple[str, int]:
        """Serve ``/metrics`` over HTTP in a background thread; returns the address bound
        (``port=0`` picks a free port)."""
        prom = _prometheus()
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise InvalidArgument(f"the metrics port must be from 0 to 65535, got {port!r}")
        try:
            self._server, self._thread = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {err.strerror or err}; choose another "
                "--metrics-port (or --metrics-host), or stop what is using it"
            ) from None
        bound_host, bound_port = self._server.server_address[:2]
        telemetry.logger().info("metrics.serving", host=bound_host, port=bound_port, path="/metrics")
        return bound_host, bound_port

    async def stop(self) -> None:
        """Stop counting, sampling and serving."""
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            # Between samples, never in the middle of the query (a cancel
            # request costs the server, and trips some poolers).
            self._stopping.set()
            await asyncio.wait([sampler], timeout=5.0)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    async def __aenter__(self) -> WorkerMetrics:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- events ------------------------------------------------------------------------

    def _on_event(self, event: str, fields: dict[str, Any]) -> None:
        handler = self._handlers.get(event)
        if handler is not None:
            handler(fields)

    def _claimed(self, f: dict[str, Any]) -> None:
        workflow = str(f.get("workflow"))
        self.runs_claimed.labels(workflow).inc()
        if f.get("claims") == 1:
            self.runs_started.labels(workflow).inc()
        waited = f.get("waited_ms")
        if isinstance(waited, (int, float)):
            self.claim_latency.labels(workflow).observe(waited / 1000)

    def _finished(self, status: str) -> Callable[[dict[str, Any]], None]:
        def count(f: dict[str, Any]) -> None:
            self.runs_finished.labels(str(f.get("workflow")), status).inc()

        return count

    def _step(self, status: str) -> Callable[[dict[str, Any]], None]:
        def observe(f: dict[str, Any]) -> None:
            duration = f.get("duration_ms")
            if isinstance(duration, (int, float)):
                self.step_duration.labels(str(f.get("step")), status).observe(max(duration, 0) / 1000)

        return observe

    def _retrying(self, f: dict[str, Any]) -> None:
        self.step_retries.labels(str(f.get("step"))).inc()

    def _taken_over(self, f: dict[str, Any]) -> None:
        self.takeovers.labels(str(f.get("workflow"))).inc()

    def _committed(self, f: dict[str, Any]) -> None:
        writes = f.get("writes")
        if isinstance(writes, int):
            self.batch_size.observe(writes)

    # --- the queue sampler -------------------------------------------------------------

    async def sample(self) -> None:
        """Sample the queue once (the sampler calls it every ``sample_interval``)."""
        rows = await self.worker.connector.fetch_all("queue_depth")
        current = {str(row["workflow"]): row for row in rows}
        for workflow in self._seen_workflows - current.keys():
            self.queue_depth.labels(workflow).set(0)
            self.queue_oldest.labels(workflow).set(0)
        for workflow, row in current.items():
            self.queue_depth.labels(workflow).set(row["due"])
            self.queue_oldest.labels(workflow).set(max(float(row["oldest_due_s"] or 0), 0.0))
        self._seen_workflows |= current.keys()
        for queue in await flow_store.list_queues(self.worker.connector):
            self.flow_running.labels(queue.name).set(queue.running)
            if queue.concurrency is not None:
                self.flow_limit.labels(queue.name).set(queue.concurrency)
            for state in ("ready", "parked", "throttled", "scheduled"):
                self.flow_waiting.labels(queue.name, state).set(getattr(queue, state))
            self.flow_keys_at_limit.labels(queue.name).set(queue.keys_at_limit)
        self.queue_sampled.set_to_current_time()

    async def _sample_loop(self) -> None:
        failed = False
        while not self._stopping.is_set():
            wait = self.sample_interval
            try:
                await self.sample()
                failed = False
            except RuntimeError:  # the worker has not started (yet)
                wait = min(wait, 0.1)
            except DatabaseError as err:
                if not failed:
                    telemetry.logger().warning("metrics.sample_failed", error=str(err))
                failed = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
