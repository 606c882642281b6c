"""werkfluss.serializer: what is stored for a value, and what comes back."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from werkfluss import serializer
from werkfluss.errors import SerializationError, WerkflussError
from werkfluss.serializer import TAG, dumps, loads


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
