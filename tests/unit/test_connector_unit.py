"""werkfluss.store.connector.describe_dsn: connection strings in messages, never with the password."""

from __future__ import annotations

import pytest

from werkfluss.store.connector import Connector, describe_dsn

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://alice:{SECRET}@db.example.com:6543/app",
        f"postgres://alice:{SECRET}@db.example.com:6543/app?sslmode=require",
        f"postgresql://db.example.com:6543/app?user=alice&password={SECRET}",
        f"host=db.example.com port=6543 dbname=app user=alice password={SECRET}",
        f"host=db.example.com port=6543 dbname=app user=alice password='{SECRET}'",
    ],
)
def test_describe_dsn_names_the_server_but_not_the_password(dsn: str) -> None:
    description = describe_dsn(dsn)
    assert description == "host=db.example.com port=6543 database=app user=alice"
    assert SECRET not in description


def test_describe_dsn_leaves_out_what_is_not_given() -> None:
    assert describe_dsn("postgresql://localhost/test") == "host=localhost database=test"


def test_describe_dsn_of_an_empty_string_says_libpq_defaults() -> None:
    assert describe_dsn("") == "the default PostgreSQL server (libpq defaults)"


def test_describe_dsn_of_an_unparseable_string_does_not_echo_it() -> None:
    description = describe_dsn(f"host=db password='{SECRET}")  # unterminated quote
    assert description == "an unparseable connection string"
    assert SECRET not in description


def test_connector_description_hides_the_password_without_connecting() -> None:
    connector = Connector(f"postgresql://alice:{SECRET}@db.example.com/app")
    assert connector.description == "host=db.example.com database=app user=alice"
    assert not connector.is_open
