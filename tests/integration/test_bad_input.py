"""Bad input at every door — Python, SQL, the command line — is refused with
the documented error, stores nothing, and leaves every other run as it was.

Each case runs against a database that already holds other things (the
``world`` fixture: a pending run, an early hook payload, a finished run with
its hook); after the refusal, every werkfluss table is exactly as before.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from werkfluss import (
    DatabaseUnavailable,
    Engine,
    HookRefused,
    InvalidArgument,
    NotAWorkflowError,
    RunIdConflict,
    RunNotFound,
    SerializationError,
    workflow,
)
from werkfluss.errors import ValueRefused
from werkfluss.limits import (
    CHILD_ID_SEPARATOR,
    MAX_RUN_ID_LENGTH,
    MAX_TOKEN_LENGTH,
    MAX_WORKFLOW_NAME_LENGTH,
)

from ..helpers import login_role, run_cli, sql, sql_value

NAME = "tests.bad.noop"
TOO_LONG_NAME = "n" * (MAX_WORKFLOW_NAME_LENGTH + 1)
TOO_LONG_ID = "r" * (MAX_RUN_ID_LENGTH + 1)
TOO_LONG_TOKEN = "t" * (MAX_TOKEN_LENGTH + 1)
CHILD_ID = f"order-42{CHILD_ID_SEPARATOR}1"
NEVER_ISSUED = "wfh_" + "A" * 43  # the shape of a generated token


@workflow(name=NAME)
async def noop(*args: Any, **kwargs: Any) -> None:
    return None


async def not_a_workflow() -> None:  # no @workflow
    return None


def _snapshot(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every werkfluss table, as text."""
    tables = {
        "runs": "id", "queue": "run_id", "events": "run_id, seq", "hooks": "token",
        "hook_payloads": "id",
    }
    return {
        table: sql(dsn, f"SELECT t::text FROM werkfluss.{table} t ORDER BY {order}")
        for table, order in tables.items()
    }


@pytest.fixture
def world(dsn: str) -> Callable[[], None]:
    """Other runs and payloads; yields a check that nothing changed since."""
    sql(dsn, """SELECT werkfluss.start_run('tests.bad.bystander', '["keep me"]', 'bystander',
                                           timeout => '1 hour')""")
    sql(dsn, """SELECT werkfluss.send('bystander:early', '{"early": true}')""")
    sql(dsn, """INSERT INTO werkfluss.runs (id, workflow, status, result, finished_at)
                VALUES ('finished', 'tests.bad.bystander', 'completed', '"done"', now())""")
    sql(dsn, "INSERT INTO werkfluss.hooks (token, run_id, seq) VALUES ('finished:hook', 'finished', 1)")
    before = _snapshot(dsn)
    assert len(before["runs"]) == 2
    assert len(before["queue"]) == 1
    assert len(before["hook_payloads"]) == 1

    def unchanged() -> None:
        assert _snapshot(dsn) == before

    return unchanged


# --- Python ------------------------------------------------------------------------------


async def _start_with_a_socket(engine: Engine) -> object:
    with socket.socket() as sock:
        return await engine.start(noop, sock)


Call = Callable[[Engine], Awaitable[object]]

