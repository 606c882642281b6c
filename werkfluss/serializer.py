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
dataclass instances and pydantic models.
Floats of 1e16 and more are written with a fraction (``10000000000000000.0``),
since ``jsonb`` would give ``1e+16`` back as an integer.

Refused by :func:`dumps` with a :class:`SerializationError` naming the path of
the offending value (``at [0]['user']<key 'a\\x00'>``), because PostgreSQL
would refuse it or it could not come back:

- objects of any other type;
- NaN and infinite floats;
- strings, dict keys included, containing NUL or a lone surrogate;
- integers of more than :data:`MAX_INT_DIGITS` digits;
- values nesting deeper than :data:`MAX_DEPTH` levels of JSON;
- dataclasses, enums and models whose class cannot be found again by
  ``module:qualname`` (defined inside a function, say) unless registered.

:func:`loads` and :func:`decode` raise nothing but :class:`SerializationError`,
whatever JSON they are given (anyone allowed to start runs can write JSON).

Loading never imports a module because stored data names it: a stored
dataclass, enum or model is looked up in modules this process has already
imported, or among classes registered with :func:`register` (or modules
allowed with :func:`register_module`). Only those three kinds of classes are
ever constructed from stored data.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import importlib
import json
import math
import re
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from werkfluss.errors import SerializationError

TAG = "__werkfluss__"

MAX_DEPTH = 256
"""The deepest nesting stored: levels of JSON arrays and objects (a tagged
value counts the levels of its tagged form, e.g. a tuple two). Deeper values are
refused by :func:`dumps`, :func:`encode` and :func:`decode`; none of them recurses
deeper, whatever ``sys.getrecursionlimit()`` says."""

MAX_INT_DIGITS = 4000
"""The most decimal digits of an integer :func:`dumps` writes; every Python
reads it back (the default ``sys.get_int_max_str_digits()`` is 4300)."""

_INT_BOUND = 10**MAX_INT_DIGITS  # |n| < _INT_BOUND  <=>  n has at most MAX_INT_DIGITS digits

_T = TypeVar("_T", bound=type)

_GENERIC_ADVICE = (
    "werkfluss stores values as JSON; use str/int/float/bool/None, lists, dicts, tuples, dataclasses, "
    "datetime, date, UUID, Decimal or bytes — or convert the value first"
)
_TEXT_ADVICE = (
    "PostgreSQL stores text as valid UTF-8 without NUL characters; remove the character "
    "(or pass binary data as bytes)"
)
_DEPTH_ADVICE = (
    f"werkfluss stores at most {MAX_DEPTH} levels of nesting (serializer.MAX_DEPTH); flatten the value"
)
_INT_ADVICE = "store it as a str or a Decimal"
_CLASS_ADVICE = (
    "define the class at module level, or register it with werkfluss.serializer.register"
)
_LOAD_ADVICE = (
    "the stored JSON is not what werkfluss writes for this type; from SQL, pass plain JSON "
    "or the tagged forms described under Serialization in the docs"
)


class _PathError(Exception):
    """Carries the path to an offending value up the recursion (steps innermost first)."""

    def __init__(self, reason: str, advice: str = "") -> None:
        self.path: list[str] = []
        self.reason = reason
        self.advice = advice


