"""Structured log events (structlog): stable names, context as key/value.

werkfluss never configures structlog on import; your application's
configuration renders its events. Its own threshold (``WERKFLUSS_LOG_LEVEL``,
default ``info``) drops per-step ``debug`` events cheaply. The command line
calls :func:`configure_logging` to render JSON or console lines::

    from werkfluss import configure_logging
    configure_logging(format="json", level="debug")

Event names are part of the public surface; see ``docs/reference.md`` for the
list and their keys (``run.started``, ``run.completed``, ``run.failed``,
``step.completed``, ``step.retrying``, ``worker.lease_taken_over``, ...).

The same events feed werkfluss's metrics: :func:`observe` registers a
callback that sees every event, ``debug`` ones included, whatever the log
threshold (:mod:`werkfluss.worker.metrics` counts them for Prometheus)::

    from werkfluss import telemetry

    seen = []
    stop = telemetry.observe(lambda event, fields: seen.append(event))
    telemetry.logger().info("run.completed", run_id="r1", workflow="app.onboard")
    stop()
    assert seen == ["run.completed"]
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _level_from_env() -> int:
    return _LEVELS.get(os.environ.get("WERKFLUSS_LOG_LEVEL", "info").lower(), logging.INFO)


_level = _level_from_env()
_logger: Any = None

Observer = Callable[[str, dict[str, Any]], None]
_observers: tuple[Observer, ...] = ()


def logger() -> Any:
    """The werkfluss logger (a structlog bound logger filtered at werkfluss's level).

    While observers are registered (:func:`observe`), every event goes to them
    first, then to structlog.
    """
    global _logger
    if _logger is None:
        _logger = structlog.wrap_logger(
            None,
            wrapper_class=structlog.make_filtering_bound_logger(_level),
            logger_factory_args=("werkfluss",),
        )
        if _observers:
            _logger = _Observed(_logger)
    return _logger


def observe(observer: Observer) -> Callable[[], None]:
    """Call ``observer(event, fields)`` for every werkfluss event; returns a function that stops it.

    Observers see ``debug`` events too, whatever the log threshold. They are
    called synchronously where the event happens, so they must be quick and
    must not raise (an exception is swallowed: telemetry never breaks a run).
    """
    global _observers, _logger

    _observers = (*_observers, observer)
    _logger = None

    def stop() -> None:
        global _observers, _logger
        _observers = tuple(o for o in _observers if o is not observer)
        _logger = None

    return stop


class _Observed:
    """The werkfluss logger with observers: each event goes to them, then on to structlog."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def _notify(self, event: str, fields: dict[str, Any]) -> None:
        for observer in _observers:
            try:
                observer(event, fields)
            except Exception:  # an observer's bug must not fail a run
                pass

    def debug(self, event: str, **fields: Any) -> Any:
        self._notify(event, fields)
        return self._inner.debug(event, **fields)

    def info(self, event: str, **fields: Any) -> Any:
        self._notify(event, fields)
        return self._inner.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> Any:
        self._notify(event, fields)
        return self._inner.warning(event, **fields)

    def error(self, event: str, **fields: Any) -> Any:
        self._notify(event, fields)
        return self._inner.error(event, **fields)

    def exception(self, event: str, **fields: Any) -> Any:
        self._notify(event, fields)
        return self._inner.exception(event, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def set_level(level: str | int) -> None:
    """Change werkfluss's own threshold (``"debug"``, ``"info"``, ...)."""
    global _level, _logger
    if isinstance(level, str):
        try:
            level = _LEVELS[level.lower()]
        except KeyError:
            raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None
    _level = level
    _logger = None


def debug_enabled() -> bool:
    """Whether ``debug`` events are wanted: by the log threshold, or by an observer."""
    return _level <= logging.DEBUG or bool(_observers)


def configure_logging(format: str = "console", level: str = "info") -> None:
    """Render werkfluss's events (and the application's) as ``json`` or ``console`` lines.

    Meant for the command line and simple scripts; an application that already
    configures structlog should keep its own configuration.
    """
    if format not in ("json", "console"):
        raise ValueError(f"unknown log format {format!r}; use 'json' or 'console'")
    set_level(level)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks if format == "json" else _identity,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _identity(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return event
