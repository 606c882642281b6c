"""werkfluss.store.connector without a database: connection strings in messages,
never with the password; psycopg's errors translated by SQLSTATE."""

from __future__ import annotations

import psycopg
import pytest

from werkfluss.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgument,
    RunIdConflict,
    RunNotFound,
    SchemaNotReady,
    ValueRefused,
)
from werkfluss.store.connector import Connector, describe_dsn, scrub, translate_error

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


# --- malformed connection strings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "secrets"),
    [
        pytest.param(f"postgresql://alice:{SECRET}@db.example.com/app?bad", [SECRET], id="url-bad-query"),
        pytest.param(f"postgresql://alice:{SECRET}@[::1/app", [SECRET], id="url-unclosed-ipv6"),
        pytest.param("postgresql://alice:s3cr%40t@db/app?bad", ["s3cr%40t", "s3cr@t"], id="url-encoded"),
        pytest.param(f"postgresql://db/app?user=alice&password={SECRET}&bad", [SECRET],
                     id="url-query-password"),
        pytest.param(f"host=db password={SECRET} dbname", [SECRET], id="key-value-missing-equals"),
        pytest.param("host=db password=s3cr 3t-Pa55 dbname=app", ["s3cr", "3t-Pa55"],
                     id="key-value-unquoted-space"),
        pytest.param(f"host=db password='{SECRET} dbname=app", [SECRET], id="key-value-unterminated-quote"),
        pytest.param(f"host=db password = '{SECRET}' colour=blue", [SECRET], id="key-value-unknown-option"),
        pytest.param(f"password={SECRET} = x", [SECRET], id="key-value-empty-key"),
    ],
)
async def test_a_malformed_dsn_is_refused_as_malformed_without_the_password(
    dsn: str, secrets: list[str]
) -> None:
    connector = Connector(dsn)
    with pytest.raises(ConfigurationError) as caught:
        await connector.open()
    message = str(caught.value)
    assert message.startswith("the connection string is malformed: ")
    assert "server is running" not in message
    for secret in secrets:
        assert secret not in message
        assert secret not in connector.description
        # Whatever libpq quotes from it, too.
        assert secret not in connector._scrub(f'missing "=" after "{secret}" in connection info string')
    assert not connector.is_open


@pytest.mark.parametrize(
    ("dsn", "description"),
    [
        # libpq reads this as password "s3cr", host "t@db".
        ("postgresql://alice:s3cr@t@db/app", "host=***@db database=app user=alice"),
        ("postgresql://alice:p@ssw0rd@db/app", "host=***@db database=app user=alice"),
    ],
)
def test_a_password_with_an_unencoded_at_sign_leaks_no_part_into_the_description(
    dsn: str, description: str
) -> None:
    assert describe_dsn(dsn) == description


@pytest.mark.parametrize(
    "text",
    [
        f"could not connect to postgresql://alice:{SECRET}@db.example.com/app",
        f"bad option in host=db password={SECRET} dbname=app",
        f"bad option in host=db password = '{SECRET}' dbname=app",
        f"see postgres://bob:{SECRET}@localhost?sslmode=require",
    ],
)
def test_scrub_removes_anything_shaped_like_a_password(text: str) -> None:
    assert SECRET not in scrub(text)
    assert "***" in scrub(text)


