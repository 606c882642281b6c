"""OpenTelemetry: the starter's span → a span per run execution → a span per step."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from werkfluss import Engine, FatalError, sleep, step, workflow
from werkfluss import tracing as wf_tracing

from ..helpers import ROOT, sql, sql_value

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests")


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    wf_tracing.set_tracer_provider(PROVIDER)
    EXPORTER.clear()
    yield EXPORTER
    wf_tracing.set_tracer_provider(None)
    EXPORTER.clear()


SEEN_IN_STEP: list[str] = []


@step(name="tests.tracing.fetch")
async def fetch(user: str) -> dict:
    # The step span is current while the body runs: your own spans nest under it.
    with trace.get_tracer("tests", tracer_provider=PROVIDER).start_as_current_span("http GET /users"):
        SEEN_IN_STEP.append(trace.get_current_span().get_span_context().trace_id.to_bytes(16, "big").hex())
    return {"user": user}


@step(name="tests.tracing.save")
def save(data: dict) -> str:  # a sync step, in a pool thread
    SEEN_IN_STEP.append(format(trace.get_current_span().get_span_context().span_id, "016x"))
    return f"saved {data['user']}"


@step(name="tests.tracing.charge")
async def charge() -> None:
    raise FatalError("card is blocked")


@workflow(name="tests.tracing.child")
async def child(user: str) -> str:
    return (await fetch(user))["user"]


@workflow(name="tests.tracing.parent")
async def parent(user: str) -> str:
    data = await fetch(user)
    await sleep(0.05)  # the run leaves the worker: its next execution gets a span of its own
    saved = await save(data)
    return f"{saved} / {await child(user + '-child')}"


@workflow(name="tests.tracing.failing")
async def failing() -> None:
    await charge()


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_spans_follow_the_run_from_the_starters_span(engine: Engine, dsn: str,
                                                           spans: InMemorySpanExporter) -> None:
    SEEN_IN_STEP.clear()
    with TRACER.start_as_current_span("signup") as caller:
        handle = await engine.start(parent, "ada")
        ctx = caller.get_span_context()
        traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    stored = sql_value(dsn, "SELECT traceparent FROM werkfluss.runs WHERE id = %s", [handle.run_id])
    assert stored == traceparent
    async with engine.worker(workflows=[parent, child]):
        assert await handle.result(timeout=10) == "saved ada / ada-child"

    finished = list(spans.get_finished_spans())
    (signup,) = by_name(finished, "signup")
    trace_id = signup.context.trace_id
    assert all(s.context.trace_id == trace_id for s in finished), "every span is in the starter's trace"

    runs = by_name(finished, "run tests.tracing.parent")
    # Three executions: until the sleep, until it waits for its child, to the end.
    assert len(runs) == 3
    assert all(parent_id(r) == signup.context.span_id for r in runs)
    assert all(r.kind is SpanKind.CONSUMER for r in runs)
    first, second, third = sorted(runs, key=lambda r: r.start_time)
    assert [r.attributes["werkfluss.outcome"] for r in (first, second, third)] == [
        "sleeping", "waiting", "completed"]
    assert [r.attributes["werkfluss.claims"] for r in (first, second, third)] == [1, 2, 3]
    assert {r.attributes["werkfluss.run_id"] for r in runs} == {handle.run_id}

    fetches = by_name(finished, "step tests.tracing.fetch")
    parent_fetch = [s for s in fetches if s.attributes["werkfluss.run_id"] == handle.run_id]
    assert [parent_id(s) for s in parent_fetch] == [first.context.span_id]
    (save_span,) = by_name(finished, "step tests.tracing.save")
    assert parent_id(save_span) == second.context.span_id
    assert save_span.attributes["werkfluss.outcome"] == "completed"
    assert save_span.attributes["werkfluss.attempts"] == 1
    # The replayed steps of later executions were not executed: no spans.
    assert len(parent_fetch) == 1

    # The step span was current in the step bodies (async and sync).
    step_spans = {s.context.span_id for s in fetches}
    calls = by_name(finished, "http GET /users")
    assert len(calls) == 2
    assert {parent_id(c) for c in calls} == step_spans  # the parent's and the child's
    assert format(save_span.context.span_id, "016x") in SEEN_IN_STEP

    # The child run's span hangs under the parent's execution that started it.
    (child_run,) = by_name(finished, "run tests.tracing.child")
    assert parent_id(child_run) == second.context.span_id
    (child_fetch,) = [s for s in fetches if s.attributes["werkfluss.run_id"] != handle.run_id]
    assert parent_id(child_fetch) == child_run.context.span_id


async def test_a_failed_step_and_run_are_error_spans(engine: Engine, spans: InMemorySpanExporter) -> None:
    with TRACER.start_as_current_span("checkout"):
        handle = await engine.start(failing)
    async with engine.worker(workflows=[failing]):
        with pytest.raises(Exception, match="card is blocked"):
            await handle.result(timeout=10)
    finished = list(spans.get_finished_spans())
    (step_span,) = by_name(finished, "step tests.tracing.charge")
    assert step_span.status.status_code is StatusCode.ERROR
    assert step_span.attributes["werkfluss.outcome"] == "failed"
    assert [e.name for e in step_span.events] == ["exception"]
    (run_span,) = by_name(finished, "run tests.tracing.failing")
    assert run_span.status.status_code is StatusCode.ERROR
    assert run_span.attributes["werkfluss.outcome"] == "failed"


async def test_a_run_started_from_sql_joins_the_trace_in_werkfluss_traceparent(
        engine: Engine, dsn: str, spans: InMemorySpanExporter) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('werkfluss.traceparent', %s, true)", [traceparent])
        run_id = conn.execute("SELECT werkfluss.start_run('tests.tracing.child', '[\"sql\"]')").fetchone()[0]
    plain = sql_value(dsn, "SELECT werkfluss.start_run('tests.tracing.child', '[\"plain\"]')")
    assert sql(dsn, "SELECT id, traceparent FROM werkfluss.runs ORDER BY id") == sorted(
        [(run_id, traceparent), (plain, None)])
    async with engine.worker(workflows=[child]):
        assert await engine.handle(run_id).result(timeout=10) == "sql"
        assert await engine.handle(plain).result(timeout=10) == "plain"
    finished = by_name(spans.get_finished_spans(), "run tests.tracing.child")
    runs = {s.attributes["werkfluss.run_id"]: s for s in finished}
    assert runs[run_id].context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert parent_id(runs[run_id]) == 0x00F067AA0BA902B7
    assert runs[plain].parent is None  # no stored context: a trace of its own


def test_a_malformed_traceparent_from_sql_is_refused_and_nothing_is_stored(dsn: str) -> None:
    start = """SET LOCAL werkfluss.traceparent = 'not-a-trace';
               SELECT werkfluss.start_run('tests.tracing.child', '[]')"""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction(force_rollback=True), \
            pytest.raises(psycopg.errors.InvalidParameterValue, match="must be a W3C traceparent"):
        conn.execute(start)
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


async def test_starting_outside_any_span_stores_no_context(engine: Engine, dsn: str) -> None:
    handle = await engine.start(child, "no-span")
    assert sql_value(dsn, "SELECT traceparent FROM werkfluss.runs WHERE id = %s", [handle.run_id]) is None


def test_without_opentelemetry_nothing_is_imported_and_runs_work(dsn: str) -> None:
    script = """
import asyncio, sys
sys.modules["opentelemetry"] = None   # as if the extra were not installed
from werkfluss import Engine, step, workflow, tracing

@step
async def hello(name: str) -> str:
    return "hello " + name

@workflow(name="tests.tracing.without_otel")
async def greet(name: str) -> str:
    return await hello(name)

async def main() -> None:
    async with Engine(sys.argv[1]) as engine:
        handle = await engine.start(greet, "ada")
        async with engine.worker(workflows=[greet]):
            print(await handle.result(timeout=10))
    print("available:", tracing.available())
    print("imported:", sorted(m for m, mod in sys.modules.items() if m.startswith("opentelemetry") and mod))

asyncio.run(main())
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), WERKFLUSS_LOG_LEVEL="error")
    done = subprocess.run([sys.executable, "-c", script, dsn], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello ada", "available: False", "imported: []"]
