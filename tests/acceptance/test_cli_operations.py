"""Operating werkfluss from the command line: retry, workers, prune, dsn, and
the notes and errors an operator meets."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from werkfluss import Engine, RunFailed, step, workflow

from ..helpers import ROOT, WorkerProcess, run_cli, sql, sql_value, wait_until

BROKEN = {"flaky": True}
GATE: dict[str, asyncio.Event] = {}
UNSERVED = "tests.cli.unserved"


@step(name="tests.cliops.ok")
async def ok(tag: str) -> str:
    return tag


@step(name="tests.cliops.flaky")
async def flaky(tag: str) -> str:
    if BROKEN["flaky"]:
        raise ConnectionError("the partner API is down")
    return tag


@step(name="tests.cliops.gated")
async def gated(tag: str) -> str:
    await GATE[tag].wait()
    return tag


@workflow(name="tests.cliops.two")
async def two() -> list[str]:
    return [await ok("first"), await flaky("second")]


@workflow(name="tests.cliops.held")
async def held(tag: str) -> str:
    return await gated(tag)


@pytest.fixture(autouse=True)
def _reset() -> None:
    BROKEN["flaky"] = True
    GATE.clear()


async def cli(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, while this test's in-process worker keeps running."""
    return await asyncio.to_thread(run_cli, *args, dsn=dsn)


def console_script() -> str:
    return str(Path(sys.executable).parent / "werkfluss")


# --- names and help ----------------------------------------------------------------------------


