"""Exceptions as log records, and back.

A failure is stored as JSON: its type, message and traceback, plus what is
needed to rebuild it (``class`` as ``module:qualname`` and its ``args``).
Live and replayed calls raise the *rebuilt* exception, so a workflow sees the
same exception whether a step just failed or failed before a crash.

    >>> record = error_record(ValueError("bad input"))
    >>> record["type"], record["message"]
    ('ValueError', 'bad input')
    >>> type(rebuild_exception(record)).__name__
    'ValueError'
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from werkfluss import serializer
from werkfluss.errors import StepFailed


def type_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``module.QualName`` otherwise."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def error_record(exc: BaseException) -> dict[str, Any]:
    """The JSON-able record of an exception: type, message, traceback (and args to rebuild it)."""
    record: dict[str, Any] = {
        "type": _storable(type_name(exc)),
        "message": _storable(str(exc)),
        "traceback": _storable("".join(traceback.format_exception(exc))),
        "class": _storable(f"{type(exc).__module__}:{type(exc).__qualname__}"),
    }
    try:
        serializer.dumps(list(exc.args))  # refuses what PostgreSQL could not store
        record["args"] = serializer.encode(list(exc.args))
    except Exception:  # args that are not serializable: the exception is rebuilt as StepFailed
        pass
    return record


def _storable(text: str) -> str:
    """Text PostgreSQL can store: no NUL, no lone surrogates (replaced, visibly)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_json(exc: BaseException) -> str:
    return json.dumps(error_record(exc), ensure_ascii=False)


def rebuild_exception(record: dict[str, Any], *, where: str = "") -> Exception:
    """The exception a recorded error stands for: its own class when that can be
    imported and rebuilt from the recorded args with the recorded message,
    else :class:`StepFailed`."""
    exc: Exception | None = None
    class_path, args = record.get("class"), record.get("args")
    if class_path and args is not None:
        try:
            cls = serializer.resolve_class(class_path)
            if issubclass(cls, Exception):
                exc = cls(*serializer.decode(args))
                if str(exc) != record.get("message"):
                    exc = None  # the class does not rebuild faithfully from its args
        except Exception:
            exc = None
    if exc is None:
        exc = StepFailed(str(record.get("type")), str(record.get("message")), record.get("traceback"))
    if record.get("traceback"):
        exc.add_note(f"recorded by werkfluss{where}; original traceback:\n{record['traceback']}")
    return exc