def _where(path: list[str]) -> str:
    steps = path[::-1]
    if len(steps) > 16:
        steps = [*steps[:8], f"…({len(steps) - 12} more levels)…", *steps[-4:]]
    return "".join(steps) or "(top level)"


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a repr that raises is shown by type).

        >>> short_repr("x" * 100, 10)
        "'xxxxxxxx…"
    """
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not hide the real error
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(err: BaseException) -> str:
    try:
        message = str(err)
    except Exception:
        message = ""
    message = _clip(message, 200)
    return f"{type(err).__qualname__}: {message}" if message else type(err).__qualname__


# --- writing ------------------------------------------------------------------------------


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` as JSON text; raise :class:`SerializationError` if it can't be.

    ``what`` names the value in the error message ("argument", "step result", ...).
    """
    try:
        # Fast path: plain JSON is written as it is, nothing to tag or copy.
        text = _ENCODER.encode(value if _is_plain(value, 0) else _encode(value, 0, False))
    except _PathError as err:
        raise _dump_error(what, err) from None
    except (ValueError, RecursionError) as err:
        # Only if the process lowered sys.set_int_max_str_digits() or its recursion limit.
        raise SerializationError(
            f"cannot serialize {what}: {_describe(err)} at (top level). {_GENERIC_ADVICE}"
        ) from None
    # Strings (dict keys too) are checked once, on the text: json writes NUL as the
    # escape \u0000, and a lone surrogate cannot be encoded as UTF-8. Only then is the
    # value walked again, to name the path.
    if ("\\u0000" in text and _NUL_ESCAPE.search(text)) or not _is_utf8(text):
        try:
            _encode(value, 0, True)
        except _PathError as err:
            raise _dump_error(what, err) from None
        except RecursionError:  # pragma: no cover - the first walk went as deep
            pass
        # No string holds a NUL: the NUL escapes are the marks of large floats.
        text = _LARGE_FLOAT_MARK.sub(r"\1", text)
        if _NUL_ESCAPE.search(text) or not _is_utf8(text):  # pragma: no cover - cannot happen
            raise SerializationError(
                f"cannot serialize {what}: a string contains a NUL character or a lone surrogate "
                f"at (top level). {_TEXT_ADVICE}"
            )
    return text


def encode(value: Any) -> Any:
    """Turn ``value`` into plain JSON-compatible data (tagging non-JSON types).

    Checks everything :func:`dumps` checks; raises :class:`SerializationError`.
    """
    try:
        return _encode(value, 0, True)
    except _PathError as err:
        raise _dump_error("value", err) from None
    except RecursionError as err:
        raise SerializationError(f"cannot serialize value: {_describe(err)}. {_DEPTH_ADVICE}") from None


def _dump_error(what: str, err: _PathError) -> SerializationError:
    return SerializationError(
        f"cannot serialize {what}: {err.reason} at {_where(err.path)}. {err.advice or _GENERIC_ADVICE}"
    )


# Depth is bounded before json sees a value, so a value that contains itself never
# gets there (it nests infinitely deep): no need for json's check of cycles.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
)

# Floats of 1e16 and more (all of them integers) are written positionally, with a
# fraction: "10000000000000000.0", not "1e+16", which jsonb would give back as the int
# 10000000000000000 (and 3.602879701896397e+16 as 36028797018963970, another number).
# json cannot be told how to write a float, so _encode puts a string marked with a NUL
# in its place (no string of the value can hold one: that is refused) and dumps turns
# the marked string back into the number.
_LARGE_FLOAT = 1e16
_LARGE_FLOAT_MARK = re.compile(r'"\\u0000(-?[0-9]+\.0)"')

# A NUL escape not preceded by an escaped backslash (``\\u0000`` is the text "\u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_plain(value: Any, depth: int) -> bool:
    """True if ``value`` is plain JSON that :func:`dumps` may write as it is.

    Exact types only, finite floats, bounded ints and depth, ``str`` keys and no
    dict carrying the tag key. Strings are checked on the written text instead.
    Returns False on any doubt: :func:`_encode` then decides (and names the path).
    This is the hot path. Floats must be within +-1e16 (so finite: comparisons
    with nan are false), else :func:`_encode` writes them.
    """
    kind = type(value)
    if kind is dict:
        if depth >= MAX_DEPTH or TAG in value:
            return False
        depth += 1
        bound, large = _INT_BOUND, _LARGE_FLOAT
        for key, item in value.items():
            if type(key) is not str:
                return False
            t = type(item)
            if t is str or t is bool or item is None:
                continue
            if t is int:
                if -bound < item < bound:
                    continue
                return False
            if t is float:
                if -large < item < large:
                    continue
                return False
            if not _is_plain(item, depth):
                return False
        return True
    if kind is list:
        if depth >= MAX_DEPTH:
            return False
        depth += 1
        bound, large = _INT_BOUND, _LARGE_FLOAT
        for item in value:
            t = type(item)
            if t is str or t is bool or item is None:
                continue
            if t is int:
                if -bound < item < bound:
                    continue
                return False
            if t is float:
                if -large < item < large:
                    continue
                return False
            if not _is_plain(item, depth):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_INT_BOUND < value < _INT_BOUND
    if kind is float:
        return -_LARGE_FLOAT < value < _LARGE_FLOAT
    return False


