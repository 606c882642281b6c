"""JSON serialization of workflow arguments, step inputs and results.

Values are stored as ``jsonb``: readable in SQL, safe to load (no pickle, so
whoever can write the tables cannot run code in a worker). Plain JSON values
(``str``, ``int``, ``float``, ``bool``, ``None``, ``list``, ``dict`` with string
keys) are stored as themselves, so ``'["user-123"]'`` from SQL and
``start(wf, "user-123")`` from Python mean the same thing. Other common types
are stored as small tagged objects and come back as the same type::

    >>> from datetime import date
    >>> loads(dumps({"when": date(2026, 11, 26), "pair": (1, 2)}))
    {'when': datetime.date(2026, 11, 26), 'pair': (1, 2)}

Round-tripped: datetime, date, time, timedelta, UUID, Decimal, bytes,
bytearray, tuple, set, frozenset, dict with non-string keys, Enum members,
dataclass instances and pydantic models. Classes (dataclasses, enums, models)
are looked up by module and name when loading, and only those three kinds are
ever constructed. Anything else raises :class:`SerializationError` naming the
path of the offending value.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import importlib
import json
import math
import uuid
from decimal import Decimal
from typing import Any

from werkfluss.errors import SerializationError

TAG = "__werkfluss__"

_PLAIN = (str, int, float, bool, type(None))


class _PathError(Exception):
    """Carries the path to an unserializable value up the recursion."""

    def __init__(self, path: list[str], reason: str) -> None:
        self.path = path
        self.reason = reason


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` as JSON text; raise :class:`SerializationError` if it can't be.

    ``what`` names the value in the error message ("argument", "step result", ...).
    """
    try:
        encoded = encode(value)
    except _PathError as err:
        where = "".join(reversed(err.path)) or "(top level)"
        raise SerializationError(
            f"cannot serialize {what}: {err.reason} at {where}. werkfluss stores values "
            "as JSON; use str/int/float/bool/None, lists, dicts, tuples, dataclasses, "
            "datetime, date, UUID, Decimal or bytes — or convert the value first"
        ) from None
    return json.dumps(encoded, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | None) -> Any:
    """Decode JSON text written by :func:`dumps` (or plain JSON written from SQL)."""
    if text is None:
        return None
    value = json.loads(text)
    if TAG not in text:  # fast path: nothing tagged, plain JSON is the answer
        return value
    return decode(value)


def encode(value: Any) -> Any:
    """Turn ``value`` into plain JSON-compatible data (tagging non-JSON types)."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise _PathError([], "a string contains a NUL character (PostgreSQL rejects it)")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _PathError([], "a string contains a lone surrogate (not valid UTF-8)") from None
        return value
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _PathError([], f"the float {value!r} is not valid JSON")
        return value
    if kind is list:
        return [_item(v, f"[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: _item(v, f"[{k!r}]") for k, v in value.items()}
        return {
            TAG: "dict",
            "v": [[_item(k, f"<key {k!r}>"), _item(v, f"[{k!r}]")] for k, v in value.items()],
        }
    return _encode_other(value)


def _item(value: Any, step: str) -> Any:
    try:
        return encode(value)
    except _PathError as err:
        err.path.append(step)
        raise


def _encode_other(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "cls": _class_path(type(value)), "v": _item(value.value, ".value")}
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [_item(v, f"[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        tag = "frozenset" if isinstance(value, frozenset) else "set"
        return {TAG: tag, "v": [_item(v, "<set item>") for v in value]}
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        tag = "bytearray" if isinstance(value, bytearray) else "bytes"
        return {TAG: tag, "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, str):  # str subclasses
        return encode(str(value))
    if isinstance(value, int):  # int subclasses that are not enums
        return int(value)
    if isinstance(value, float):
        return encode(float(value))
    if isinstance(value, list):
        return encode(list(value))
    if isinstance(value, dict):
        return encode(dict(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: _item(getattr(value, f.name), f".{f.name}")
            for f in dataclasses.fields(value)
        }
        return {TAG: "dataclass", "cls": _class_path(type(value)), "v": fields}
    if hasattr(value, "model_dump") and hasattr(type(value), "model_validate"):
        data = value.model_dump(mode="json")
        return {TAG: "model", "cls": _class_path(type(value)), "v": _item(data, "")}
    raise _PathError([], f"a value of type {type(value).__qualname__} is not serializable")


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: str) -> type:
    """Find a class by ``module:qualname`` (importing the module if needed)."""
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise SerializationError(
            f"cannot load a stored {path}: the class is not importable here ({err}); "
            "deploy the code that defines it to every worker"
        ) from None
    if not isinstance(obj, type):
        raise SerializationError(f"cannot load a stored {path}: it is not a class")
    return obj


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    kind = type(value)
    if kind is list:
        return [decode(v) for v in value]
    if kind is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    payload = value.get("v")
    if tag == "tuple":
        return tuple(decode(v) for v in payload)
    if tag == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in payload}
    if tag == "set":
        return {_hashable(decode(v)) for v in payload}
    if tag == "frozenset":
        return frozenset(_hashable(decode(v)) for v in payload)
    if tag == "datetime":
        return dt.datetime.fromisoformat(payload)
    if tag == "date":
        return dt.date.fromisoformat(payload)
    if tag == "time":
        return dt.time.fromisoformat(payload)
    if tag == "timedelta":
        days, seconds, micros = payload
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if tag == "uuid":
        return uuid.UUID(payload)
    if tag == "decimal":
        return Decimal(payload)
    if tag == "bytes":
        return base64.b64decode(payload)
    if tag == "bytearray":
        return bytearray(base64.b64decode(payload))
    if tag == "enum":
        cls = resolve_class(value["cls"])
        if not issubclass(cls, enum.Enum):
            raise SerializationError(f"stored enum class {value['cls']} is not an Enum")
        return cls(decode(payload))
    if tag == "dataclass":
        cls = resolve_class(value["cls"])
        if not dataclasses.is_dataclass(cls):
            raise SerializationError(f"stored class {value['cls']} is not a dataclass")
        fields = {k: decode(v) for k, v in payload.items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in fields.items() if k in init})
        for name, field_value in fields.items():
            if name not in init:
                object.__setattr__(obj, name, field_value)
        return obj
    if tag == "model":
        cls = resolve_class(value["cls"])
        validate = getattr(cls, "model_validate", None)
        if validate is None:
            raise SerializationError(f"stored class {value['cls']} is not a pydantic model")
        return validate(decode(payload))
    raise SerializationError(f"unknown stored type tag {tag!r}; is this worker older?")


def _hashable(value: Any) -> Any:
    # JSON turns tuples used as dict keys / set items back into tuples via the
    # tag; lists can only appear if plain JSON was written from SQL.
    return tuple(value) if isinstance(value, list) else value
