"""The Prometheus endpoint: scraped over HTTP while runs go through a worker."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from werkfluss import (
    ConfigurationError,
    Engine,
    FatalError,
    InvalidArgument,
    Queue,
    StartOptions,
    step,
    workflow,
)
from werkfluss.worker.metrics import WorkerMetrics

from ..helpers import WorkerProcess, sql, wait_until

GATES: dict[str, asyncio.Event] = {}
ATTEMPTS: dict[str, int] = defaultdict(int)


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    ATTEMPTS.clear()


@step(name="tests.metrics.flaky", retries=2, retry_delay=0.01)
async def flaky(key: str) -> str:
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] < 3:
        raise ConnectionError(f"attempt {ATTEMPTS[key]} failed")
    return key


@step(name="tests.metrics.broken")
async def broken() -> None:
    raise FatalError("card is blocked")


@step(name="tests.metrics.held")
async def held(name: str) -> str:
    await GATES.setdefault(name, asyncio.Event()).wait()
    return name


@workflow(name="tests.metrics.work")
async def work(kind: str) -> str:
    if kind == "fail":
        await broken()
    if kind.startswith("hold"):
        return await held(kind)
    return await flaky(kind)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: {(name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_endpoint_counts_runs_steps_retries_claims_and_commits(engine: Engine, dsn: str) -> None:
    worker = engine.worker(workflows=[work], concurrency=4)
    metrics = WorkerMetrics(worker, sample_interval="100ms")
    host, port = metrics.serve(0)
    url = f"http://{host}:{port}/metrics"
    metrics.start()
    try:
        async with worker:
            handles = [await engine.start(work, f"ok-{i}") for i in range(3)]
            failing = await engine.start(work, "fail")
            holding = await engine.start(work, "hold-1")
            for handle in handles:
                assert (await handle.result(timeout=10)).startswith("ok-")
            async def failed() -> bool:
                return await failing.status() == "failed"

            await wait_until(failed, message="the failing run failed")

            async def holding_one() -> bool:
                return value(await asyncio.to_thread(scrape, url), "werkfluss_runs_held") == 1

            await wait_until(holding_one, message="runs_held = 1 while a step is held")
            await engine.cancel(holding.run_id)

            async def all_counted() -> dict | None:
                s = await asyncio.to_thread(scrape, url)
                done = value(s, "werkfluss_runs_finished_total", workflow=work.name, status="cancelled")
                sampled = value(s, "werkfluss_queue_sampled_timestamp_seconds")
                return s if done == 1 and sampled else None

            samples = await wait_until(all_counted, message="the cancelled run counted")
    finally:
        await metrics.stop()

    wf = work.name
    assert value(samples, "werkfluss_runs_started_total", workflow=wf) == 5
    assert value(samples, "werkfluss_runs_claimed_total", workflow=wf) == 5
    assert value(samples, "werkfluss_runs_finished_total", workflow=wf, status="completed") == 3
    assert value(samples, "werkfluss_runs_finished_total", workflow=wf, status="failed") == 1
    assert value(samples, "werkfluss_runs_held") == 0
    assert value(samples, "werkfluss_worker_concurrency") == 4
    # Each flaky step failed twice before it succeeded.
    assert value(samples, "werkfluss_step_retries_total", step="tests.metrics.flaky") == 6
    assert value(samples, "werkfluss_step_duration_seconds_count",
                 step="tests.metrics.flaky", status="completed") == 3
    assert value(samples, "werkfluss_step_duration_seconds_sum",
                 step="tests.metrics.flaky", status="completed") > 0
    assert value(samples, "werkfluss_step_duration_seconds_count",
                 step="tests.metrics.broken", status="failed") == 1
    assert value(samples, "werkfluss_claim_latency_seconds_count", workflow=wf) == 5
    assert value(samples, "werkfluss_claim_latency_seconds_bucket", workflow=wf, le="+Inf") == 5
    commits = value(samples, "werkfluss_group_commit_writes_count")
    assert commits > 0
    assert value(samples, "werkfluss_group_commit_writes_sum") >= commits
    assert value(samples, "werkfluss_queue_sampled_timestamp_seconds") > 0
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)  # the process collector


async def test_the_queue_gauges_show_the_backlog_of_a_workflow_nobody_serves(engine: Engine) -> None:
    for i in range(3):
        await engine.start("tests.metrics.nobody_serves_this", [i])
    worker = engine.worker(workflows=[work])
    async with WorkerMetrics(worker, sample_interval="100ms") as metrics, worker:
        host, port = metrics.serve(0)
        url = f"http://{host}:{port}/metrics"

        async def backlog() -> dict | None:
            s = await asyncio.to_thread(scrape, url)
            depth = value(s, "werkfluss_queue_depth", workflow="tests.metrics.nobody_serves_this")
            return s if depth else None

        samples = await wait_until(backlog, message="the backlog sampled")
    assert value(samples, "werkfluss_queue_depth", workflow="tests.metrics.nobody_serves_this") == 3
    assert value(samples, "werkfluss_queue_oldest_due_seconds",
                 workflow="tests.metrics.nobody_serves_this") > 0


async def test_a_lease_take_over_is_counted(engine: Engine, dsn: str) -> None:
    handle = await engine.start(work, "taken")
    # A worker that claimed the run and died: its lease runs out at once.
    sql(dsn, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'dead-worker',
                available_at = now(), claims = 1""")
    worker = engine.worker(workflows=[work])
    async with WorkerMetrics(worker) as metrics, worker:
        assert await handle.result(timeout=10) == "taken"
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for m in metrics.registry.collect() for s in m.samples}
    assert value(samples, "werkfluss_lease_takeovers_total", workflow=work.name) == 1
    assert value(samples, "werkfluss_runs_started_total", workflow=work.name) == 0  # its second claim