# (call, error class, message), refused before the database is touched
PYTHON_BEFORE_THE_DATABASE: list[Any] = [
    pytest.param(lambda e: e.start(""), InvalidArgument, "must not be empty", id="start-empty-name"),
    pytest.param(lambda e: e.start(" \t"), InvalidArgument, "must not be empty", id="start-blank-name"),
    pytest.param(lambda e: e.start(TOO_LONG_NAME), InvalidArgument,
                 "the workflow name is 256 characters long; the limit is 255", id="start-name-too-long"),
    pytest.param(lambda e: e.start(not_a_workflow), NotAWorkflowError, "decorate it with @workflow",
                 id="start-plain-function"),
    pytest.param(lambda e: e.start(42), NotAWorkflowError, "is not a workflow", id="start-number"),
    pytest.param(lambda e: e.start(noop, run_id=""), InvalidArgument, "run_id is empty",
                 id="start-empty-run-id"),
    pytest.param(lambda e: e.start(noop, run_id="  "), InvalidArgument, "run_id is empty",
                 id="start-blank-run-id"),
    pytest.param(lambda e: e.start(noop, run_id=TOO_LONG_ID), InvalidArgument,
                 "run_id is 256 characters long; the limit is 255", id="start-run-id-too-long"),
    pytest.param(lambda e: e.start(noop, run_id=CHILD_ID), InvalidArgument,
                 "contains '::', which is reserved for child runs", id="start-run-id-child-namespace"),
    pytest.param(lambda e: e.start(noop, run_id=42), InvalidArgument, "run_id must be a string, not int",
                 id="start-run-id-not-a-string"),
    pytest.param(lambda e: e.start(noop, run_id="a\x00b"), InvalidArgument, "NUL character",
                 id="start-run-id-nul"),
    pytest.param(lambda e: e.start(noop, run_id="a\ud800"), InvalidArgument, "lone surrogate",
                 id="start-run-id-lone-surrogate"),
    pytest.param(lambda e: e.start(noop, timeout=0), InvalidArgument, "timeout must be positive",
                 id="start-timeout-zero"),
    pytest.param(lambda e: e.start(noop, timeout=-5), InvalidArgument, "timeout must be zero or more",
                 id="start-timeout-negative"),
    pytest.param(lambda e: e.start(noop, timeout="soon"), InvalidArgument, "timeout 'soon'",
                 id="start-timeout-unparseable"),
    pytest.param(lambda e: e.start(noop, timeout=float("nan")), InvalidArgument, "must be finite",
                 id="start-timeout-nan"),
    pytest.param(_start_with_a_socket, SerializationError, "socket", id="start-args-socket"),
    pytest.param(lambda e: e.start(noop, lambda: 1), SerializationError, "function",
                 id="start-args-lambda"),
    pytest.param(lambda e: e.start(noop, when=object()), SerializationError, "object",
                 id="start-kwargs-object"),
    pytest.param(lambda e: e.send(""), InvalidArgument, "the hook token is empty", id="send-empty-token"),
    pytest.param(lambda e: e.send("\n"), InvalidArgument, "the hook token is empty", id="send-blank-token"),
    pytest.param(lambda e: e.send(None), InvalidArgument, "the hook token is None", id="send-none-token"),
    pytest.param(lambda e: e.send(TOO_LONG_TOKEN), InvalidArgument,
                 "the hook token is 501 characters long; the limit is 500", id="send-token-too-long"),
    pytest.param(lambda e: e.send("t\x00"), InvalidArgument, "NUL character", id="send-token-nul"),
    pytest.param(lambda e: e.send("bystander:late", lambda: 1), SerializationError, "hook payload",
                 id="send-payload-lambda"),
    pytest.param(lambda e: e.cancel(""), InvalidArgument, "run_id is empty", id="cancel-empty-run-id"),
    pytest.param(lambda e: e.cancel(None), InvalidArgument, "run_id is None", id="cancel-none-run-id"),
]

# (call, error class, message), refused by the database
PYTHON_BY_THE_DATABASE: list[Any] = [
    pytest.param(lambda e: e.send(NEVER_ISSUED), HookRefused, "no hook was ever issued",
                 id="send-never-issued-generated-token"),
    pytest.param(lambda e: e.send("finished:hook", {"late": True}), HookRefused,
                 "the run that owns the hook has finished", id="send-to-a-finished-runs-hook"),
    pytest.param(lambda e: e.send("bystander:early", 2), HookRefused, "only the first one is kept",
                 id="send-second-early-payload"),
    pytest.param(lambda e: e.cancel("no-such-run"), RunNotFound, "no run with id 'no-such-run'",
                 id="cancel-unknown-run"),
    pytest.param(lambda e: e.handle("no-such-run").status(), RunNotFound, "no run with id",
                 id="status-unknown-run"),
    pytest.param(lambda e: e.start(noop, run_id="bystander"), RunIdConflict,
                 "already belongs to workflow tests.bad.bystander", id="start-run-id-of-another-workflow"),
]


@pytest.mark.parametrize(("call", "error", "message"),
                         PYTHON_BEFORE_THE_DATABASE + PYTHON_BY_THE_DATABASE)