def _check_text(text: str, what: str = "a string") -> None:
    if "\x00" in text:
        raise _PathError(f"{what} contains a NUL character (PostgreSQL rejects it)", _TEXT_ADVICE)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _PathError(f"{what} contains a lone surrogate (not valid UTF-8)", _TEXT_ADVICE) from None


def _encode(value: Any, depth: int, strict: bool) -> Any:
    """Plain JSON data for ``value``; ``depth`` JSON containers enclose it.

    With ``strict``, every string (keys, class paths and field names included) is
    checked too; :func:`dumps` checks them on the written text instead.
    """
    kind = type(value)
    if kind is str:
        if strict:
            _check_text(value)
        return value
    if kind is int:
        if -_INT_BOUND < value < _INT_BOUND:
            return value
        raise _PathError(f"an integer with more than {MAX_INT_DIGITS} digits", _INT_ADVICE)
    if kind is bool or value is None:
        return value
    if kind is float:
        if -_LARGE_FLOAT < value < _LARGE_FLOAT:
            return value
        if not math.isfinite(value):
            raise _PathError(f"the float {value!r} is not valid JSON")
        # An integer (every float this large is one): dumps writes it "<digits>.0".
        return value if strict else f"\x00{int(value)}.0"
    if kind is list:
        _enter(depth, 1)
        return _encode_items(value, depth + 1, strict)
    if kind is dict:
        _enter(depth, 1)
        if TAG not in value and all(type(k) is str for k in value):
            out = {}
            for k, v in value.items():
                if strict:
                    _key_check(k)
                try:
                    out[k] = _encode(v, depth + 1, strict)
                except _PathError as err:
                    err.path.append(f"[{short_repr(k)}]")
                    raise
            return out
        return _tagged_dict(value, depth, strict)
    return _encode_other(value, depth, strict)


def _encode_items(items: Any, depth: int, strict: bool, step: str = "") -> list[Any]:
    """The items of a list, tuple or set; a failing one is named ``[i]`` (or ``step``)."""
    out = []
    for i, v in enumerate(items):
        try:
            out.append(_encode(v, depth, strict))
        except _PathError as err:
            err.path.append(step or f"[{i}]")
            raise
    return out


def _item(value: Any, step: str, depth: int, strict: bool) -> Any:
    try:
        return _encode(value, depth, strict)
    except _PathError as err:
        err.path.append(step)
        raise


def _key_check(key: str) -> None:
    try:
        _check_text(key, "a dict key")
    except _PathError as err:
        err.path.append(f"<key {short_repr(key)}>")
        raise


def _enter(depth: int, levels: int) -> None:
    if depth + levels > MAX_DEPTH:
        raise _PathError(
            f"the value nests deeper than {MAX_DEPTH} levels (or contains itself)", _DEPTH_ADVICE
        )


