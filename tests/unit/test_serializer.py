"""werkfluss.serializer: what is stored for a value, and what comes back."""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from werkfluss import serializer
from werkfluss.errors import SerializationError, WerkflussError
from werkfluss.serializer import MAX_DEPTH, MAX_INT_DIGITS, TAG, decode, dumps, encode, loads


@dataclass
class Address:
    street: str
    city: str


@dataclass
class Customer:
    name: str
    address: Address
    tags: tuple[str, ...] = ()
    joined: dt.date | None = None


@dataclass(frozen=True)
class Invoice:
    number: int
    total: Decimal
    lines: list[Address] = field(default_factory=list)
    checksum: str = field(init=False, default="unset")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Label(enum.Enum):
    BAD = "nul\x00inside"


class Model:
    """Quacks like a pydantic model: ``model_dump(mode="json")`` and ``model_validate``."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def model_dump(self, mode: str = "python") -> Any:
        return self.data

    @classmethod
    def model_validate(cls, data: Any) -> Model:
        return cls(data)

    def __eq__(self, other: object) -> bool:
        return type(other) is Model and other.data == self.data

    __hash__ = None  # type: ignore[assignment]


AliasOfAddress = Address  # the same class under another name


def roundtrip(value: Any) -> Any:
    return loads(dumps(value))


# --- plain JSON is stored as itself -----------------------------------------------------


def test_workflow_arguments_from_python_and_sql_are_the_same_json() -> None:
    # engine.start(wf, "user-123") stores list(args); SQL passes '["user-123"]'::jsonb.
    assert dumps(list(("user-123",))) == '["user-123"]'
    assert loads('["user-123"]') == ["user-123"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("héllo", '"héllo"'),
        (42, "42"),
        (2.5, "2.5"),
        (True, "true"),
        (None, "null"),
        ([1, "a", None], '[1,"a",null]'),
        ({"user": {"id": 7, "roles": ["admin"]}}, '{"user":{"id":7,"roles":["admin"]}}'),
    ],
)
def test_plain_json_values_are_stored_as_themselves(value: Any, text: str) -> None:
    assert dumps(value) == text
    assert loads(text) == value


def test_plain_json_from_sql_loads_without_tags() -> None:
    assert loads('{"approved": true, "by": ["ana", "bo"]}') == {"approved": True, "by": ["ana", "bo"]}


def test_none_text_loads_as_none() -> None:
    assert loads(None) is None


# --- tagged types round-trip ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 26, 13, 45, 7, 123456),
        dt.date(2026, 11, 26),
        dt.time(9, 30, 15, 250),
        dt.timedelta(days=3, seconds=7, microseconds=11),
        dt.timedelta(seconds=-1),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("10.50"),
        Decimal("-0.000001"),
        b"\x00\xffbinary",
        bytearray(b"mutable"),
        (1, "two", 3.0),
        ((1, 2), (3, (4, 5))),
        {1, 2, 3},
        frozenset({"a", "b"}),
        {1: "one", 2: "two"},
        {(1, 2): "pair", None: "none", 3.5: "float"},
        {"a": 1, 5: "mixed keys"},
    ],
    ids=repr,
)
def test_common_types_round_trip_with_their_type(value: Any) -> None:
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)


def test_naive_datetime_stays_naive() -> None:
    back = roundtrip(dt.datetime(2026, 1, 2, 3, 4, 5))
    assert back == dt.datetime(2026, 1, 2, 3, 4, 5)
    assert back.tzinfo is None


def test_aware_datetime_keeps_its_offset() -> None:
    value = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    back = roundtrip(value)
    assert back == value
    assert back.utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_aware_time_keeps_its_offset() -> None:
    value = dt.time(12, 0, tzinfo=dt.UTC)
    back = roundtrip(value)
    assert back == value
    assert back.utcoffset() == dt.timedelta(0)


def test_decimal_keeps_its_exact_digits() -> None:
    back = roundtrip(Decimal("1.10"))
    assert str(back) == "1.10"


def test_bytes_are_stored_as_base64_text() -> None:
    assert json.loads(dumps(b"hi")) == {TAG: "bytes", "v": "aGk="}


def test_tagged_values_nested_in_plain_containers_round_trip() -> None:
    value = {
        "when": dt.date(2026, 11, 26),
        "pair": (1, 2),
        "items": [uuid.UUID(int=1), {"raw": b"x", "ids": {3, 4}}],
    }
    back = roundtrip(value)
    assert back == value
    assert type(back["pair"]) is tuple
    assert type(back["items"][1]["ids"]) is set


def test_set_of_tuples_round_trips() -> None:
    assert roundtrip({(1, 2), (3, 4)}) == {(1, 2), (3, 4)}


def test_nested_dataclasses_round_trip() -> None:
    value = Customer(
        name="Ana",
        address=Address("Main St 1", "Basel"),
        tags=("vip", "beta"),
        joined=dt.date(2025, 5, 1),
    )
    back = roundtrip(value)
    assert back == value
    assert type(back) is Customer
    assert type(back.address) is Address
    assert type(back.tags) is tuple


def test_frozen_dataclass_with_non_init_field_round_trips() -> None:
    value = Invoice(7, Decimal("99.90"), [Address("A", "B")])
    object.__setattr__(value, "checksum", "abc123")
    back = roundtrip(value)
    assert back == value
    assert back.checksum == "abc123"
    assert back.total == Decimal("99.90")


def test_enum_members_round_trip() -> None:
    assert roundtrip(Color.GREEN) is Color.GREEN
    assert roundtrip(Priority.HIGH) is Priority.HIGH
    assert roundtrip({"color": Color.RED, "prio": [Priority.LOW]}) == {
        "color": Color.RED,
        "prio": [Priority.LOW],
    }


def test_user_dict_with_the_tag_key_round_trips() -> None:
    value = {TAG: "tuple", "v": [1, 2]}
    back = roundtrip(value)
    assert back == {TAG: "tuple", "v": [1, 2]}
    assert type(back) is dict


def test_string_containing_the_tag_text_round_trips() -> None:
    value = {"note": f"{TAG} is just text here", "list": [TAG]}
    assert roundtrip(value) == value


# --- what cannot be stored --------------------------------------------------------------


class Opaque:
    pass


def test_serialization_error_is_a_werkfluss_error() -> None:
    assert issubclass(SerializationError, WerkflussError)


def test_unsupported_object_names_its_path() -> None:
    with pytest.raises(SerializationError) as caught:
        dumps([{"user": Opaque()}], what="argument")
    message = str(caught.value)
    assert "at [0]['user']" in message
    assert "Opaque" in message
    assert "cannot serialize argument" in message


def test_unsupported_object_at_top_level_says_so() -> None:
    with pytest.raises(SerializationError, match=r"at \(top level\)"):
        dumps(Opaque())


def test_path_through_dataclass_fields_and_tuples() -> None:
    with pytest.raises(SerializationError, match=r"at \[1\]\.street"):
        dumps((1, Address(Opaque(), "x")))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(bad: float) -> None:
    with pytest.raises(SerializationError, match=r"at \['scores'\]\[1\]"):
        dumps({"scores": [1.0, bad]})


def test_string_with_nul_is_refused() -> None:
    with pytest.raises(SerializationError, match=r"NUL.*at \['name'\]"):
        dumps({"name": "a\x00b"})


def test_nul_in_a_dict_key_is_refused() -> None:
    with pytest.raises(SerializationError, match="NUL"):
        dumps({1: "x", "k\x00": "y"})


def test_string_with_lone_surrogate_is_refused() -> None:
    with pytest.raises(SerializationError, match=r"\['name'\]"):
        dumps({"name": "a\ud800b"})


def test_function_objects_are_refused() -> None:
    with pytest.raises(SerializationError, match="function"):
        dumps({"callback": print})


# --- loading stored classes ----------------------------------------------------------


def test_loading_a_dataclass_whose_module_is_missing_fails_clearly() -> None:
    text = json.dumps({TAG: "dataclass", "cls": "no_such_module_xyz:Thing", "v": {}})
    with pytest.raises(SerializationError, match="no_such_module_xyz:Thing"):
        loads(text)


def test_loading_a_dataclass_whose_class_was_removed_fails_clearly() -> None:
    text = json.dumps({TAG: "dataclass", "cls": f"{__name__}:RemovedClass", "v": {}})
    with pytest.raises(SerializationError, match="not importable"):
        loads(text)


def test_loading_refuses_to_construct_a_class_that_is_not_a_dataclass() -> None:
    text = json.dumps({TAG: "dataclass", "cls": f"{__name__}:Opaque", "v": {}})
    with pytest.raises(SerializationError, match="not a dataclass"):
        loads(text)


def test_loading_refuses_an_enum_tag_for_a_non_enum_class() -> None:
    text = json.dumps({TAG: "enum", "cls": f"{__name__}:Address", "v": "x"})
    with pytest.raises(SerializationError, match="not an Enum"):
        loads(text)


def test_loading_refuses_a_non_class_target() -> None:
    text = json.dumps({TAG: "dataclass", "cls": "os:system", "v": {}})
    with pytest.raises(SerializationError, match="not a class"):
        loads(text)


def test_loading_an_unknown_tag_fails_clearly() -> None:
    with pytest.raises(SerializationError, match="'pickle'"):
        loads(json.dumps({TAG: "pickle", "v": "gASV"}))


def test_resolve_class_finds_a_class_by_module_and_qualname() -> None:
    assert serializer.resolve_class(f"{__name__}:Customer") is Customer


def test_resolve_class_refuses_a_path_that_is_not_module_colon_name() -> None:
    with pytest.raises(SerializationError, match="module:qualname"):
        serializer.resolve_class("no-colon-here")


# --- pydantic-style models ---------------------------------------------------------------


def test_pydantic_style_model_round_trips() -> None:
    back = roundtrip({"m": Model({"name": "Ana", "n": [1, 2]})})
    assert back == {"m": Model({"name": "Ana", "n": [1, 2]})}


# --- NUL and lone surrogates: in strings, dict keys and every other place ----------------

NUL_KEY_PATH = r"at \[0\]\['user'\]<key 'a\\x00'>"


def test_nul_in_a_plain_dict_key_is_refused_with_its_path() -> None:
    with pytest.raises(SerializationError, match=r"dict key contains a NUL.*" + NUL_KEY_PATH) as caught:
        dumps([{"user": {"ok": 1, "a\x00": 2}}], what="argument")
    assert "cannot serialize argument" in str(caught.value)
    assert "remove the character" in str(caught.value)


def test_lone_surrogate_in_a_plain_dict_key_is_refused_with_its_path() -> None:
    with pytest.raises(SerializationError, match=r"lone surrogate.*at \[0\]\['user'\]<key 'a\\ud800'>"):
        dumps([{"user": {"a\ud800": 1}}])


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({1: "x", "k\x00": "y"}, r"<key 'k\\x00'>"),
        ({("a\x00", 1): "x"}, r"<key \('a\\x00', 1\)>\[0\]"),
        ({"t": ("x", "\ud83d")}, r"\['t'\]\[1\]"),
        ({"s": {"a", "b\x00"}}, r"\['s'\]<set item>"),
        ([Label.BAD], r"\[0\]\.value"),
        ([Address("Main St\x00", "Basel")], r"\[0\]\.street"),
        ({"m": Model({"ok": {"k\x00": 1}})}, r"\['m'\]\.model_dump\(\)\['ok'\]<key 'k\\x00'>"),
        ({"m": Model({"ok": ["\udfff"]})}, r"\['m'\]\.model_dump\(\)\['ok'\]\[0\]"),
        ({TAG: "x", "k\x00": 1}, r"<key 'k\\x00'>"),
    ],
    ids=["tagged-dict-key", "tuple-key", "tuple-item", "set-item", "enum-value", "dataclass-field",
         "model-key", "model-value", "tag-key-dict"],
)
def test_nul_and_surrogates_are_refused_wherever_they_are(value: Any, where: str) -> None:
    with pytest.raises(SerializationError, match=r"(NUL|surrogate).* at " + where):
        dumps(value)
    with pytest.raises(SerializationError, match=r"(NUL|surrogate).* at " + where):
        encode(value)


@pytest.mark.parametrize(
    "value",
    [
        {"text": "a\\u0000b"},  # a backslash, then "u0000": text, not a NUL
        {"\\u0000": "key is text too"},
        ["\\\\u0000", "\\\\\\u0000x"],
        {"emoji": "\U0001f600", "accents": "héllo"},
    ],
)
def test_text_that_only_looks_like_a_nul_escape_round_trips(value: Any) -> None:
    assert roundtrip(value) == value


def test_nul_right_after_a_backslash_is_refused() -> None:
    with pytest.raises(SerializationError, match=r"NUL.*\['k'\]"):
        dumps({"k": "\\\x00"})


def test_encode_checks_keys_too_and_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match=r"NUL.*<key 'a\\x00'>"):
        encode({"a\x00": 1})


# --- nesting depth --------------------------------------------------------------------


def nested(depth: int, leaf: Any = None) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_a_very_deep_value_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(SerializationError, match=rf"nests deeper than {MAX_DEPTH} levels.*more levels"):
        dumps(nested(100_000))


def test_depth_is_bounded_even_when_the_recursion_limit_is_high() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    try:
        with pytest.raises(SerializationError, match="nests deeper"):
            dumps(nested(100_000))
        with pytest.raises(SerializationError, match="nests deeper"):
            loads("[" * 100_000 + "]" * 100_000)
        with pytest.raises(SerializationError, match="nests deeper"):
            decode(nested(100_000))
    finally:
        sys.setrecursionlimit(limit)


def test_depth_is_checked_when_the_recursion_limit_is_low() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(150, len(__import__("inspect").stack()) + 60))
    try:
        for call in (lambda: dumps(nested(MAX_DEPTH)), lambda: decode(nested(MAX_DEPTH))):
            try:
                call()
            except SerializationError:
                pass  # the recursion limit is below MAX_DEPTH: refused, not a RecursionError
    finally:
        sys.setrecursionlimit(limit)


def test_max_depth_is_exact_for_lists_and_dicts() -> None:
    assert roundtrip(nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    deepest_dict: Any = 1
    for _ in range(MAX_DEPTH):
        deepest_dict = {"k": deepest_dict}
    assert roundtrip(deepest_dict) == deepest_dict
    with pytest.raises(SerializationError, match="nests deeper"):
        dumps(nested(MAX_DEPTH + 1))
    with pytest.raises(SerializationError, match="nests deeper"):
        dumps({"k": deepest_dict})


def test_depth_counts_the_levels_of_tagged_values() -> None:
    # A tuple is stored as {"__werkfluss__": "tuple", "v": [...]}: two levels of JSON.
    assert roundtrip(nested(MAX_DEPTH - 2, (1,))) == nested(MAX_DEPTH - 2, (1,))
    with pytest.raises(SerializationError, match="nests deeper"):
        dumps(nested(MAX_DEPTH - 1, (1,)))
    assert roundtrip(nested(MAX_DEPTH - 1, dt.date(2026, 1, 1))) == nested(MAX_DEPTH - 1, dt.date(2026, 1, 1))
    with pytest.raises(SerializationError, match="nests deeper"):
        dumps(nested(MAX_DEPTH, dt.date(2026, 1, 1)))


def test_loads_takes_what_dumps_writes_and_refuses_deeper_tagged_values() -> None:
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) == nested(MAX_DEPTH - 1, [])
    deep_tuple = "[" * (MAX_DEPTH - 1) + json.dumps({TAG: "tuple", "v": [1]}) + "]" * (MAX_DEPTH - 1)
    with pytest.raises(SerializationError, match=rf"nests deeper than {MAX_DEPTH}"):
        loads(deep_tuple)


@pytest.mark.parametrize("depth", [3_000, 100_000])
def test_loads_of_deep_arrays_raises_serialization_error(depth: int) -> None:
    with pytest.raises(SerializationError, match="nests too deeply"):
        loads("[" * depth + "]" * depth)
    with pytest.raises(SerializationError):
        loads("[" * depth)
    with pytest.raises(SerializationError):
        loads('{"a":' * depth + "1" + "}" * depth)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = json.dumps(["[" * 1000, {"k": "{" * 500 + "]" * 300}, "\\" * 300 + '"[[['])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # loads measures the depth of the text first
    try:
        assert loads(text) == json.loads(text)
        assert loads(json.dumps(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
        with pytest.raises(SerializationError, match="nests deeper"):
            loads(json.dumps(nested(MAX_DEPTH + 1)))
    finally:
        sys.setrecursionlimit(limit)


def test_decode_refuses_deep_tagged_values_with_their_path() -> None:
    value: Any = {TAG: "tuple", "v": [1]}
    for _ in range(MAX_DEPTH):
        value = {TAG: "tuple", "v": [value]}
    with pytest.raises(SerializationError, match=r"nests deeper.*at \[0\]\[0\]"):
        decode(value)


# --- integer size ---------------------------------------------------------------------


def test_integers_of_up_to_max_int_digits_round_trip() -> None:
    biggest = 10**MAX_INT_DIGITS - 1
    assert roundtrip([biggest, -biggest]) == [biggest, -biggest]
    assert roundtrip((biggest,)) == (biggest,)


@pytest.mark.parametrize(
    "bad", [10**MAX_INT_DIGITS, -(10**MAX_INT_DIGITS), 10**5000], ids=["limit", "-limit", "10**5000"]
)
def test_larger_integers_are_refused_with_their_path(bad: int) -> None:
    with pytest.raises(SerializationError, match=rf"more than {MAX_INT_DIGITS} digits at \['n'\]\[1\]"):
        dumps({"n": [1, bad]})
    with pytest.raises(SerializationError, match=rf"more than {MAX_INT_DIGITS} digits at <key "):
        dumps({bad: 1})


def test_int_subclasses_are_bounded_too() -> None:
    class Big(int):
        pass

    with pytest.raises(SerializationError, match="digits"):
        dumps([Big(10**5000)])


# --- large floats ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e16, "10000000000000000.0"),
        (-3.602879701896397e16, "-36028797018963968.0"),
        ([9999999999999998.0, 1e15], "[9999999999999998.0,1000000000000000.0]"),
        ({"big": 2e20, "small": 1e-7}, '{"big":200000000000000000000.0,"small":1e-07}'),
        ((1e16,), '{"__werkfluss__":"tuple","v":[10000000000000000.0]}'),
        ({1e16: "key"}, '{"__werkfluss__":"dict","v":[[10000000000000000.0,"key"]]}'),
    ],
)
def test_floats_of_1e16_and_more_are_written_with_a_fraction(value: Any, text: str) -> None:
    # jsonb would give "1e+16" back as the int 10000000000000000.
    assert dumps(value) == text
    back = loads(text)
    assert back == value
    assert repr(back) == repr(value)


def test_a_string_like_the_mark_of_a_large_float_stays_a_string() -> None:
    value = {"a": "\\u000010.0", "b": 1e16, "c": ["\\u00001.0"]}
    assert roundtrip(value) == value
    with pytest.raises(SerializationError, match=r"NUL.*\['a'\]"):
        dumps({"a": "\x001.0", "b": 1e16})


def test_encode_keeps_large_floats_as_floats() -> None:
    assert encode([1e16]) == [1e16]


# --- loads raises SerializationError and nothing else -------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[{"when": {"__werkfluss__": "datetime", "v": 123}}]',
            r"datetime 123 is not a JSON string at \[0\]\['when'\]",
        ),
        ('[{"when": {"__werkfluss__": "datetime", "v": "soon"}}]', r"datetime 'soon'.*at \[0\]\['when'\]"),
        ('{"__werkfluss__": "date", "v": "2026-13-45"}', "date"),
        ('{"__werkfluss__": "time", "v": []}', "time"),
        ('{"__werkfluss__": "dict", "v": 5}', "dict 5 is not a JSON list"),
        ('{"__werkfluss__": "dict", "v": [[1, 2, 3]]}', r"\[key, value\] pair"),
        ('{"__werkfluss__": "dict", "v": [[[1, [2]], "x"]]}', "not hashable"),
        ('{"__werkfluss__": "dict", "v": [[{"a": 1}, "x"]]}', "not hashable"),
        ('{"__werkfluss__": "timedelta", "v": "x"}', r"\[days, seconds, microseconds\]"),
        ('{"__werkfluss__": "timedelta", "v": [1, 2]}', "timedelta"),
        ('{"__werkfluss__": "timedelta", "v": [1e300, 0, 0]}', "timedelta"),
        ('{"__werkfluss__": "timedelta", "v": [999999999999, 0, 0]}', "timedelta"),
        ('{"__werkfluss__": "uuid", "v": "not-a-uuid"}', "uuid"),
        ('{"__werkfluss__": "uuid", "v": 12}', "uuid"),
        ('{"__werkfluss__": "decimal", "v": "ten"}', "decimal"),
        ('{"__werkfluss__": "decimal", "v": 10}', "decimal"),
        ('{"__werkfluss__": "bytes", "v": "***"}', "base64"),
        ('{"__werkfluss__": "bytearray", "v": "YQ"}', "base64"),
        ('{"__werkfluss__": "bytes", "v": null}', "bytes"),
        ('{"__werkfluss__": "set", "v": [[1, [2]]]}', "not hashable"),
        ('{"__werkfluss__": "frozenset", "v": [{"a": 1}]}', "not hashable"),
        ('{"__werkfluss__": "set", "v": {"a": 1}}', "set"),
        ('{"__werkfluss__": "tuple", "v": "abc"}', "tuple"),
        ('{"__werkfluss__": "tuple"}', "has no 'v'"),
        ('{"__werkfluss__": "pickle", "v": "gASV"}', "unknown stored type tag 'pickle'"),
        ('{"__werkfluss__": 7, "v": 1}', "unknown stored type tag 7"),
        ('{"__werkfluss__": null}', "unknown stored type tag None"),
        ('{"__werkfluss__": "enum", "v": 1}', "no class path"),
        ('{"__werkfluss__": "enum", "cls": 5, "v": 1}', "no class path"),
        ('{"__werkfluss__": "dataclass", "cls": "tests.x:Y", "v": []}', "tests.x:Y"),
        ("[1, 2", "not valid JSON"),
        ("", "not valid JSON"),
        ("NaN", "not valid JSON"),
        ('{"x": -Infinity}', "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
        ("]" * 600 + "[" * 600, "not valid JSON"),
    ],
)
def test_bad_stored_json_raises_serialization_error_naming_the_path(text: str, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        loads(text)


def test_bad_enum_value_and_dataclass_fields_raise_serialization_error() -> None:
    with pytest.raises(SerializationError, match=r"enum 'purple'.*ValueError.*at \['c'\]"):
        loads(json.dumps({"c": {TAG: "enum", "cls": f"{__name__}:Color", "v": "purple"}}))
    with pytest.raises(SerializationError, match=r"dataclass.*TypeError.*at \[0\]"):
        loads(json.dumps([{TAG: "dataclass", "cls": f"{__name__}:Address", "v": {"street": "x"}}]))
    with pytest.raises(SerializationError, match=r"not a JSON dict"):
        loads(json.dumps({TAG: "dataclass", "cls": f"{__name__}:Address", "v": [1]}))


def test_loading_a_stored_dataclass_sets_only_its_own_fields() -> None:
    stored = {TAG: "dataclass", "cls": f"{__name__}:Invoice",
              "v": {"number": 1, "total": 2, "checksum": "c", "__dict__": {"x": 1}, "extra": 5}}
    back = decode(stored)
    assert (back.number, back.total, back.lines, back.checksum) == (1, 2, [], "c")
    assert not hasattr(back, "extra")
    assert not hasattr(back, "x")


def test_loads_accepts_bytes_and_refuses_other_objects() -> None:
    assert loads(b'{"a": [1]}') == {"a": [1]}
    with pytest.raises(SerializationError, match="UTF-8"):
        loads(b"\xff")
    with pytest.raises(SerializationError, match="expected JSON text"):
        loads(42)  # type: ignore[arg-type]


def test_decode_raises_serialization_error_for_any_bad_shape() -> None:
    with pytest.raises(SerializationError, match=r"datetime None.*at \['a'\]\[2\]"):
        decode({"a": [1, 2, {TAG: "datetime", "v": None}]})


def test_loads_names_what_it_loads() -> None:
    with pytest.raises(SerializationError, match="cannot load stored hook payload: not valid JSON"):
        loads("{", what="hook payload")


# --- loading never imports a module because the data names it ---------------------------


@pytest.fixture
def side_effect_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module on sys.path whose import is recorded (in sys.modules['builtins'])."""
    name = "werkfluss_test_side_effect_mod"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import builtins
        import dataclasses
        builtins.__dict__.setdefault("{name}_imports", []).append(1)

        @dataclasses.dataclass
        class Thing:
            n: int = 0
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins

    yield name
    sys.modules.pop(name, None)
    builtins.__dict__.pop(f"{name}_imports", None)
    serializer._ALLOWED_MODULES.discard(name)


