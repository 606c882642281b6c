"""OpenTelemetry tracing: a span per run execution and per step, in the caller's trace.

Install the extra (``pip install "werkfluss[otel]"``) and configure the
OpenTelemetry SDK in your application and your workers as you do for
everything else; werkfluss then records:

* ``engine.start()`` stores the W3C ``traceparent`` of the caller's current
  span with the new run (column ``werkfluss.runs.traceparent``);
* each time a worker drives the run (from its claim until it finishes,
  suspends for a sleep or a wait, or is handed back), a span
  ``run <workflow>`` (kind ``CONSUMER``) whose parent is that stored context;
  a run that sleeps once has two such spans in the same trace;
* a span ``step <step name>`` (kind ``INTERNAL``) per step execution, all its
  attempts included, as a child of the run span; it is the current span
  while the step body runs, so your own instrumented calls nest under it;
* a child run's spans under the span of the parent run that started it.

Steps replayed from the log are not executed and have no span. Without the
``opentelemetry-api`` package nothing is imported and nothing changes; with
the API but no tracer provider configured (``set_tracer_provider`` here or
in OpenTelemetry) workers make no spans at all, and begin with the first run
they claim after one is set.

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())   # plus your exporter
    with trace.get_tracer("app").start_as_current_span("signup"):
        await engine.start(onboard, "user-123")   # its spans join this trace
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

_MISSING = object()
_otel: Any = None  # the imported API (a namespace), _MISSING if not installed, None before the first look
_provider: Any = None  # a TracerProvider set with set_tracer_provider(), else the global one


class _Api:
    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.trace = trace
        self.propagator = TraceContextTextMapPropagator()


def _api() -> _Api | None:
    global _otel
    if _otel is None:
        try:
            _otel = _Api()
        except ImportError:
            _otel = _MISSING
    return None if _otel is _MISSING else _otel


def available() -> bool:
    """Whether the OpenTelemetry API is installed (and werkfluss records spans)."""
    return _api() is not None


def set_tracer_provider(provider: Any) -> None:
    """Record werkfluss's spans with ``provider`` instead of the global one (``None``: the global one).

    For tests, and for applications that keep several providers.
    """
    global _provider
    _provider = provider


@cache
def _version() -> str:
    try:
        return version("werkfluss")
    except PackageNotFoundError:  # pragma: no cover - a source tree without install
        return "0+unknown"


def _tracer(api: _Api) -> Any:
    return api.trace.get_tracer("werkfluss", _version(), tracer_provider=_provider)


def _in_use() -> bool:
    """Whether anything could have made a span: a provider set here, or the
    OpenTelemetry API imported by the application. (Until then werkfluss
    does not import it: a process that never uses it does not pay for it.)"""
    return _provider is not None or "opentelemetry.trace" in sys.modules


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the caller's current span, or ``None`` (no API, no valid span)."""
    api = _api() if _in_use() else None
    if api is None:
        return None
    carrier: dict[str, str] = {}
    api.propagator.inject(carrier)
    value = carrier.get("traceparent")
    return value if value is not None and _TRACEPARENT.match(value) else None


def _configured(api: _Api) -> bool:
    """Whether spans go anywhere: a provider was set here or globally (until
    then OpenTelemetry hands out no-op spans, which cost a run's steps time
    for nothing)."""
    return _provider is not None or not isinstance(api.trace.get_tracer_provider(),
                                                   api.trace.ProxyTracerProvider)


def start_run_span(run_id: str, workflow: str, traceparent: str | None, *, claims: int,
                   resumed: bool, replaying: int) -> Any:
    """A started span for one execution of a run (``None`` without the API,
    or while no tracer provider is configured: then steps have none either)."""
    api = _api() if _in_use() else None
    if api is None or not _configured(api):
        return None
    # An explicit context: a run without a stored traceparent starts its own
    # trace, whatever span happens to be current where the worker runs.
    parent = (api.propagator.extract({"traceparent": traceparent}) if traceparent
              else api.context.Context())
    return _tracer(api).start_span(
        f"run {workflow}", context=parent, kind=api.trace.SpanKind.CONSUMER,
        attributes={
            "werkfluss.run_id": run_id, "werkfluss.workflow": workflow, "werkfluss.claims": claims,
            "werkfluss.resumed": resumed, "werkfluss.replaying": replaying,
        },
    )


def end_run_span(span: Any, outcome: str, error: str | None = None) -> None:
    """End a run span with how the execution ended (``completed``, ``failed``,
    ``cancelled``, ``sleeping``, ``waiting``, ``released``, ``lost``)."""
    api = _api()
    if span is None or api is None:
        return
    span.set_attribute("werkfluss.outcome", outcome)
    if outcome in ("failed", "lost"):
        span.set_status(api.trace.Status(api.trace.StatusCode.ERROR, error or outcome))
    span.end()


def traceparent_of(span: Any) -> str | None:
    """The W3C ``traceparent`` that makes a new run a child of ``span`` (child runs)."""
    api = _api()
    if span is None or api is None:
        return None
    carrier: dict[str, str] = {}
    api.propagator.inject(carrier, context=api.trace.set_span_in_context(span))
    return carrier.get("traceparent")


class StepSpan:
    """The span of one step execution; :meth:`done` records its outcome."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def done(self, attempts: int, ok: bool, error: BaseException | None = None) -> None:
        api = _api()
        if self._span is None or api is None:
            return
        self._span.set_attribute("werkfluss.attempts", attempts)
        self._span.set_attribute("werkfluss.outcome", "completed" if ok else "failed")
        if not ok:
            if error is not None:
                self._span.record_exception(error)
            description = f"{type(error).__name__}: {error}" if error is not None else "the step failed"
            self._span.set_status(api.trace.Status(api.trace.StatusCode.ERROR, description))


@contextmanager
def step_span(run_span: Any, run_id: str, step: str, seq: int) -> Iterator[StepSpan]:
    """A span for one step execution, current while the body runs (a no-op without a run span)."""
    api = _api()
    if run_span is None or api is None:
        yield StepSpan(None)
        return
    span = _tracer(api).start_span(
        f"step {step}", context=api.trace.set_span_in_context(run_span),
        attributes={"werkfluss.run_id": run_id, "werkfluss.step": step, "werkfluss.seq": seq},
    )
    token = api.context.attach(api.trace.set_span_in_context(span))
    try:
        yield StepSpan(span)
    except BaseException:
        span.set_attribute("werkfluss.outcome", "cancelled")
        raise
    finally:
        api.context.detach(token)
        span.end()
