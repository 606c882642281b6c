"""Schedules as an operator sees them: worker processes, one of them killed
at a tick, and the ``schedules`` command."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

from werkfluss import Engine, serializer

from ..helpers import WorkerProcess, run_cli, sql, sql_value, wait_until

APP = "tests.acceptance.apps.sched_app"
NAME = "tests.sched_app.every_second"


async def _tick_comes(dsn: str) -> None:
    """Return when the schedule's next tick has just come (by the database's clock)."""
    (tick,) = sql(dsn, "SELECT next_tick FROM werkfluss.schedules WHERE name = %s", [NAME])[0]

    async def come() -> bool:
        return bool(sql_value(dsn, "SELECT now() >= %s + interval '2 milliseconds'", [tick]))

    await wait_until(come, timeout=10, interval=0.002, message="the next tick")


def _last_firer(dsn: str, workers: list[WorkerProcess]) -> WorkerProcess:
    """The live worker that fired the most recent tick: the likeliest to be firing the next one."""
    latest = sql_value(dsn, "SELECT max(id) FROM werkfluss.runs")
    for worker in workers:
        if worker.proc.poll() is None and latest in _fired(worker.output()):
            return worker
    return next(w for w in workers if w.proc.poll() is None)


async def test_four_workers_and_a_kill_at_the_tick_start_one_run_per_tick(dsn: str, tmp_path: Path) -> None:
    workers = [WorkerProcess(dsn, APP, "--lease", "2s", "--poll", "0.5s", log_dir=tmp_path, name=f"w{i}")
               for i in range(4)]
    try:
        for worker in workers:
            await worker.wait_for_output("worker.started")
        await wait_until(lambda: _runs_at_least(dsn, 2), timeout=15, message="the first ticks")
        for _ in range(2):  # SIGKILL at two ticks, one after the other
            victim = _last_firer(dsn, workers)
            await _tick_comes(dsn)
            victim.kill()
        first_after = len(sql(dsn, "SELECT 1 FROM werkfluss.runs"))
        await wait_until(lambda: _runs_at_least(dsn, first_after + 3), timeout=15, message="three more ticks")
        async with Engine(dsn) as engine:
            await engine.pause_schedule(NAME)
            # Runs the killed workers held are taken over once their lease is up.
            await wait_until(lambda: _all_completed(dsn), timeout=30, message="every run completed")
            info = await engine.get_schedule(NAME)
        for worker in workers:
            worker.terminate()
        outputs = [worker.output() for worker in workers]
    finally:
        for worker in workers:
            worker.close()

    rows = sql(dsn, "SELECT id, args::text, result::text FROM werkfluss.runs ORDER BY id")
    ticks = [serializer.loads(args)[0] for _, args, _ in rows]
    assert len(set(ticks)) == len(ticks)  # one run per tick
    seconds = int((ticks[-1] - ticks[0]).total_seconds())
    assert ticks == [ticks[0] + dt.timedelta(seconds=s) for s in range(seconds + 1)]  # and no tick without
    for (run_id, _, result), tick in zip(rows, ticks, strict=True):
        assert run_id == f"schedule:{NAME}:{tick.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
        assert json.loads(result) == tick.isoformat()
    assert (info.skipped, info.last_run_id) == (0, rows[-1][0])
    # No tick was fired by two workers.
    fired = Counter(run_id for output in outputs for run_id in _fired(output))
    assert fired
    assert max(fired.values()) == 1


def _fired(output: str) -> list[str]:
    found = []
    for line in output.splitlines():
        if '"schedule.fired"' in line:
            found += json.loads(line)["run_ids"]
    return found


async def _runs_at_least(dsn: str, count: int) -> bool:
    return bool(sql_value(dsn, "SELECT count(*) >= %s FROM werkfluss.runs", [count]))


async def _all_completed(dsn: str) -> bool:
    return bool(sql_value(dsn, "SELECT bool_and(status = 'completed') FROM werkfluss.runs"))


def test_the_schedules_command_lists_pauses_resumes_triggers_and_deletes(dsn: str) -> None:
    sql(dsn, "SELECT werkfluss.create_schedule('nightly-report', 'app.reports.nightly', '0 2 * * *',"
             " 'Europe/Berlin')")
    sql(dsn, "SELECT werkfluss.create_schedule('hourly', 'app.reports.hourly', '0 * * * *')")
    listed = run_cli("schedules", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["name", "workflow", "cron", "time", "zone", "next", "tick", "last", "run",
                                "status", "state"]
    nightly = next(line for line in lines if "nightly-report" in line)
    assert "0 2 * * *" in nightly
    assert "Europe/Berlin" in nightly
    assert " 02:00:00 CE" in nightly  # the next tick in the schedule's zone (CET or CEST)
    assert nightly.rstrip().endswith("active")

    assert run_cli("schedules", "pause", "nightly-report", dsn=dsn).stdout.strip() == "paused"
    assert run_cli("schedules", "pause", "nightly-report", dsn=dsn).stdout.strip() == "already paused"
    as_json = json.loads(run_cli("schedules", "--json", "--workflow", "app.reports.nightly", dsn=dsn).stdout)
    assert [(s["name"], s["paused"], s["next_tick"]) for s in as_json] == [("nightly-report", True, None)]

    triggered = run_cli("schedules", "trigger", "nightly-report", dsn=dsn)
    assert triggered.returncode == 0, triggered.stderr
    run_id = triggered.stdout.strip()
    assert run_id.startswith("schedule:nightly-report:manual:")
    listed = run_cli("schedules", dsn=dsn).stdout.splitlines()
    nightly = next(line for line in listed if "nightly-report" in line)
    assert run_id in nightly
    assert "pending" in nightly
    assert nightly.rstrip().endswith("paused")

    assert run_cli("schedules", "resume", "nightly-report", dsn=dsn).stdout.strip() == "resumed"
    assert (run_cli("schedules", "resume", "nightly-report", dsn=dsn).stdout.strip()
            == "not paused; nothing to resume")
    assert run_cli("schedules", "delete", "hourly", dsn=dsn).stdout.strip() == "deleted"
    assert [s["name"] for s in json.loads(run_cli("schedules", "list", "--json", dsn=dsn).stdout)] == [
        "nightly-report"]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs WHERE id = %s", [run_id]) == 1


def test_the_schedules_command_reports_bad_input_in_one_line(dsn: str) -> None:
    unknown = run_cli("schedules", "pause", "ghost", dsn=dsn)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "werkfluss: no schedule named 'ghost'; list schedules with `python -m werkfluss schedules`")
    missing = run_cli("schedules", "trigger", dsn=dsn)
    assert missing.returncode == 1
    assert missing.stderr.startswith("werkfluss: schedules trigger needs the schedule's NAME")
    bad_name = run_cli("schedules", "delete", "a:b", dsn="postgresql://nobody@127.0.0.1:1/nothing")
    assert bad_name.returncode == 1  # refused before connecting
    assert "contains ':'" in bad_name.stderr
    unknown_action = run_cli("schedules", "explode", "x", dsn=dsn)
    assert unknown_action.returncode == 2
    assert "invalid choice: 'explode'" in unknown_action.stderr
    assert run_cli("schedules", dsn=dsn).stdout.strip() == "no schedules"