def _tagged_dict(value: dict[Any, Any], depth: int, strict: bool) -> Any:
    _enter(depth, 3)  # {"__werkfluss__": "dict", "v": [[key, value], ...]}
    pairs = []
    for k, v in value.items():
        try:
            key = _encode(k, depth + 3, strict)
        except _PathError as err:
            err.path.append(f"<key {short_repr(k)}>")
            raise
        try:
            pairs.append([key, _encode(v, depth + 3, strict)])
        except _PathError as err:
            err.path.append(f"[{short_repr(k)}]")
            raise
    return {TAG: "dict", "v": pairs}


def _encode_other(value: Any, depth: int, strict: bool) -> Any:
    if isinstance(value, enum.Enum):
        _enter(depth, 1)
        cls = _class_path(type(value), strict)
        return {TAG: "enum", "cls": cls, "v": _item(value.value, ".value", depth + 1, strict)}
    if isinstance(value, tuple):
        _enter(depth, 2)
        return {TAG: "tuple", "v": _encode_items(value, depth + 2, strict)}
    if isinstance(value, (set, frozenset)):
        _enter(depth, 2)
        tag = "frozenset" if isinstance(value, frozenset) else "set"
        return {TAG: tag, "v": _encode_items(value, depth + 2, strict, "<set item>")}
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, Decimal,
                          bytes, bytearray, memoryview)):
        _enter(depth, 2 if isinstance(value, dt.timedelta) else 1)  # a timedelta's "v" is a list
        return _encode_scalar(value)
    if isinstance(value, str):  # str subclasses
        return _encode(str(value), depth, strict)
    if isinstance(value, int):  # int subclasses that are not enums
        return _encode(int(value), depth, strict)
    if isinstance(value, float):
        return _encode(float(value), depth, strict)
    if isinstance(value, list):
        return _encode(list(value), depth, strict)
    if isinstance(value, dict):
        return _encode(dict(value), depth, strict)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _enter(depth, 2)
        cls = _class_path(type(value), strict)
        fields = {}
        for f in dataclasses.fields(value):
            if strict:
                _check_text(f.name, "a field name")
            try:
                field_value = getattr(value, f.name)
            except AttributeError as err:
                raise _PathError(f"the field {f.name!r} cannot be read ({_describe(err)})") from None
            fields[f.name] = _item(field_value, f".{f.name}", depth + 2, strict)
        return {TAG: "dataclass", "cls": cls, "v": fields}
    if hasattr(value, "model_dump") and hasattr(type(value), "model_validate"):
        _enter(depth, 1)
        cls = _class_path(type(value), strict)
        try:
            data = value.model_dump(mode="json")
        except Exception as err:
            name = type(value).__qualname__
            raise _PathError(f"model_dump() of {name} failed ({_describe(err)})") from None
        return {TAG: "model", "cls": cls, "v": _item(data, ".model_dump()", depth + 1, strict)}
    raise _PathError(f"a value of type {type(value).__qualname__} is not serializable")


def _encode_scalar(value: Any) -> Any:
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
    tag = "bytearray" if isinstance(value, bytearray) else "bytes"
    return {TAG: tag, "v": base64.b64encode(bytes(value)).decode("ascii")}


# Classes already checked to come back by their path (successes only: a finite set).
_FOUND: dict[type, str] = {}


def _class_path(cls: type, strict: bool = False) -> str:
    path = _FOUND.get(cls)
    if path is not None:
        return path
    path = f"{cls.__module__}:{cls.__qualname__}"
    if strict:
        _check_text(path, "the class path")
    try:
        found = _lookup(path, import_allowed=False)
    except _PathError:
        found = None
    if found is not cls:
        raise _PathError(
            f"the class {path} cannot be found again by its module and name "
            "(defined inside a function, or replaced since)",
            _CLASS_ADVICE,
        )
    _FOUND[cls] = path
    return path


# --- finding classes ----------------------------------------------------------------------

_REGISTERED: dict[str, type] = {}
_ALLOWED_MODULES: set[str] = set()