# --- translating errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "params", "expected", "message"),
    [
        pytest.param(psycopg.errors.ConnectionFailure("server gone"), {}, DatabaseUnavailable,
                     "cannot reach PostgreSQL", id="08006-connection-failure"),
        pytest.param(psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
                     {}, DatabaseUnavailable, "cannot reach PostgreSQL", id="57P01-admin-shutdown"),
        pytest.param(psycopg.errors.CannotConnectNow("the database system is starting up"), {},
                     DatabaseUnavailable, "starting up", id="57P03-cannot-connect-now"),
        pytest.param(psycopg.OperationalError("consuming input failed: server closed the connection"), {},
                     DatabaseUnavailable, "server closed the connection", id="no-sqlstate-connection-lost"),
        pytest.param(psycopg.InterfaceError("the connection is closed"), {}, DatabaseUnavailable,
                     "the connection is closed", id="interface-error-closed"),
        pytest.param(psycopg.errors.ProgramLimitExceeded(
            'index row size 3016 exceeds btree version 4 maximum 2704 for index "runs_pkey"'), {},
            ValueRefused, "refused a value as too large: index row size 3016",
            id="54000-index-row-too-large"),
        pytest.param(psycopg.errors.InvalidTextRepresentation("invalid input syntax for type json"), {},
                     ValueRefused, "refused a value as not acceptable", id="22P02-invalid-text"),
        pytest.param(psycopg.errors.DatetimeFieldOverflow("timestamp out of range"), {}, ValueRefused,
                     "timestamp out of range", id="22008-timestamp-out-of-range"),
        pytest.param(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), {},
                     ValueRefused, "NUL", id="client-side-data-error"),
        pytest.param(psycopg.errors.InvalidParameterValue("werkfluss.start_run: run_id is empty"), {},
                     InvalidArgument, "werkfluss.start_run: run_id is empty", id="22023-from-werkfluss"),
        pytest.param(psycopg.errors.RaiseException("werkfluss.something: refused"), {}, InvalidArgument,
                     "refused", id="P0001-from-werkfluss"),
        pytest.param(psycopg.errors.UniqueViolation("werkfluss.start_run: run id x already belongs to y"),
                     {}, RunIdConflict, "already belongs", id="23505-run-id-conflict"),
        pytest.param(psycopg.errors.NoDataFound("werkfluss.cancel_run: no run with id x"), {"run_id": "x"},
                     RunNotFound, "no run with id 'x'", id="P0002-run-not-found"),
        pytest.param(psycopg.errors.UndefinedFunction("function werkfluss.run_status(text) does not exist"),
                     {}, SchemaNotReady, "--migrate", id="42883-schema-not-ready"),
        pytest.param(psycopg.errors.InsufficientPrivilege("permission denied for table runs"), {},
                     DatabaseError, "lacks a grant", id="42501-permission-denied"),
        pytest.param(psycopg.errors.DeadlockDetected("deadlock detected"), {}, DatabaseError,
                     "PostgreSQL error: deadlock detected", id="40P01-deadlock"),
        pytest.param(psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), {},
                     DatabaseError, "statement timeout", id="57014-query-canceled"),
        pytest.param(psycopg.errors.PipelineAborted("pipeline aborted"), {}, DatabaseError,
                     "pipeline aborted", id="pipeline-aborted"),
    ],
)
def test_translate_error_classifies_by_sqlstate(
    error: psycopg.Error, params: dict[str, str], expected: type[Exception], message: str
) -> None:
    translated = translate_error(error, params, Connector(f"postgresql://alice:{SECRET}@db/app"))
    assert type(translated) is expected
    assert message in str(translated)


def test_a_value_refused_is_an_invalid_argument_and_a_database_error() -> None:
    refused = translate_error(psycopg.errors.ProgramLimitExceeded("too big"), {}, Connector(""))
    assert isinstance(refused, InvalidArgument)
    assert isinstance(refused, DatabaseError)
    assert not isinstance(refused, DatabaseUnavailable)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError(f"connection to server failed for password={SECRET}"),
        psycopg.errors.SyntaxError(f"syntax error at or near \"{SECRET}\""),
        psycopg.errors.ProgramLimitExceeded(f"postgresql://alice:{SECRET}@db/app is too long"),
    ],
)
def test_translated_errors_never_carry_the_password(error: psycopg.Error) -> None:
    translated = translate_error(error, {}, Connector(f"postgresql://alice:{SECRET}@db/app"))
    assert SECRET not in str(translated)