async def test_python_refuses_bad_input_and_stores_nothing(
    engine: Engine, world: Callable[[], None], call: Call, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        await call(engine)
    assert type(caught.value) is error
    world()


@pytest.mark.parametrize(("call", "error", "message"), PYTHON_BEFORE_THE_DATABASE)
async def test_python_refuses_bad_input_before_connecting(
    call: Call, error: type[Exception], message: str
) -> None:
    engine = Engine("postgresql://nobody@127.0.0.1:1/nowhere", pool_size=1)
    try:
        with pytest.raises(error, match=message):
            await call(engine)
    finally:
        await engine.close()


# --- SQL -----------------------------------------------------------------------------------

# (statement, SQLSTATE, message)
SQL_ERRORS: list[Any] = [
    pytest.param("SELECT werkfluss.start_run(NULL, '[]')", "22023",
                 "werkfluss.start_run: the workflow name is NULL", id="start-null-name"),
    pytest.param("SELECT werkfluss.start_run('', '[]')", "22023",
                 "werkfluss.start_run: the workflow name is empty", id="start-empty-name"),
    pytest.param("SELECT werkfluss.start_run(E' \\t', '[]')", "22023",
                 "werkfluss.start_run: the workflow name is empty", id="start-blank-name"),
    pytest.param("SELECT werkfluss.start_run(repeat('n', 256), '[]')", "22023",
                 "the workflow name is 256 characters long; the limit is 255", id="start-name-too-long"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', '')", "22023", "run_id is empty",
                 id="start-empty-run-id"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', repeat('r', 256))", "22023",
                 "run_id is 256 characters long; the limit is 255", id="start-run-id-too-long"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', '{CHILD_ID}')", "22023",
                 "run_id 'order-42::1' contains '::', which is reserved for child runs",
                 id="start-run-id-child-namespace"),
    pytest.param(f"""SELECT werkfluss.start_run('{NAME}', '{{"a": 1}}')""", "22023",
                 "args must be a JSON array, got object", id="start-args-object"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', NULL)", "22023",
                 "args must be a JSON array, got NULL", id="start-args-null"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', kwargs => '[1]')", "22023",
                 "kwargs must be a JSON object, got array", id="start-kwargs-array"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', kwargs => NULL)", "22023",
                 "kwargs must be a JSON object, got NULL", id="start-kwargs-null"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', timeout => '0')", "22023",
                 "timeout must be positive", id="start-timeout-zero"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', timeout => '-1 hour')", "22023",
                 "timeout must be positive", id="start-timeout-negative"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[]', timeout => 'soon')", "22007",
                 "invalid input syntax for type interval", id="start-timeout-unparseable"),
    pytest.param(f"SELECT werkfluss.start_run('{NAME}', '[1, 2')", "22P02",
                 "invalid input syntax for type json", id="start-args-not-json"),
    pytest.param("SELECT werkfluss.start_run('tests.bad.other', '[]', 'bystander')", "23505",
                 "run id bystander already belongs to workflow tests.bad.bystander",
                 id="start-run-id-of-another-workflow"),
    pytest.param("SELECT werkfluss.send(NULL, 'true')", "22023", "werkfluss.send: the token is NULL",
                 id="send-null-token"),
    pytest.param("SELECT werkfluss.send('', 'true')", "22023", "werkfluss.send: the token is empty",
                 id="send-empty-token"),
    pytest.param("SELECT werkfluss.send(repeat('t', 501), 'true')", "22023",
                 "the token is 501 characters long; the limit is 500", id="send-token-too-long"),
    pytest.param("SELECT werkfluss.cancel_run(NULL)", "22023", "werkfluss.cancel_run: run_id is NULL",
                 id="cancel-null-run-id"),
    pytest.param("SELECT werkfluss.cancel_run('')", "22023", "werkfluss.cancel_run: run_id is empty",
                 id="cancel-empty-run-id"),
    pytest.param("SELECT werkfluss.cancel_run('no-such-run')", "P0002",
                 "werkfluss.cancel_run: no run with id no-such-run", id="cancel-unknown-run"),
    pytest.param("SELECT * FROM werkfluss.run_status(NULL)", "22023",
                 "werkfluss.run_status: run_id is NULL", id="status-null-run-id"),
    pytest.param("SELECT * FROM werkfluss.run_status('')", "22023",
                 "werkfluss.run_status: run_id is empty", id="status-empty-run-id"),
    pytest.param("SELECT * FROM werkfluss.run_status('no-such-run')", "P0002",
                 "werkfluss.run_status: no run with id no-such-run", id="status-unknown-run"),
]


@pytest.fixture
def client(dsn: str) -> Iterator[str]:
    """The SQL door as applications use it: a role granted werkfluss_client."""
    with login_role(dsn, "werkfluss_client") as client_dsn:
        yield client_dsn


@pytest.mark.parametrize(("statement", "sqlstate", "message"), SQL_ERRORS)
def test_sql_refuses_bad_input_and_stores_nothing(
    client: str, world: Callable[[], None], statement: str, sqlstate: str, message: str
) -> None:
    with pytest.raises(psycopg.Error) as caught:
        sql(client, statement)
    assert caught.value.sqlstate == sqlstate
    assert message in str(caught.value.diag.message_primary)
    if sqlstate == "22023":
        assert caught.value.diag.message_hint, "every check says what to do instead"
    world()


@pytest.mark.parametrize(
    "token",
    [pytest.param(NEVER_ISSUED, id="never-issued-generated-token"),
     pytest.param("finished:hook", id="finished-runs-hook"),
     pytest.param("bystander:early", id="second-early-payload")],
)
def test_sql_send_refuses_with_false_and_stores_nothing(
    client: str, world: Callable[[], None], token: str
) -> None:
    assert sql(client, "SELECT werkfluss.send(%s, '\"late\"')", [token]) == [(False,)]
    world()


# --- command line --------------------------------------------------------------------------

# (arguments, what the error line says)
CLI_ERRORS: list[Any] = [
    pytest.param(["start", NAME, "[not json"], "ARGS must be a JSON array", id="start-args-not-json"),
    pytest.param(["start", NAME, '{"a": 1}'], "ARGS must be a JSON array", id="start-args-object"),
    pytest.param(["start", ""], "the workflow name is empty", id="start-empty-name"),
    pytest.param(["start", TOO_LONG_NAME], "the workflow name is 256 characters long; the limit is 255",
                 id="start-name-too-long"),
    pytest.param(["start", NAME, "--run-id", ""], "run_id is empty", id="start-empty-run-id"),
    pytest.param(["start", NAME, "--run-id", TOO_LONG_ID], "run_id is 256 characters long; the limit is 255",
                 id="start-run-id-too-long"),
    pytest.param(["start", NAME, "--run-id", CHILD_ID], "'::', which is reserved for child runs",
                 id="start-run-id-child-namespace"),
    pytest.param(["start", NAME, "--run-id", "bystander"], "already belongs to workflow tests.bad.bystander",
                 id="start-run-id-of-another-workflow"),
    pytest.param(["start", NAME, "--timeout", "soon"], "--timeout 'soon'", id="start-timeout-unparseable"),
    pytest.param(["start", NAME, "--timeout", "0"], "--timeout must be positive", id="start-timeout-zero"),
    pytest.param(["start", NAME, "--timeout=-1h"], "--timeout '-1h' is not a duration",
                 id="start-timeout-negative"),
    pytest.param(["start", NAME, "--wait", "--wait-timeout", "0"], "--wait-timeout must be a positive",
                 id="start-wait-timeout-zero"),
    pytest.param(["send", "order-42:approval", "{approved: true}"], "JSON must be a JSON value",
                 id="send-payload-not-json"),
    pytest.param(["send", ""], "the hook token is empty", id="send-empty-token"),
    pytest.param(["send", TOO_LONG_TOKEN], "the hook token is 501 characters long; the limit is 500",
                 id="send-token-too-long"),
    pytest.param(["send", NEVER_ISSUED], "no hook was ever issued with this token",
                 id="send-never-issued-generated-token"),
    pytest.param(["send", "finished:hook", "true"], "the run that owns the hook has finished",
                 id="send-to-a-finished-runs-hook"),
    pytest.param(["cancel", "no-such-run"], "no run with id 'no-such-run'", id="cancel-unknown-run"),
    pytest.param(["cancel", ""], "run_id is empty", id="cancel-empty-run-id"),
    pytest.param(["show", "no-such-run"], "no run with id 'no-such-run'", id="show-unknown-run"),
    pytest.param(["runs", "--limit", "0"], "--limit must be at least 1", id="runs-limit-zero"),
]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("werkfluss: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(("args", "message"), CLI_ERRORS)
def test_cli_refuses_bad_input_with_one_line_and_stores_nothing(
    dsn: str, world: Callable[[], None], args: list[str], message: str
) -> None:
    done = run_cli(*args, dsn=dsn)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert message in _one_error_line(done.stderr)
    assert done.stdout == ""
    world()


# More malformed connection strings: tests/unit/test_connector_unit.py.
@pytest.mark.parametrize(
    "bad_dsn",
    [
        pytest.param("postgresql://bob:hunter2@db.example.com/shop?bad", id="url-bad-query"),
        pytest.param("host=db.example.com password=hun ter2 dbname=shop", id="key-value-unquoted-space"),
    ],
)
def test_cli_with_a_malformed_dsn_says_so_without_the_password(bad_dsn: str) -> None:
    done = run_cli("runs", dsn=bad_dsn)
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "the connection string is malformed" in line
    for secret in ("hunter2", "hun", "ter2"):
        assert secret not in done.stderr
    assert "server is running" not in line


def test_cli_start_against_an_unmigrated_database_says_to_migrate(fresh_dsn: str) -> None:
    done = run_cli("start", NAME, "[]", dsn=fresh_dsn)
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "python -m werkfluss migrate" in line
    assert "--migrate" in line.replace("werkfluss migrate", "")
    assert sql_value(fresh_dsn, "SELECT to_regnamespace('werkfluss')") is None


# --- the same limits at every door --------------------------------------------------------


def _longest(limit: int, char: str) -> str:
    return char * limit


@pytest.mark.parametrize("char", [pytest.param("x", id="ascii"), pytest.param("é", id="two-byte"),
                                  pytest.param("🙂", id="four-byte")])
async def test_python_and_sql_accept_exactly_the_same_lengths(
    engine: Engine, client: str, char: str
) -> None:
    name, run_id, token = (_longest(n, char) for n in
                           (MAX_WORKFLOW_NAME_LENGTH, MAX_RUN_ID_LENGTH, MAX_TOKEN_LENGTH))
    # Exactly the limit: accepted by both doors.
    handle = await engine.start(name, run_id=run_id)
    assert handle.run_id == run_id
    assert sql(client, "SELECT werkfluss.start_run(%s, '[]', %s)", [name, "S" + run_id[1:]]) == [
        ("S" + run_id[1:],)
    ]
    await engine.send(token, 1)
    assert sql(client, "SELECT werkfluss.send(%s, '2')", ["S" + token[1:]]) == [(True,)]
    # One character more: refused by both, with InvalidArgument / 22023.
    for python_call, statement, params in [
        (lambda: engine.start(name + char), "SELECT werkfluss.start_run(%s, '[]')", [name + char]),
        (lambda: engine.start(NAME, run_id=run_id + char), "SELECT werkfluss.start_run(%s, '[]', %s)",
         [NAME, run_id + char]),
        (lambda: engine.send(token + char), "SELECT werkfluss.send(%s)", [token + char]),
    ]:
        with pytest.raises(InvalidArgument, match="characters long; the limit is"):
            await python_call()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="characters long; the limit is"):
            sql(client, statement, params)
    assert sql_value(client, "SELECT count(*) FROM werkfluss.run_status(%s)", [run_id]) == 1


async def test_cli_accepts_and_refuses_the_same_run_id_lengths(dsn: str) -> None:
    longest = "c" * MAX_RUN_ID_LENGTH
    ok = run_cli("start", NAME, "--run-id", longest, dsn=dsn)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == longest
    refused = run_cli("start", NAME, "--run-id", longest + "c", dsn=dsn)
    assert refused.returncode == 1
    assert "the limit is 255" in _one_error_line(refused.stderr)
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 1


async def test_a_value_too_large_for_an_index_is_refused_not_an_outage(
    engine: Engine, world: Callable[[], None]
) -> None:
    # Past the checks (the internal _send has none), PostgreSQL refuses the
    # value with program_limit_exceeded, 54000 — once reported as "cannot
    # reach PostgreSQL".
    with pytest.raises(ValueRefused, match="index row size") as caught:
        await engine.connector.fetch_one("send", token=secrets.token_urlsafe(3000), payload="null")
    assert isinstance(caught.value, InvalidArgument)
    assert not isinstance(caught.value, DatabaseUnavailable)
    assert "cannot reach" not in str(caught.value)
    world()