def register(cls: _T) -> _T:
    """Allow values of ``cls`` to be loaded by its ``module:qualname``, wherever it is defined.

    Usable as a class decorator. Needed only for a class that cannot be found in
    its module by name (defined inside a function, say): a class of a module the
    process has imported is found without it. Returns ``cls``::

        @serializer.register
        @dataclasses.dataclass
        class Order: ...
    """
    if not isinstance(cls, type):
        raise TypeError(f"register() takes a class, got {type(cls).__qualname__}")
    path = f"{cls.__module__}:{cls.__qualname__}"
    _REGISTERED[path] = cls
    _FOUND.pop(cls, None)
    return cls


def register_module(name: str) -> None:
    """Allow loading to import module ``name`` (and its submodules) when stored data names it.

    By default loading never imports a module: a class is found only in modules
    already imported. Use this for application modules imported lazily.
    """
    if not name or not isinstance(name, str):
        raise TypeError("register_module() takes a module name")
    _ALLOWED_MODULES.add(name)


def _import_allowed(module_name: str) -> bool:
    return any(module_name == m or module_name.startswith(m + ".") for m in _ALLOWED_MODULES)


_MISSING = object()


def _lookup(path: str, *, import_allowed: bool = True) -> type:
    """The class stored as ``module:qualname``, raising :class:`_PathError`.

    Looks at registered classes, then at modules already imported (or allowed by
    :func:`register_module`). Follows only the ``__dict__`` of the module and of the
    classes on the way (no ``__getattr__`` hook runs), and the class found must
    carry that very module and qualname.
    """
    cls = _REGISTERED.get(path)
    if cls is not None:
        return cls
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise _PathError(f"{short_repr(path)} is not a stored class (module:qualname)", _LOAD_ADVICE)
    shown = _clip(path)  # stored data goes into messages: keep them short
    module = sys.modules.get(module_name)
    if module is None:
        if not (import_allowed and _import_allowed(module_name)):
            raise _PathError(
                f"cannot load a stored {shown}: the class is not importable here — its module "
                "is not imported in this process, and werkfluss never imports a module "
                "because stored data names it",
                "import the module in your application (the module that defines the workflows, "
                "say), or allow it with werkfluss.serializer.register_module",
            )
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            raise _PathError(
                f"cannot load a stored {shown}: the class is not importable here ({_describe(err)})",
                "deploy the code that defines it to every worker",
            ) from None
    obj: Any = module
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None) if isinstance(obj, type) or obj is module else None
        found = namespace.get(part, _MISSING) if namespace is not None else _MISSING
        if found is _MISSING:
            raise _PathError(
                f"cannot load a stored {shown}: the class is not importable here "
                f"(its module has no {_clip(qualname)})",
                "deploy the code that defines it to every worker",
            )
        obj = found
    if not isinstance(obj, type):
        raise _PathError(f"cannot load a stored {shown}: it is not a class", _LOAD_ADVICE)
    if obj.__module__ != module_name or obj.__qualname__ != qualname:
        raise _PathError(
            f"cannot load a stored {shown}: it names {obj.__module__}:{obj.__qualname__} "
            "under another name",
            _LOAD_ADVICE,
        )
    return obj


def resolve_class(path: str) -> type:
    """Find a class by ``module:qualname``: registered, or in a module already imported.

    Never imports a module, unless it was allowed by :func:`register_module`.
    Raises :class:`SerializationError`.
    """
    try:
        return _lookup(path)
    except _PathError as err:
        raise SerializationError(f"{err.reason}; {err.advice}") from None


# --- reading ------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)

# Above this recursion limit, loads() measures the depth of long text before parsing it.
_PARSER_SAFE_LIMIT = 10_000
# For _text_depth: keep only brackets (braces become square ones) and quotes.
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')  # UTF-8 multi-byte: all >= 0x80
_QUOTED = re.compile(rb'"[^"]*"?')  # the closing quote is optional: linear on any text


