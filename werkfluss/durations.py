"""Durations as users write them: seconds, ``timedelta`` or strings.

    >>> parse_duration("400ms")
    0.4
    >>> parse_duration("1 day")
    86400.0
    >>> parse_duration("1h30m")
    5400.0
    >>> parse_duration(2.5)
    2.5
"""

from __future__ import annotations

import datetime as dt
import re

from werkfluss.errors import InvalidArgument

Duration = float | int | dt.timedelta | str

_UNITS = {
    "ms": 0.001, "msec": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip

_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]+)\s*,?")


def parse_duration(value: Duration, *, what: str = "duration", allow_zero: bool = True) -> float:
    """Return ``value`` in seconds; raise :class:`InvalidArgument` if it is not a duration.

    Accepts ``int``/``float`` seconds, ``timedelta``, and strings made of one or
    more ``<number><unit>`` parts (``"30s"``, ``"1 day"``, ``"1h 30m"``). A bare
    number in a string means seconds. Negative durations are refused.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of seconds, a timedelta or a string")
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_string(value, what)
    else:
        raise InvalidArgument(
            f"{what} must be a number of seconds, a timedelta or a string like "
            f"'30s' or '1 day', not {type(value).__name__}"
        )
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        expected = "zero or more" if allow_zero else "positive"
        raise InvalidArgument(f"{what} must be {expected}, got {value!r}")
    return seconds


def _parse_string(text: str, what: str) -> float:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _PART.finditer(stripped):
        if match.start() != pos:
            break
        number, unit = match.groups()
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise InvalidArgument(
                f"{what} {text!r}: unknown unit {unit!r}; use ms, s, m, h, d or w "
                "(or words like 'seconds', 'day')"
            )
        total += float(number) * factor
        pos = match.end()
    if pos != len(stripped) or not stripped:
        raise InvalidArgument(
            f"{what} {text!r} is not a duration; write e.g. '400ms', '30s', '1h30m' or '1 day'"
        )
    return total


def optional_duration(value: Duration | None, *, what: str = "duration") -> float | None:
    """Like :func:`parse_duration`, but ``None`` stays ``None``."""
    return None if value is None else parse_duration(value, what=what)