def test_a_stored_class_in_a_module_not_imported_is_refused_without_importing_it(
    side_effect_module: str,
) -> None:
    import builtins

    text = json.dumps([{TAG: "dataclass", "cls": f"{side_effect_module}:Thing", "v": {"n": 1}}])
    with pytest.raises(SerializationError, match=rf"{side_effect_module}:Thing.*not imported.*at \[0\]"):
        loads(text)
    with pytest.raises(SerializationError, match="not imported"):
        serializer.resolve_class(f"{side_effect_module}:Thing")
    assert side_effect_module not in sys.modules
    assert f"{side_effect_module}_imports" not in builtins.__dict__


def test_a_module_imported_by_the_application_is_used(side_effect_module: str) -> None:
    module = __import__(side_effect_module)
    text = json.dumps({TAG: "dataclass", "cls": f"{side_effect_module}:Thing", "v": {"n": 3}})
    assert loads(text) == module.Thing(3)


def test_register_module_allows_importing_it_on_demand(side_effect_module: str) -> None:
    import builtins

    serializer.register_module(side_effect_module)
    text = json.dumps({TAG: "dataclass", "cls": f"{side_effect_module}:Thing", "v": {"n": 2}})
    back = loads(text)
    assert type(back).__name__ == "Thing"
    assert back.n == 2
    assert builtins.__dict__[f"{side_effect_module}_imports"] == [1]