def test_the_usage_line_says_how_werkfluss_was_called() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = subprocess.run([console_script(), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert script.returncode == 0, script.stderr
    assert script.stdout.startswith("usage: werkfluss [-h] COMMAND ...")
    module = run_cli("--help")
    assert module.stdout.startswith("usage: python -m werkfluss [-h] COMMAND ...")
    for command in ("retry", "workers", "prune", "dsn", "worker"):
        assert f"\n    {command} " in module.stdout
    worker = run_cli("worker", "--help")
    assert worker.returncode == 0
    assert worker.stdout.startswith("usage: python -m werkfluss worker [-h] --app MODULE")
    assert "--retention DURATION|off" in worker.stdout


# --- retry -------------------------------------------------------------------------------------


async def test_retry_resumes_a_failed_run_keeping_its_completed_steps(engine: Engine, dsn: str) -> None:
    handle = await engine.start(two)
    async with engine.worker(workflows=[two]):
        with pytest.raises(RunFailed):
            await handle.result(timeout=10)
        BROKEN["flaky"] = False
        retried = await cli("retry", handle.run_id, dsn=dsn)
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.splitlines()[0] == (
            f"retried: run {handle.run_id} is pending and resumes from where it failed")
        assert await handle.result(timeout=10) == ["first", "second"]
    steps = await handle.steps()
    assert [(s.name, s.status, s.attempts) for s in steps] == [
        ("tests.cliops.ok", "completed", 1), ("tests.cliops.flaky", "completed", 1)]
    again = await cli("retry", handle.run_id, dsn=dsn)
    assert again.returncode == 0
    assert again.stdout.strip() == (
        f"nothing to retry: run {handle.run_id} is completed; only failed or cancelled runs are retried")
    unknown = await cli("retry", "no-such-run", dsn=dsn)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("werkfluss: no run with id 'no-such-run'")


# --- workers -----------------------------------------------------------------------------------


async def test_workers_lists_live_and_stopped_workers(engine: Engine, dsn: str) -> None:
    async with engine.worker(workflows=[two, held]) as worker:
        listed = await cli("workers", dsn=dsn)
        assert listed.returncode == 0, listed.stderr
        header, _, row = listed.stdout.splitlines()[:3]
        assert header.split() == ["host", "pid", "version", "state", "workflows", "runs", "held",
                                  "last", "heartbeat", "worker", "id"]
        assert row.split()[:4] == [socket.gethostname(), str(os.getpid()), "0.2.0", "running"]
        assert "tests.cliops.held, tests.cliops.two" in row
        assert row.rstrip().endswith(worker.worker_id)
        assert "1 live; 0 stopped, dead or silent within 1h" in listed.stdout
    as_json = json.loads((await cli("workers", "--json", dsn=dsn)).stdout)
    assert [(w["id"], w["state"], w["alive"], w["workflows"]) for w in as_json] == [
        (worker.worker_id, "stopped", False, ["tests.cliops.held", "tests.cliops.two"])]
    assert (await cli("workers", "--recent", "0", dsn=dsn)).stdout.strip() == (
        "no workers (none live, none stopped within 0)")


# --- what a pending or running run waits for ---------------------------------------------------


async def test_runs_and_show_point_out_pending_runs_no_live_worker_serves(engine: Engine, dsn: str) -> None:
    await engine.start(UNSERVED, run_id="typo-1")
    nobody = await cli("runs", dsn=dsn)
    assert nobody.returncode == 0
    assert (f"pending runs wait: no live worker is running, so nothing serves {UNSERVED}: start one "
            "with `python -m werkfluss worker --app MODULE`") in nobody.stdout
    served = await engine.start(two)
    BROKEN["flaky"] = False
    async with engine.worker(workflows=[two]):
        await served.result(timeout=10)
        listed = await cli("runs", dsn=dsn)
        assert f"pending runs wait: no live worker serves {UNSERVED}: a worker that serves" in listed.stdout
        notes = {r["run_id"]: r["note"] for r in json.loads((await cli("runs", "--json", dsn=dsn)).stdout)}
        assert notes[served.run_id] is None
        assert notes["typo-1"].startswith(f"no live worker serves {UNSERVED}")
        shown = await cli("show", "typo-1", dsn=dsn)
        assert f"  note:      no live worker serves {UNSERVED}" in shown.stdout
    shown = await cli("show", served.run_id, dsn=dsn)
    assert "note:" not in shown.stdout  # completed: nothing to point out


async def test_show_tells_who_holds_a_running_run_and_when_its_lease_ends(engine: Engine, dsn: str) -> None:
    GATE["held"] = asyncio.Event()
    handle = await engine.start(held, "held")
    # A long lease: this worker beats (and reaps) once at start, then not for 20 minutes.
    async with engine.worker(workflows=[held], lease="1h", shutdown_grace=0) as worker:
        await wait_until(lambda: _running(handle), message="the run held")
        shown = await cli("show", handle.run_id, dsn=dsn)
        assert shown.returncode == 0, shown.stderr
        assert (f"  held by:   {socket.gethostname()}:{os.getpid()} (worker {worker.worker_id})"
                in shown.stdout)
        assert "  lease:     until " in shown.stdout
        assert "from now), renewed by each heartbeat; if the worker dies, another takes the run over" in (
            shown.stdout)
        lease = json.loads((await cli("show", handle.run_id, "--json", dsn=dsn)).stdout)["lease"]
        assert (lease["worker_id"], lease["pid"]) == (worker.worker_id, os.getpid())
        assert 3500 < lease["seconds_left"] <= 3600

        # As if the worker had been killed two hours ago: its heartbeat stopped.
        sql(dsn, "UPDATE werkfluss.workers SET heartbeat_at = now() - interval '2 hours'")
        shown = await cli("show", handle.run_id, dsn=dsn)
        assert "  lease:     expired 1h 00m ago" in shown.stdout
        assert "the worker stopped beating; the next live worker's reaper frees the run" in shown.stdout
        assert f"  note:      no live worker is running, so nothing serves {held.name}" in shown.stdout
        GATE["held"].set()


async def _running(handle: object) -> bool:
    return await handle.status() == "running"  # type: ignore[attr-defined, no-any-return]


def test_start_wait_says_when_no_live_worker_serves_the_workflow(dsn: str) -> None:
    timed_out = run_cli("start", UNSERVED, "--wait", "--wait-timeout", "500ms", dsn=dsn)
    assert timed_out.returncode == 1
    run_id = timed_out.stdout.strip()
    assert timed_out.stderr.strip() == (
        f"werkfluss: run {run_id} did not finish within 500ms (status: pending); no live worker is "
        f"running, so nothing serves {UNSERVED}: start one with `python -m werkfluss worker --app MODULE`")


async def test_start_wait_without_a_timeout_says_it_once_and_keeps_waiting(dsn: str) -> None:
    proc = subprocess.Popen(  # noqa: ASYNC220 (read from a thread below)
        [sys.executable, "-m", "werkfluss", "start", UNSERVED, "--wait", "--dsn", dsn],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)
        assert f"is pending: no live worker is running, so nothing serves {UNSERVED}" in line
        assert line.rstrip().endswith("still waiting (Ctrl-C stops waiting; the run stays)")
        assert proc.poll() is None  # still waiting
    finally:
        proc.kill()
        proc.communicate(timeout=30)


# --- prune -------------------------------------------------------------------------------------


async def test_prune_dry_run_counts_and_prune_deletes_old_finished_runs(engine: Engine, dsn: str) -> None:
    BROKEN["flaky"] = False
    handles = [await engine.start(two) for _ in range(3)]
    recent = await engine.start(two)
    async with engine.worker(workflows=[two], retention=None):
        await asyncio.gather(*(h.result(timeout=10) for h in [*handles, recent]))
    sql(dsn, "UPDATE werkfluss.runs SET finished_at = now() - interval '20 days' WHERE id = ANY(%s)",
        [[h.run_id for h in handles]])
    dry = await cli("prune", "--dry-run", dsn=dsn)
    assert dry.stdout.strip() == ("would delete 3 finished runs older than 14d, with their log, hooks and "
                                  "payloads (dry run: nothing deleted)")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 4
    assert (await cli("prune", "--older-than", "30d", dsn=dsn)).stdout.strip() == (
        "nothing to prune: no finished run is older than 30d")
    pruned = await cli("prune", "--batch-size", "2", dsn=dsn)
    assert pruned.stdout.strip() == (
        "deleted 3 finished runs older than 14d, with their log, hooks and payloads")
    assert sql_value(dsn, "SELECT array_agg(id) FROM werkfluss.runs") == [recent.run_id]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events WHERE run_id <> %s", [recent.run_id]) == 0
    bad = await cli("prune", "--batch-size", "0", dsn=dsn)
    assert bad.stderr.strip() == "werkfluss: --batch-size must be from 1 to 10000, got 0"


async def test_a_worker_process_prunes_on_its_retention_setting(dsn: str, tmp_path: Path) -> None:
    sql(dsn, "INSERT INTO werkfluss.runs (id, workflow, status, finished_at) VALUES"
             " ('old-done', 'tests.effects.one_step', 'completed', now() - interval '2 hours'),"
             " ('new-done', 'tests.effects.one_step', 'completed', now())")
    worker = WorkerProcess(dsn, "tests.acceptance.apps.effects_app", "--retention", "1h",
                           "--prune-interval", "50ms", log_dir=tmp_path)
    try:
        await worker.wait_for_output('"event": "worker.pruned"')
        assert '"runs": 1' in worker.output()
        assert '"retention_s": 3600.0' in worker.output()
        assert sql_value(dsn, "SELECT array_agg(id) FROM werkfluss.runs") == ["new-done"]
    finally:
        worker.close()
    off = WorkerProcess(dsn, "tests.acceptance.apps.effects_app", "--retention", "off", log_dir=tmp_path)
    try:
        await off.wait_for_output('"event": "worker.started"')
        assert '"retention_s": null' in off.output()
    finally:
        off.close()


# --- dsn ---------------------------------------------------------------------------------------


def test_dsn_prints_the_connection_string_without_its_password() -> None:
    url = "postgresql://app:hunter2-Secret@db.example.com:5432/shop"
    shown = run_cli("dsn", dsn=url)
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[:3] == [
        "postgresql://app:***@db.example.com:5432/shop",
        "  from:    --dsn",
        "  server:  host=db.example.com port=5432 database=shop user=app",
    ]
    assert "psql 'user=app dbname=shop host=db.example.com port=5432'   (asks for the password" in (
        shown.stdout)
    assert "hunter2" not in shown.stdout + shown.stderr
    assert run_cli("dsn", "--show-password", "-q", dsn=url).stdout == url + "\n"
    env_dsn = subprocess.run(
        [sys.executable, "-m", "werkfluss", "dsn"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT), WERKFLUSS_DATABASE_URL=url),
    )
    assert env_dsn.stdout.splitlines()[:2] == ["postgresql://app:***@db.example.com:5432/shop",
                                               "  from:    $WERKFLUSS_DATABASE_URL"]


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A directory for an embedded server's data, outside pytest's own temporary
    directory: as root, the server runs as another user, and every pytest that
    starts on this machine makes /tmp/pytest-of-root private again."""
    with tempfile.TemporaryDirectory(prefix="werkfluss-embedded-") as tmp:
        yield Path(tmp)


async def test_dsn_tells_where_the_embedded_default_is_and_psql_reaches_it(embedded_dir: Path) -> None:
    pgdata = embedded_dir / "pgdata"
    env = {k: v for k, v in os.environ.items() if k != "WERKFLUSS_DATABASE_URL"}
    env.update(WERKFLUSS_EMBEDDED_DIR=str(pgdata), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "werkfluss", "dsn", "--hold"],  # noqa: ASYNC220
                            cwd=embedded_dir, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("holding the embedded PostgreSQL" in line for line in lines):
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line.rstrip("\n"))
        assert lines[0] == f"postgresql://postgres@/postgres?host={pgdata.resolve()}"
        data = f"  data:    {pgdata.resolve()} (set $WERKFLUSS_EMBEDDED_DIR to use another directory)"
        assert data in lines
        psql = next(line for line in lines if line.startswith("  psql:")).removeprefix("  psql:")
        answer = await asyncio.to_thread(subprocess.run, [*shlex.split(psql), "-Atc", "SELECT 40 + 2"],
                                         capture_output=True, text=True, timeout=60)
        assert answer.stdout.strip() == "42", answer.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert not (pgdata / "postmaster.pid").exists()  # the last user stopped it


# --- one-line errors that fit the case ---------------------------------------------------------


def test_a_malformed_dsn_is_not_reported_as_an_unreachable_server() -> None:
    done = run_cli("runs", dsn="postgresql://bob:hunter2@127.0.0.1:abc/shop")
    assert done.returncode == 1
    assert done.stderr.startswith("werkfluss: the connection string is malformed: invalid integer value")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "server is running" not in done.stderr
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("app", "suggestion"),
    [("crashapp.py", "--app crashapp "), ("tests/acceptance/apps/effects_app.py",
                                           "--app tests.acceptance.apps.effects_app ")],
)
def test_a_worker_given_a_file_path_suggests_the_module_name(dsn: str, app: str, suggestion: str) -> None:
    done = run_cli("worker", "--app", app, dsn=dsn)
    assert done.returncode == 1
    assert done.stderr.startswith(f"werkfluss worker: --app {app} is a file path; --app takes the module's "
                                  "import name: ")
    assert suggestion in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_console_script_worker_imports_apps_from_the_current_directory(
    dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "empty_app.py").write_text("VALUE = 1\n")
    (tmp_path / "crashapp.py").write_text("1 / 0\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def worker(app: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([console_script(), "worker", "--app", app, "--dsn", dsn], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)

    empty = worker("empty_app")
    assert empty.returncode == 1
    assert empty.stderr.strip() == "werkfluss worker: empty_app defined no @workflow; nothing to serve"
    crash = worker("crashapp")
    assert crash.returncode == 1
    assert "Traceback" in crash.stderr  # the module's own traceback first
    assert crash.stderr.strip().splitlines()[-1] == (
        "werkfluss worker: importing --app crashapp failed: ZeroDivisionError: division by zero "
        "(traceback above)")


def test_an_unmigrated_database_points_at_migrate_and_the_workers_migrate_flag(
    fresh_dsn: str, tmp_path: Path
) -> None:
    done = run_cli("workers", dsn=fresh_dsn)
    assert done.returncode == 1
    assert "python -m werkfluss migrate --dsn URL" in done.stderr
    assert "starting a worker with `--migrate`" in done.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "werkfluss.worker", "--app", "tests.acceptance.apps.effects_app",
         "--dsn", fresh_dsn], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert worker.returncode == 1
    assert "werkfluss worker: the werkfluss schema is missing" in worker.stderr
    assert "starting a worker with `--migrate`" in worker.stderr
