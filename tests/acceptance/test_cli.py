"""The command line, as an operator uses it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..helpers import ROOT, run_cli, sql_value


def test_start_runs_show_and_cancel(dsn: str) -> None:
    started = run_cli("start", "tests.cli.unserved", '["user-123", {"plan": "pro"}]',
                      "--run-id", "cli-1", dsn=dsn)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "cli-1"

    listed = run_cli("runs", dsn=dsn)
    assert listed.returncode == 0
    assert "cli-1" in listed.stdout
    assert "tests.cli.unserved" in listed.stdout
    assert "pending" in listed.stdout

    as_json = json.loads(run_cli("runs", "--json", "--status", "pending", dsn=dsn).stdout)
    assert [(r["run_id"], r["args"]) for r in as_json] == [("cli-1", ["user-123", {"plan": "pro"}])]

    shown = run_cli("show", "cli-1", dsn=dsn)
    assert shown.returncode == 0
    assert "status:    pending" in shown.stdout
    assert "(no steps recorded)" in shown.stdout

    cancelled = run_cli("cancel", "cli-1", dsn=dsn)
    assert cancelled.returncode == 0
    assert cancelled.stdout.strip() == "cancelled"
    again = run_cli("cancel", "cli-1", dsn=dsn)
    assert again.stdout.strip() == "already finished; nothing to cancel"
    assert sql_value(dsn, "SELECT status FROM werkfluss.runs WHERE id = 'cli-1'") == "cancelled"


def test_cli_errors_are_one_clear_line(dsn: str) -> None:
    bad_json = run_cli("start", "tests.cli.unserved", "[not json", dsn=dsn)
    assert bad_json.returncode == 1
    assert bad_json.stderr.startswith("werkfluss: ARGS must be a JSON array")
    not_array = run_cli("start", "tests.cli.unserved", '{"a": 1}', dsn=dsn)
    assert not_array.returncode == 1
    assert "must be a JSON array" in not_array.stderr
    unknown = run_cli("show", "no-such-run", dsn=dsn)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "werkfluss: no run with id 'no-such-run'; list runs with `python -m werkfluss runs`"
    )
    unreachable = run_cli("runs", dsn="postgresql://bob:hunter2@127.0.0.1:1/shop")
    assert unreachable.returncode == 1
    assert "database=shop" in unreachable.stderr
    assert "hunter2" not in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_worker_refuses_an_app_it_cannot_import(dsn: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "werkfluss.worker", "--app", "no_such_module_here", "--dsn", dsn],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode != 0
    assert "cannot import --app no_such_module_here" in proc.stderr


def test_demo_shows_the_log_and_a_resumed_run(test_dsn: str) -> None:
    demo = run_cli("demo", dsn=test_dsn, timeout=120)
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert "result 'done'" in out
    assert "killed worker process" in out
    assert "fetch_data and save_data ran once" in out
    assert out.count("fetch_data('user-456') executing") == 1
    assert out.count("save_data('user-456') executing") == 1


def test_demo_runs_on_the_embedded_default() -> None:
    import subprocess
    import sys
    import tempfile

    # Not under pytest's tmp_path: as root the server runs as another user, and
    # any pytest starting on this machine makes /tmp/pytest-of-root private again.
    with tempfile.TemporaryDirectory(prefix="werkfluss-embedded-") as tmp:
        tmp_path = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "WERKFLUSS_DATABASE_URL"}
        env.update(WERKFLUSS_EMBEDDED_DIR=str(tmp_path / "pgdata"), PYTHONPATH=str(ROOT),
                   WERKFLUSS_DEMO_STEP_SECONDS="0.1")
        demo = subprocess.run([sys.executable, "-m", "werkfluss", "demo"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert demo.returncode == 0, demo.stderr
        assert f"database: the embedded PostgreSQL in {tmp_path / 'pgdata'}" in demo.stdout
        assert f"'postgresql://postgres@/postgres?host={(tmp_path / 'pgdata').resolve()}'" in demo.stdout
        assert "fetch_data and save_data ran once" in demo.stdout
        _embedded_server_stopped(tmp_path / "pgdata")


def _embedded_server_stopped(pgdata: Path) -> Any:
    # The last process using the embedded server stops it on exit.
    assert not (pgdata / "postmaster.pid").exists()