@pytest.mark.parametrize("path", ["antigravity:X", "this:X", "idlelib.idle:X", "tkinter:Tk"])
def test_standard_library_modules_are_not_imported_either(path: str) -> None:
    module = path.partition(":")[0]
    if module in sys.modules:
        pytest.skip(f"{module} is already imported in this process")
    with pytest.raises(SerializationError, match="not imported"):
        loads(json.dumps({TAG: "dataclass", "cls": path, "v": {}}))
    assert module not in sys.modules


def test_a_module_getattr_hook_is_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "werkfluss_test_lazy_mod"
    (tmp_path / f"{name}.py").write_text(
        "calls = []\n"
        "def __getattr__(attr):\n"
        "    calls.append(attr)\n"
        "    raise AttributeError(attr)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    try:
        with pytest.raises(SerializationError, match="has no Lazy"):
            loads(json.dumps({TAG: "dataclass", "cls": f"{name}:Lazy", "v": {}}))
        assert module.calls == []
    finally:
        sys.modules.pop(name, None)


def test_a_class_reached_under_another_name_is_refused() -> None:
    with pytest.raises(SerializationError, match="under another name"):
        loads(json.dumps({TAG: "dataclass", "cls": f"{__name__}:AliasOfAddress", "v": {}}))
    with pytest.raises(SerializationError, match="not importable"):
        loads(json.dumps({TAG: "dataclass", "cls": f"{__name__}:serializer.TAG", "v": {}}))


def test_only_dataclasses_enums_and_models_are_constructed() -> None:
    import subprocess

    for tag in ("dataclass", "enum", "model"):
        with pytest.raises(SerializationError, match="is not a"):
            loads(json.dumps({TAG: tag, "cls": "subprocess:Popen", "v": ["true"]}))
    assert subprocess.Popen  # imported, found, and still refused


# --- classes that cannot be found again -------------------------------------------------


def test_a_dataclass_defined_in_a_function_is_refused_when_stored() -> None:
    @dataclass
    class Local:
        n: int

    with pytest.raises(SerializationError, match=r"Local cannot be found again.*at \['x'\].*register"):
        dumps({"x": Local(1)})


def test_a_registered_local_class_round_trips() -> None:
    @serializer.register
    @dataclass
    class Point:
        x: int
        y: int

    try:
        assert roundtrip([Point(1, 2)]) == [Point(1, 2)]
        assert serializer.resolve_class(f"{__name__}:{Point.__qualname__}") is Point
    finally:
        serializer._REGISTERED.pop(f"{__name__}:{Point.__qualname__}")


def test_register_takes_only_classes() -> None:
    with pytest.raises(TypeError):
        serializer.register("myapp.models:Order")  # type: ignore[type-var]