def loads(text: str | bytes | None, *, what: str = "value") -> Any:
    """Decode JSON text written by :func:`dumps` (or plain JSON written from SQL).

    Raises :class:`SerializationError`, and nothing else, for any text that is not
    JSON or holds a tagged value that cannot be loaded here. Tagged values nesting
    deeper than :data:`MAX_DEPTH` are refused; plain JSON (no tag anywhere) is what
    ``json`` makes of it, which stops at Python's recursion limit (about 900 levels
    by default; above a limit of 10,000 the text is measured first and refused
    beyond :data:`MAX_DEPTH`). Either way, :func:`dumps` refuses to store it again.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        if not isinstance(text, (bytes, bytearray)):
            raise SerializationError(
                f"cannot load stored {what}: expected JSON text, got {type(text).__qualname__}"
            )
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise SerializationError(f"cannot load stored {what}: not valid UTF-8 ({err})") from None
    if len(text) > 2 * MAX_DEPTH and sys.getrecursionlimit() > _PARSER_SAFE_LIMIT:
        # json's parser recurses in C once per level, as deep as the recursion limit
        # lets it: with a limit this high, deep text could overflow the C stack.
        depth = _marks_depth(_marks(text))
        if depth is None:
            raise SerializationError(f"cannot load stored {what}: not valid JSON (unbalanced brackets)")
        if depth > MAX_DEPTH:
            raise SerializationError(
                f"cannot load stored {what}: the value nests deeper than {MAX_DEPTH} levels; "
                f"werkfluss stores at most {MAX_DEPTH} (serializer.MAX_DEPTH)"
            )
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise SerializationError(
            f"cannot load stored {what}: the JSON nests too deeply to be parsed; "
            f"werkfluss stores at most {MAX_DEPTH} levels (serializer.MAX_DEPTH)"
        ) from None
    except ValueError as err:  # JSONDecodeError, NaN, too many digits
        raise SerializationError(f"cannot load stored {what}: not valid JSON ({_describe(err)})") from None
    if TAG not in text:  # fast path: nothing tagged, plain JSON is the answer
        return value
    return decode(value, what=what)


def _marks(text: str) -> bytes:
    """The brackets and string quotes of JSON ``text``, as bytes (braces become brackets).

    On the UTF-8 bytes, where every byte of a non-ASCII character is >= 0x80:
    escaped backslashes and escaped quotes go first (other escapes are harmless),
    then everything but brackets and quotes, all at C speed.
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not our concern here
        data = text.encode("utf-8", "surrogatepass")
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    return data.translate(_BRACKETS_ONLY, _NOT_STRUCTURE)


def _marks_depth(marks: bytes, limit: int = MAX_DEPTH) -> int | None:
    """How deep the brackets in ``marks`` nest (at most ``limit + 1``), strings
    left out; None if they do not balance (so the text is not JSON)."""
    brackets = marks.translate(None, b'"')
    quotes = len(marks) - len(brackets)
    # A string without brackets leaves two adjacent quotes; counted from the left,
    # all quotes pair up only if no string holds a bracket. Else drop the strings
    # that do (a regular expression, over what is left).
    if quotes and marks.count(b'""') * 2 != quotes:
        brackets = _QUOTED.sub(b"", marks.replace(b'""', b""))
    depth = 0
    while brackets and depth <= limit:  # each pass removes the innermost level
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return None
        brackets = shorter
        depth += 1
    return depth


def _text_depth(text: str, limit: int = MAX_DEPTH) -> int | None:
    """How deep JSON ``text`` nests (at most ``limit + 1``), without parsing it."""
    return _marks_depth(_marks(text), limit)


def decode(value: Any, *, what: str = "value") -> Any:
    """Inverse of :func:`encode`; raises :class:`SerializationError` and nothing else."""
    try:
        return _decode(value, 0)
    except _PathError as err:
        raise SerializationError(
            f"cannot load stored {what}: {err.reason} at {_where(err.path)}; {err.advice or _LOAD_ADVICE}"
        ) from None
    except RecursionError as err:
        raise SerializationError(f"cannot load stored {what}: {_describe(err)}; {_DEPTH_ADVICE}") from None


