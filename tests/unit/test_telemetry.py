"""Telemetry observers: every event, debug ones included, whatever the log level."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from werkfluss import telemetry


@pytest.fixture(autouse=True)
def _info_level() -> Any:
    telemetry.set_level("info")
    yield
    telemetry.set_level("info")


def test_an_observer_sees_every_event_with_its_fields_debug_ones_too() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    assert not telemetry.debug_enabled()
    stop = telemetry.observe(lambda event, fields: seen.append((event, fields)))
    try:
        assert telemetry.debug_enabled()  # debug events are built for the observer
        with capture_logs() as logs:
            telemetry.logger().debug("step.completed", step="app.fetch", duration_ms=1.5)
            telemetry.logger().warning("step.retrying", step="app.fetch", attempt=1)
    finally:
        stop()
    assert seen == [("step.completed", {"step": "app.fetch", "duration_ms": 1.5}),
                    ("step.retrying", {"step": "app.fetch", "attempt": 1})]
    assert [e["event"] for e in logs] == ["step.retrying"]  # the log level still filters the log
    assert not telemetry.debug_enabled()


def test_a_stopped_observer_sees_nothing_more() -> None:
    seen: list[str] = []
    stop = telemetry.observe(lambda event, fields: seen.append(event))
    telemetry.logger().info("run.completed")
    stop()
    telemetry.logger().info("run.failed")
    assert seen == ["run.completed"]


def test_an_observer_that_raises_does_not_break_the_caller() -> None:
    def broken(event: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("bug in an observer")

    seen: list[str] = []
    stops = [telemetry.observe(broken), telemetry.observe(lambda event, fields: seen.append(event))]
    try:
        with capture_logs() as logs:
            telemetry.logger().error("run.failed", run_id="r1")
    finally:
        for stop in stops:
            stop()
    assert seen == ["run.failed"]
    assert [e["event"] for e in logs] == ["run.failed"]
