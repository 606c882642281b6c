"""Spans are made only when a tracer provider is configured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from werkfluss import tracing


@pytest.fixture(autouse=True)
def no_provider() -> Iterator[None]:
    tracing.set_tracer_provider(None)
    yield
    tracing.set_tracer_provider(None)


def test_without_a_configured_provider_a_run_gets_no_span_and_its_steps_none() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing set globally
    span = tracing.start_run_span("r1", "app.wf", None, claims=1, resumed=False, replaying=0)
    assert span is None
    with tracing.step_span(span, "r1", "app.step", 1) as step:
        assert step._span is None


def test_a_provider_set_later_is_used_from_the_next_run_on() -> None:
    assert tracing.start_run_span("r1", "app.wf", None, claims=1, resumed=False, replaying=0) is None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    span = tracing.start_run_span("r2", "app.wf", None, claims=1, resumed=False, replaying=0)
    assert span is not None
    with tracing.step_span(span, "r2", "app.step", 1) as step:
        step.done(1, True)
    tracing.end_run_span(span, "completed")
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["run app.wf", "step app.step"]


def test_a_process_that_never_imports_opentelemetry_does_not_load_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from werkfluss import tracing\n"
        "assert tracing.current_traceparent() is None\n"
        "assert tracing.start_run_span('r', 'wf', None, claims=1, resumed=False, replaying=0) is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert loaded == [], loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