def _decode(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is list:
        _enter(depth, 1)
        depth += 1
        out = []
        for i, v in enumerate(value):
            t = type(v)
            if t is list or t is dict:
                try:
                    v = _decode(v, depth)
                except _PathError as err:
                    err.path.append(f"[{i}]")
                    raise
            out.append(v)
        return out
    if kind is not dict:
        return value
    _enter(depth, 1)
    if TAG in value:
        return _decode_tagged(value, depth)
    depth += 1
    result = {}
    for k, v in value.items():
        t = type(v)
        if t is list or t is dict:
            try:
                v = _decode(v, depth)
            except _PathError as err:
                err.path.append(f"[{short_repr(k)}]")
                raise
        result[k] = v
    return result


def _sub(value: Any, step: str, depth: int) -> Any:
    try:
        return _decode(value, depth)
    except _PathError as err:
        err.path.append(step)
        raise


def _decode_tagged(value: dict[str, Any], depth: int) -> Any:
    tag = value[TAG]
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        raise _PathError(
            f"unknown stored type tag {short_repr(tag)}",
            "is this worker older than the one that stored it? A user dict with the key "
            f"{TAG!r} is stored tagged as a 'dict'",
        )
    if "v" not in value:
        raise _PathError(f"the stored {tag} has no 'v'")
    try:
        return decoder(value, depth + 1)  # the tagged object is one level; 'v' is inside it
    except _PathError:
        raise
    except Exception as err:  # wrong shape or text, or a constructor that refused it
        stored = short_repr(value["v"])
        raise _PathError(f"the stored {tag} {stored} cannot be loaded ({_describe(err)})") from None


def _payload(value: dict[str, Any], kind: type, tag: str) -> Any:
    payload = value["v"]
    if type(payload) is not kind:
        raise _PathError(
            f"the stored {tag} {short_repr(payload)} is not a JSON "
            f"{'string' if kind is str else kind.__name__}"
        )
    return payload


def _items(value: dict[str, Any], tag: str, depth: int, step: str = "") -> list[Any]:
    """The decoded items of a tagged list; a failing one is named ``[i]`` (or ``step``)."""
    payload = _payload(value, list, tag)
    _enter(depth, 1)
    out = []
    for i, v in enumerate(payload):
        try:
            out.append(_decode(v, depth + 1))
        except _PathError as err:
            err.path.append(step or f"[{i}]")
            raise
    return out


def _hashable(value: Any, tag: str) -> Any:
    # Tuples stored as keys or set items come back as tuples through their tag;
    # lists only appear if plain JSON was written from SQL.
    if type(value) is list:
        value = tuple(value)
    try:
        hash(value)
    except TypeError:
        raise _PathError(f"a {tag} {short_repr(value)} is not hashable") from None
    return value


def _decode_tuple(value: dict[str, Any], depth: int) -> Any:
    return tuple(_items(value, "tuple", depth))


def _decode_set(value: dict[str, Any], depth: int) -> Any:
    tag = value[TAG]
    items = [_hashable(v, "set item") for v in _items(value, tag, depth, "<set item>")]
    return frozenset(items) if tag == "frozenset" else set(items)


def _decode_dict(value: dict[str, Any], depth: int) -> Any:
    pairs = _payload(value, list, "dict")
    _enter(depth, 2)
    out = {}
    for i, pair in enumerate(pairs):
        if type(pair) is not list or len(pair) != 2:
            raise _PathError(f"the stored dict item #{i} {short_repr(pair)} is not a [key, value] pair")
        key = _hashable(_sub(pair[0], f"<key #{i}>", depth + 2), "dict key")
        try:
            out[key] = _decode(pair[1], depth + 2)
        except _PathError as err:
            err.path.append(f"[{short_repr(key)}]")
            raise
    return out


def _decode_datetime(value: dict[str, Any], depth: int) -> Any:
    return dt.datetime.fromisoformat(_payload(value, str, "datetime"))


def _decode_date(value: dict[str, Any], depth: int) -> Any:
    return dt.date.fromisoformat(_payload(value, str, "date"))


def _decode_time(value: dict[str, Any], depth: int) -> Any:
    return dt.time.fromisoformat(_payload(value, str, "time"))


def _decode_timedelta(value: dict[str, Any], depth: int) -> Any:
    _enter(depth, 1)  # its list is a level, as when it was written
    payload = value["v"]
    if type(payload) is not list or len(payload) != 3 or any(type(p) is not int for p in payload):
        raise _PathError(f"the stored timedelta {short_repr(payload)} is not [days, seconds, microseconds]")
    days, seconds, micros = payload
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _decode_uuid(value: dict[str, Any], depth: int) -> Any:
    return uuid.UUID(_payload(value, str, "uuid"))


def _decode_decimal(value: dict[str, Any], depth: int) -> Any:
    return Decimal(_payload(value, str, "decimal"))


def _decode_bytes(value: dict[str, Any], depth: int) -> Any:
    tag = value[TAG]
    try:
        data = base64.b64decode(_payload(value, str, tag), validate=True)
    except (binascii.Error, ValueError) as err:
        raise _PathError(f"the stored {tag} is not base64 ({_describe(err)})") from None
    return bytearray(data) if tag == "bytearray" else data


def _stored_class(value: dict[str, Any], tag: str) -> type:
    path = value.get("cls")
    if type(path) is not str:
        raise _PathError(f"the stored {tag} has no class path 'cls'")
    return _lookup(path)


def _decode_enum(value: dict[str, Any], depth: int) -> Any:
    cls = _stored_class(value, "enum")
    if not issubclass(cls, enum.Enum):
        raise _PathError(f"stored enum class {value['cls']} is not an Enum", _LOAD_ADVICE)
    return cls(_sub(value["v"], ".value", depth))


def _decode_dataclass(value: dict[str, Any], depth: int) -> Any:
    cls = _stored_class(value, "dataclass")
    if not dataclasses.is_dataclass(cls):
        raise _PathError(f"stored class {value['cls']} is not a dataclass", _LOAD_ADVICE)
    payload = _payload(value, dict, "dataclass")
    _enter(depth, 1)
    fields = {k: _sub(v, f".{k}", depth + 1) for k, v in payload.items()}
    init: dict[str, Any] = {}
    later: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in fields:
            (init if f.init else later)[f.name] = fields[f.name]
    obj = cls(**init)
    for name, field_value in later.items():  # only the class's own fields: nothing else is set
        object.__setattr__(obj, name, field_value)
    return obj


def _decode_model(value: dict[str, Any], depth: int) -> Any:
    cls = _stored_class(value, "model")
    validate = getattr(cls, "model_validate", None)
    if not callable(validate):
        raise _PathError(f"stored class {value['cls']} is not a pydantic model", _LOAD_ADVICE)
    return validate(_sub(value["v"], ".model_dump()", depth))


_DECODERS: dict[str, Callable[[dict[str, Any], int], Any]] = {
    "tuple": _decode_tuple,
    "set": _decode_set,
    "frozenset": _decode_set,
    "dict": _decode_dict,
    "datetime": _decode_datetime,
    "date": _decode_date,
    "time": _decode_time,
    "timedelta": _decode_timedelta,
    "uuid": _decode_uuid,
    "decimal": _decode_decimal,
    "bytes": _decode_bytes,
    "bytearray": _decode_bytes,
    "enum": _decode_enum,
    "dataclass": _decode_dataclass,
    "model": _decode_model,
}