async def test_a_busy_metrics_port_is_a_clear_error(engine: Engine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = WorkerMetrics(engine.worker(workflows=[work]))
        message = f"cannot serve metrics on 127.0.0.1:{port}.*--metrics-port"
        with pytest.raises(ConfigurationError, match=message):
            metrics.serve(port)


@pytest.mark.parametrize("interval", ["1ms", "2h", "soon", 0])
def test_a_bad_sample_interval_is_refused_clearly(engine: Engine, interval: object) -> None:
    with pytest.raises(InvalidArgument, match=r"metrics sample interval \(--metrics-interval\)"):
        WorkerMetrics(engine.worker(workflows=[work]), sample_interval=interval)  # type: ignore[arg-type]


def test_metrics_without_prometheus_client_say_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'werkfluss\[metrics\]'"):
        WorkerMetrics(engine.worker(workflows=[work]))


async def test_a_worker_process_serves_metrics_on_its_port(dsn: str, tmp_path: Path) -> None:
    proc = WorkerProcess(dsn, "tests.integration.test_metrics", "--metrics-port", "0",
                         "--metrics-interval", "200ms", log_dir=tmp_path)
    try:
        await proc.wait_for_output('"metrics.serving"')
        line = next(json.loads(x) for x in proc.output().splitlines() if '"metrics.serving"' in x)
        url = f"http://{line['host']}:{line['port']}/metrics"
        assert line["host"] == "127.0.0.1"
        async with Engine(dsn) as engine:
            handle = await engine.start(work, "from-a-process")
            assert await handle.result(timeout=20) == "from-a-process"

        async def counted() -> dict | None:
            s = await asyncio.to_thread(scrape, url)
            done = value(s, "werkfluss_runs_finished_total", workflow=work.name, status="completed")
            sampled = value(s, "werkfluss_queue_sampled_timestamp_seconds")
            return s if done == 1 and sampled else None

        samples = await wait_until(counted, timeout=20, message="the run counted, the queue sampled")
        assert value(samples, "werkfluss_step_retries_total", step="tests.metrics.flaky") == 2
        assert value(samples, "werkfluss_queue_sampled_timestamp_seconds") > 0
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
    finally:
        proc.close()


def test_a_worker_process_refuses_a_busy_metrics_port(dsn: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = WorkerProcess(dsn, "tests.integration.test_metrics", "--metrics-port", str(port),
                             log_dir=tmp_path)
        try:
            assert proc.proc.wait(timeout=60) == 1
            assert f"werkfluss worker: cannot serve metrics on 127.0.0.1:{port}" in proc.output()
        finally:
            proc.close()


async def test_the_queue_gauges_count_a_queue_s_runs_against_its_limits(engine: Engine, dsn: str) -> None:
    await engine.declare_queue(Queue("tests.metrics.flow", concurrency=5, per_key=1))
    for _ in range(3):
        await engine.start("tests.metrics.nobody_serves_this", options=StartOptions(
            queue="tests.metrics.flow", concurrency_key="k"))
    await engine.start("tests.metrics.nobody_serves_this", options=StartOptions(
        queue="tests.metrics.flow", delay="1h"))
    sql(dsn, "SELECT count(*) FROM werkfluss._claim(ARRAY['tests.metrics.nobody_serves_this'], 5, 'probe')")
    worker = engine.worker(workflows=[work])
    async with WorkerMetrics(worker, sample_interval="100ms") as metrics, worker:
        await metrics.sample()
        host, port = metrics.serve(0)
        samples = await asyncio.to_thread(scrape, f"http://{host}:{port}/metrics")
    labels = {"queue": "tests.metrics.flow"}
    assert value(samples, "werkfluss_flow_queue_running", **labels) == 1
    assert value(samples, "werkfluss_flow_queue_concurrency", **labels) == 5
    assert value(samples, "werkfluss_flow_queue_keys_at_limit", **labels) == 1
    assert value(samples, "werkfluss_flow_queue_waiting", state="parked", **labels) == 2
    assert value(samples, "werkfluss_flow_queue_waiting", state="scheduled", **labels) == 1
    assert value(samples, "werkfluss_flow_queue_waiting", state="ready", **labels) == 0
