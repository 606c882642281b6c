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
"""

from __future__ import annotations

import logging
import os
import sys
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


def logger() -> Any:
    """The werkfluss logger (a structlog bound logger filtered at werkfluss's level)."""
    global _logger
    if _logger is None:
        _logger = structlog.wrap_logger(
            None,
            wrapper_class=structlog.make_filtering_bound_logger(_level),
            logger_factory_args=("werkfluss",),
        )
    return _logger


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
    return _level <= logging.DEBUG


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
