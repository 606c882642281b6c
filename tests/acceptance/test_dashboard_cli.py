"""`werkfluss dashboard` as an operator starts it: what it prints, how it
stops, and the one-line errors when it cannot serve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from ..helpers import ROOT, login_role, run_cli


def test_the_command_prints_its_address_serves_and_stops_on_sigterm(dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WERKFLUSS_DASHBOARD_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    with (tmp_path / "err.log").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "werkfluss", "dashboard", "--port", "0", "--dsn", dsn],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            address = re.fullmatch(r"werkfluss dashboard: (http://127\.0\.0\.1:\d+/) \(read-only\); "
                                   r"Ctrl-C stops it\n", first)
            assert address, first
            with urllib.request.urlopen(address[1] + "runs", timeout=10) as page:
                assert page.status == 200
                body = page.read().decode()
            assert "<title>Runs · werkfluss</title>" in body
            assert 'id="mode"' in body  # read-only
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
    assert "Traceback" not in (tmp_path / "err.log").read_text()


def test_a_role_without_the_grants_gets_one_line_naming_them(dsn: str) -> None:
    with login_role(dsn, "werkfluss_client") as client_dsn:
        refused = run_cli("dashboard", "--port", "0", dsn=client_dsn, timeout=60)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("werkfluss: the role 'werkfluss_test_login_")
    assert "lacks SELECT on werkfluss.runs" in refused.stderr
    assert "see the Dashboard section of docs/operations.md" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_an_unmigrated_database_is_one_line_that_says_to_migrate(fresh_dsn: str) -> None:
    refused = run_cli("dashboard", "--port", "0", dsn=fresh_dsn, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("werkfluss: the werkfluss schema is missing or out of date")
    assert "migrate" in refused.stderr
    assert refused.stderr.count("\n") == 1
