"""Properties of werkfluss.serializer over generated values (hypothesis).

- every value built from the supported types comes back equal, with the same types;
- plain JSON is written exactly as ``json.dumps`` writes it;
- whatever JSON is stored (tagged objects of any shape included), loading either
  works or raises ``SerializationError``, never anything else;
- what ``dumps`` writes, PostgreSQL's ``jsonb`` accepts and gives back equal, floats
  as floats (with ``$WERKFLUSS_TEST_DSN``).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from werkfluss import serializer
from werkfluss.errors import SerializationError
from werkfluss.serializer import TAG, decode, dumps, loads

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Pair:
    left: Any
    right: Any


@dataclass(frozen=True)
class Point:
    x: int
    y: int


class Shade(enum.Enum):
    LIGHT = "light"
    DARK = ("dark", 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


# --- the supported values ---------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
keys = st.one_of(text, st.sampled_from([TAG, "v", "cls", "\\u0000", "[", "]{", '"']))
# (Integers of MAX_INT_DIGITS digits are slow to convert: tested once, in test_serializer.py.)
big_ints = st.sampled_from([10**300 - 1, -(10**300), 2**64, -(2**63)])
ints = st.one_of(st.integers(), big_ints)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e16, -1e16, 9999999999999998.0, 3.602879701896397e16, 1.7976931348623157e308]),
)
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
timezones = st.one_of(st.none(), st.just(dt.UTC), offsets)


def supported(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """Values built from every supported type."""
    hashable_scalars = st.one_of(
        st.none(), st.booleans(), ints, floats, text,
        st.datetimes(timezones=timezones), st.dates(), st.times(timezones=timezones), st.timedeltas(),
        st.uuids(), st.decimals(allow_nan=False), st.binary(max_size=16),
        st.sampled_from(list(Shade) + list(Level)),
        st.builds(Point, st.integers(), st.integers()),
    )
    scalars = st.one_of(hashable_scalars, st.binary(max_size=16).map(bytearray))
    hashables = st.recursive(
        hashable_scalars,
        lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
        max_leaves=4,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(keys, inner, max_size=4),
            st.dictionaries(hashables, inner, max_size=3),
            st.lists(inner, max_size=3).map(tuple),
            st.sets(hashables, max_size=3),
            st.frozensets(hashables, max_size=3),
            st.builds(Pair, inner, inner),
        ),
        max_leaves=12,
    )


values = supported(floats)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Pair):
        return same(a.left, b.left) and same(a.right, b.right)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, float) and a == 0:
        return str(a) == str(b)  # -0.0 stays -0.0
    return bool(a == b)


@SETTINGS
@given(values)
def test_supported_values_round_trip_with_their_types(value: Any) -> None:
    back = loads(dumps(value))
    assert same(back, value), (back, value)
    assert same(decode(json.loads(dumps(value))), value)


plain_json = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats, text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=20,
)


def has_large_float(value: Any) -> bool:
    if isinstance(value, float):
        return abs(value) >= 1e16
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list) and any(has_large_float(v) for v in value)


@SETTINGS
@given(plain_json)
def test_plain_json_is_stored_as_itself(value: Any) -> None:
    written = dumps(value)
    assert same(json.loads(written), value)
    assert same(loads(written), value)
    if not has_large_float(value):  # those are written 10000000000000000.0, not 1e+16
        assert written == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


bad_text = st.text(st.characters(categories=["Cs"]) | st.just("\x00"), min_size=1, max_size=2)


@SETTINGS
@given(plain_json, st.data())
def test_nul_or_a_surrogate_anywhere_is_refused(value: Any, data: st.DataObject) -> None:
    bad = data.draw(st.tuples(text, bad_text, text).map("".join))
    as_key = data.draw(st.booleans())
    wrapped = [{bad: value}] if as_key else [value, (1, {"deep": [bad]})]
    with pytest.raises(SerializationError, match="NUL|surrogate"):
        dumps(wrapped)


# --- any stored JSON: a value, or SerializationError --------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(["2026-11-26", "2026-11-26T13:45:07+05:30", "12:00", "aGk=", "1.5", "NaN", "x"]),
    st.just(str(uuid.UUID(int=7))),
)
tag_names = st.one_of(
    st.sampled_from(sorted(serializer._DECODERS)), st.text(max_size=6), st.integers(), st.none()
)
class_paths = st.one_of(
    st.sampled_from([
        f"{__name__}:Pair", f"{__name__}:Point", f"{__name__}:Shade", f"{__name__}:Level",
        f"{__name__}:same", "os:system", "builtins:int", "builtins:ValueError", "no.such:Thing",
        "subprocess:Popen", "json:JSONDecoder", f"{__name__}:Pair.left", ":", "a:", ":b",
    ]),
    st.text(max_size=8),
    st.integers(),
)


def tagged(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects carrying the tag, with random (sometimes right) shapes."""
    return st.fixed_dictionaries(
        {TAG: tag_names},
        optional={
            "v": st.one_of(
                inner,
                st.lists(st.lists(inner, max_size=3), max_size=3),  # dict-like pairs
                st.lists(st.integers(), min_size=3, max_size=3),  # timedelta-like
                st.dictionaries(st.sampled_from(["left", "right", "x", "y", "z"]), inner, max_size=3),
            ),
            "cls": class_paths,
        },
    )


