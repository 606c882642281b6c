"""werkfluss.durations.parse_duration: seconds, timedeltas and strings like "1h30m"."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from werkfluss.durations import optional_duration, parse_duration
from werkfluss.errors import InvalidArgument


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0, 0.0),
        (2.5, 2.5),
        (dt.timedelta(minutes=2, milliseconds=500), 120.5),
        ("400ms", 0.4),
        ("30s", 30.0),
        ("1 day", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1 hour, 30 minutes", 5400.0),
        ("2 weeks", 1209600.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("5", 5.0),
        ("  7.25 ", 7.25),
        ("10 SECONDS", 10.0),
        ("3d", 259200.0),
    ],
)
def test_durations_are_parsed_to_seconds(value: Any, seconds: float) -> None:
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert type(result) is float


@pytest.mark.parametrize("value", [-1, -0.001, "-5", "-5s", dt.timedelta(seconds=-1)])
def test_negative_durations_are_refused(value: Any) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(value)


@pytest.mark.parametrize("value", ["soon", "5 parsecs", "", "   ", "5s later", "1h30", "s5", "5..5s"])
def test_garbage_strings_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(value)


def test_unknown_unit_is_named_in_the_message() -> None:
    with pytest.raises(InvalidArgument, match="unknown unit 'parsecs'"):
        parse_duration("5 parsecs")


def test_the_message_names_what_was_being_parsed() -> None:
    with pytest.raises(InvalidArgument, match="retry_delay 'soon' is not a duration"):
        parse_duration("soon", what="retry_delay")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", "inf", "-infinity"])
def test_non_finite_durations_are_refused(value: Any) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_durations(value: bool) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [5], b"5s", Decimal("1.5"), {"seconds": 1}])
def test_other_types_are_refused_with_their_type_named(value: Any) -> None:
    with pytest.raises(InvalidArgument, match=type(value).__name__):
        parse_duration(value)


@pytest.mark.parametrize("value", [0, 0.0, "0s", "0", dt.timedelta(0)])
def test_zero_is_refused_when_not_allowed(value: Any) -> None:
    with pytest.raises(InvalidArgument, match="must be positive"):
        parse_duration(value, allow_zero=False)


def test_small_positive_duration_is_accepted_when_zero_is_not_allowed() -> None:
    assert parse_duration("1ms", allow_zero=False) == pytest.approx(0.001)


def test_invalid_argument_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_optional_duration_keeps_none_and_parses_the_rest() -> None:
    assert optional_duration(None) is None
    assert optional_duration("2s") == 2.0
