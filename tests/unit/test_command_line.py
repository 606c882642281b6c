"""The command line without a database: help, names, messages, the pruner's rounds."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from werkfluss.cli.main import parser
from werkfluss.cli.output import seconds_text
from werkfluss.errors import AppImportError, InvalidArgument, InvalidDsn
from werkfluss.store.connector import Connector, _what_to_check, redact_dsn, without_password
from werkfluss.store.retention import BUSY
from werkfluss.worker import __main__ as worker_main
from werkfluss.worker.retention import Pruner

SECRET = "hunter2-Secret"


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    commands = _subcommands(parser())
    found = [(name, p) for name, p in commands.items() if name != "worker"]
    return [*found, ("worker", worker_main.parser())]


@pytest.mark.parametrize(("name", "command"), _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_durations_say_their_units(
    name: str, command: argparse.ArgumentParser
) -> None:
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {label} has no help text"
        if action.metavar and "DURATION" in str(action.metavar):
            assert re.search(r"\d+(ms|s|m|h|d|w)\b", action.help), f"{name} {label}: no unit in its help"


def test_the_usage_line_names_the_program_as_it_was_called() -> None:
    assert parser("werkfluss").format_usage().startswith("usage: werkfluss ")
    assert parser("python -m werkfluss").format_usage().startswith("usage: python -m werkfluss ")
    assert "worker" in _subcommands(parser())
    assert worker_main.parser("werkfluss worker").format_usage().startswith("usage: werkfluss worker ")


@pytest.mark.parametrize(
    ("app", "suggestion"),
    [
        ("crashapp.py", "--app crashapp "),
        ("./crashapp.py", "--app crashapp "),
        ("myapp/workflows.py", "--app myapp.workflows "),
        ("myapp/workflows", "--app myapp.workflows "),
        ("/srv/jobs/tasks.py", "--app tasks, with PYTHONPATH=/srv/jobs "),
        ("my-app/flows.py", "a dotted module name"),
    ],
)
def test_an_app_given_as_a_file_path_gets_the_module_name_to_use(app: str, suggestion: str) -> None:
    with pytest.raises(AppImportError) as caught:
        worker_main.import_apps([app])
    message = str(caught.value)
    assert message.startswith(f"--app {app} is a file path; --app takes the module's import name")
    assert suggestion in message


def test_an_app_that_is_a_module_name_is_not_taken_for_a_path() -> None:
    assert worker_main.module_for_path("myapp.workflows") is None
    assert worker_main.module_for_path("tests.acceptance.apps.effects_app") is None


def test_retention_off_and_zero() -> None:
    assert worker_main.retention_setting("off") is None
    assert worker_main.retention_setting("OFF") is None
    assert worker_main.retention_setting("14d") == "14d"
    with pytest.raises(InvalidArgument, match="use --retention off to keep every run"):
        worker_main.retention_setting("0")
    with pytest.raises(InvalidArgument, match="not a duration"):
        worker_main.retention_setting("forever")


def test_durations_for_people() -> None:
    assert [seconds_text(s) for s in (0.25, 12.34, 95, 3 * 3600 + 720, 2 * 86400 + 4 * 3600)] == [
        "250ms", "12.3s", "1m 35s", "3h 12m", "2d 4h"]


# --- connection strings ------------------------------------------------------------------------


def test_redacted_dsns_keep_everything_but_the_password() -> None:
    assert redact_dsn(f"postgresql://app:{SECRET}@db:5432/shop") == "postgresql://app:***@db:5432/shop"
    assert redact_dsn(f"host=db password={SECRET} dbname=shop") == "host=db password=*** dbname=shop"
    assert redact_dsn("postgresql://postgres@/postgres?host=/tmp/x") == "postgresql://postgres@/postgres?host=/tmp/x"
    assert without_password(f"postgresql://app:{SECRET}@db/shop") == "user=app dbname=shop host=db"
    assert without_password("postgresql://app@db/shop") is None


@pytest.mark.parametrize(
    ("dsn", "quoted"),
    [
        pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:abc/shop", 'for connection option "port"',
                     id="port-not-a-number"),
        pytest.param(f"postgresql://app:{SECRET}@127.0.0.1/shop?sslmode=sometimes", "sslmode",
                     id="unknown-sslmode"),
        pytest.param(f"http://app:{SECRET}@127.0.0.1/shop", "a URL must start with postgresql://, not http://",
                     id="http-url"),
    ],
)
async def test_a_dsn_libpq_refuses_is_malformed_not_unreachable(dsn: str, quoted: str) -> None:
    connector = Connector(dsn)
    with pytest.raises(InvalidDsn) as caught:
        await connector.open()
    message = str(caught.value)
    assert message.startswith("the connection string is malformed: ")
    assert quoted in message
    assert "server is running" not in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("reason", "advice"),
    [
        ('FATAL:  password authentication failed for user "app"', "Check the user and password"),
        ('FATAL:  role "nobody" does not exist', "Check the user and password"),
        ('FATAL:  database "shop" does not exist', "Create the database (createdb NAME)"),
        ("failed to resolve host 'db.example': Name or service not known", "Check the host name"),
        ("connection refused", "Check that the server is running"),
    ],
)
def test_an_unreachable_server_gets_the_advice_that_fits(reason: str, advice: str) -> None:
    assert _what_to_check(reason, "postgresql://app@db/shop").startswith(advice)


def test_an_unencoded_at_sign_in_a_password_is_pointed_out() -> None:
    advice = _what_to_check("failed to resolve host '***@db'", "postgresql://app:p@ss@db/shop")
    assert "an '@' in the password must be written %40" in advice


# --- the pruner's rounds -------------------------------------------------------------------------


class FakeConnector:
    """Answers prune_runs with the given numbers of deleted runs, in order."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    async def fetch_one(self, name: str, **params: Any) -> dict[str, int]:
        assert name == "prune_runs"
        self.calls.append(params)
        return {"deleted": self.answers.pop(0)}


async def test_a_round_deletes_batches_until_one_comes_back_short() -> None:
    fake = FakeConnector([2, 2, 1])
    pruner = Pruner(fake, retention=60, interval=1, batch_size=2)  # type: ignore[arg-type]
    assert await pruner.run_once() == 5
    assert [c["wait"] for c in fake.calls] == [False, False, False]
    assert {c["older_than_seconds"] for c in fake.calls} == {60}
    assert (pruner.rounds, pruner.deleted, pruner.skipped) == (1, 5, 0)


async def test_a_round_without_the_turn_is_skipped_and_one_that_loses_it_stops() -> None:
    skipped = Pruner(FakeConnector([BUSY]), retention=60, interval=1, batch_size=2)  # type: ignore[arg-type]
    assert await skipped.run_once() is None
    assert (skipped.rounds, skipped.skipped) == (0, 1)
    lost = Pruner(FakeConnector([2, BUSY]), retention=60, interval=1, batch_size=2)  # type: ignore[arg-type]
    assert await lost.run_once() == 2
    assert lost.deleted == 2