any_json = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        tagged(inner),
    ),
    max_leaves=25,
)


def loads_or_refuses(text: str) -> None:
    try:
        loads(text)
    except SerializationError:
        pass


@SETTINGS
@given(any_json)
def test_any_stored_json_loads_or_raises_serialization_error(value: Any) -> None:
    loads_or_refuses(json.dumps(value))
    try:
        decode(value)
    except SerializationError:
        pass


@SETTINGS
@given(st.one_of(st.text(max_size=40), st.text(alphabet='[]{}",:\\0123456789aeflnrstu \x00', max_size=60)))
def test_any_text_loads_or_raises_serialization_error(text: str) -> None:
    loads_or_refuses(text)


def json_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    return 0


tricky_text = st.text(st.sampled_from('[]{}"\\abé\n'), max_size=8)
bracket_json = st.recursive(
    st.one_of(st.none(), st.integers(), tricky_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(tricky_text, inner, max_size=3)),
    max_leaves=30,
)


@SETTINGS
@given(bracket_json, st.booleans())
def test_depth_read_from_the_text_is_the_depth_of_the_value(value: Any, spaced: bool) -> None:
    text = json.dumps(value, ensure_ascii=False) if spaced else json.dumps(value, separators=(",", ":"))
    assert serializer._text_depth(text, limit=1000) == json_depth(value)


# --- PostgreSQL accepts what dumps writes ------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg.Connection[Any]]:
    dsn = os.environ.get("WERKFLUSS_TEST_DSN")
    if not dsn:
        pytest.skip("needs $WERKFLUSS_TEST_DSN")
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example([3.602879701896397e16, {"a\\u0000": 1e-300}, -0.0])
@given(values)
def test_postgres_jsonb_takes_what_dumps_writes_and_gives_it_back(
    pg: psycopg.Connection[Any], value: Any
) -> None:
    row = pg.execute("SELECT %s::text::jsonb::text", [dumps(value)]).fetchone()
    assert row is not None
    back = loads(row[0])
    # jsonb reorders object keys (and has no -0.0), so the check is equality, then
    # that no float came back as an int (as 1e16 would, were it written 1e+16).
    assert back == value
    assert floats_kept(value, back)


def floats_kept(value: Any, back: Any) -> bool:
    if isinstance(value, float):
        return type(back) is float
    if isinstance(value, dict):
        return all(floats_kept(v, back[k]) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(floats_kept(v, b) for v, b in zip(value, back, strict=True))
    if isinstance(value, Pair):
        return floats_kept(value.left, back.left) and floats_kept(value.right, back.right)
    return True
