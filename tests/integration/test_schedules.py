"""Cron schedules against a real PostgreSQL: defining them from Python and
SQL, firing ticks (exactly once however many schedulers race), catch-up after
missed ticks, overlap, pause/resume/trigger/delete, schedules declared in
code, and bad input at every door."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections import Counter
from typing import Any

import psycopg
import pytest

from werkfluss import (
    Engine,
    InvalidArgument,
    InvalidCron,
    Schedule,
    ScheduleNotFound,
    SerializationError,
    UnknownTimezone,
    hook,
    serializer,
    workflow,
)
from werkfluss.runtime import workflows as registry
from werkfluss.worker.scheduler import Scheduler

from ..helpers import sql, sql_value, wait_until

UTC = dt.UTC


@workflow(name="tests.sched.report")
async def report(scheduled_at: dt.datetime, region: str = "eu", *, dry_run: bool = False) -> str:
    return f"{region}@{scheduled_at.isoformat()}{' (dry run)' if dry_run else ''}"


@workflow(name="tests.sched.gated")
async def gated(scheduled_at: dt.datetime) -> str:
    await hook(token=f"tests.sched.gate:{scheduled_at.isoformat()}").wait()
    return "released"


async def _declared_body(scheduled_at: dt.datetime) -> None:
    return None


declared = workflow(name="tests.sched.declared", schedule="0 3 1 1 *", timezone="Europe/Berlin")(
    _declared_body)


def _runs(dsn: str, name: str) -> list[tuple[str, Any, dt.datetime]]:
    """(run id, scheduled time, created_at) of the runs a schedule started, by id."""
    rows = sql(dsn, "SELECT id, args, created_at FROM werkfluss.runs WHERE id LIKE %s ORDER BY id",
               [f"schedule:{name}:%"])
    return [(row[0], serializer.loads(_text(row[1]))[0], row[2]) for row in rows]


def _text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _row(dsn: str, name: str, columns: str) -> tuple[Any, ...]:
    rows = sql(dsn, f"SELECT {columns} FROM werkfluss.schedules WHERE name = %s", [name])
    assert rows, f"no schedule {name}"
    return rows[0]


def _rewind(dsn: str, name: str, next_tick: dt.datetime) -> None:
    """Put the schedule's next tick in the past, as a time without workers leaves it."""
    sql(dsn, "UPDATE werkfluss.schedules SET next_tick = %s, revision = revision + 1 WHERE name = %s",
        [next_tick, name])


def _scheduler(engine: Engine, *names: str) -> Scheduler:
    return Scheduler(engine.connector, workflows=list(names or [report.name]), poll_interval=1.0)


# --- defining schedules ------------------------------------------------------------------


async def test_engine_schedule_stores_the_definition_and_shows_the_next_tick(
    engine: Engine, dsn: str
) -> None:
    info = await engine.schedule(report, "0 2 * * *", name="nightly-eu", timezone="Europe/Berlin",
                                 args=["eu"], kwargs={"dry_run": True})
    assert (info.name, info.workflow, info.cron, info.timezone) == (
        "nightly-eu", report.name, "0 2 * * *", "Europe/Berlin")
    assert (info.args, info.kwargs, info.catchup, info.overlap, info.origin, info.paused) == (
        ["eu"], {"dry_run": True}, "latest", "skip", "api", False)
    now = sql_value(dsn, "SELECT now()")
    assert info.next_tick == Schedule("0 2 * * *", timezone="Europe/Berlin").next_tick(now)
    assert (info.last_run_id, info.last_run_status, info.error) == (None, None, None)
    assert [s.name for s in await engine.schedules()] == ["nightly-eu"]
    assert [s.name for s in await engine.schedules(workflow=report)] == ["nightly-eu"]
    assert await engine.schedules(workflow="tests.sched.nobody") == []


async def test_a_schedule_object_and_the_default_name(engine: Engine) -> None:
    spec = Schedule("*/5 * * * *", catchup="all", overlap="allow", catchup_limit=3)
    info = await engine.schedule(report, spec)
    assert info.name == report.name
    assert (info.catchup, info.overlap, info.catchup_limit) == ("all", "allow", 3)
    with pytest.raises(InvalidArgument, match="inside the Schedule"):
        await engine.schedule(report, spec, timezone="UTC")


async def test_redefining_keeps_the_pause_and_a_new_cron_counts_from_now(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "0 2 * * *", name="redefined")
    assert await engine.pause_schedule("redefined") is True
    since = _row(dsn, "redefined", "since")[0]
    info = await engine.schedule(report, "0 2 * * *", name="redefined", args=["us"])
    assert info.paused
    assert info.args == ["us"]
    assert _row(dsn, "redefined", "since")[0] == since  # same cron: ticks still count from before
    info = await engine.schedule(report, "0 4 * * *", name="redefined", args=["us"])
    assert info.paused
    assert info.next_tick is None  # paused: no tick is coming
    assert _row(dsn, "redefined", "since")[0] > since
    revision = _row(dsn, "redefined", "revision")[0]
    await engine.schedule(report, "0 4 * * *", name="redefined", args=["us"])  # nothing changes
    assert _row(dsn, "redefined", "revision")[0] == revision


async def test_bad_definitions_are_refused_before_the_database_is_touched() -> None:
    unreachable = Engine("postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(InvalidCron, match="Bad minute"):
        await unreachable.schedule(report, "61 2 * * *")
    with pytest.raises(UnknownTimezone, match="Europe/Berlin"):
        await unreachable.schedule(report, "0 2 * * *", timezone="Europe/Berln")
    with pytest.raises(InvalidArgument, match="contains ':'"):
        await unreachable.schedule(report, "0 2 * * *", name="nightly:eu")
    with pytest.raises(InvalidArgument, match="cannot be called with its scheduled time"):
        await unreachable.schedule(report, "0 2 * * *", args=["eu", "extra", "more"])
    with pytest.raises(InvalidArgument, match="args must be a list"):
        await unreachable.schedule(report, "0 2 * * *", args="eu")  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        await unreachable.schedule(report, "0 2 * * *", args=[object()])
    with pytest.raises(InvalidArgument, match="needs overlap='allow'"):
        await unreachable.schedule(report, "0 2 * * *", catchup="all")
    for call in (unreachable.pause_schedule, unreachable.resume_schedule, unreachable.trigger_schedule,
                 unreachable.delete_schedule, unreachable.get_schedule):
        with pytest.raises(InvalidArgument, match="schedule name"):
            await call("")
    assert unreachable.dsn is not None  # never opened


async def test_unknown_schedule_names_raise_schedule_not_found(engine: Engine) -> None:
    for call in (engine.pause_schedule, engine.resume_schedule, engine.trigger_schedule,
                 engine.delete_schedule, engine.get_schedule):
        with pytest.raises(ScheduleNotFound, match="no schedule named 'ghost'") as caught:
            await call("ghost")
        assert caught.value.name == "ghost"
        assert isinstance(caught.value, LookupError)


# --- firing ------------------------------------------------------------------------------


async def test_a_due_tick_starts_one_run_with_its_scheduled_time(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "0 * * * *", name="hourly", timezone="Asia/Kolkata", args=["in"])
    scheduler = _scheduler(engine)
    assert await scheduler.run_once() is not None  # computes the next tick, starts nothing
    (next_tick,) = _row(dsn, "hourly", "next_tick")
    assert _runs(dsn, "hourly") == []
    previous = next_tick - dt.timedelta(hours=1)
    _rewind(dsn, "hourly", previous)  # that tick has come
    await scheduler.run_once()
    ((run_id, scheduled_at, _),) = _runs(dsn, "hourly")
    assert run_id == f"schedule:hourly:{previous:%Y-%m-%dT%H:%M:%SZ}"
    assert scheduled_at == previous
    assert scheduled_at.utcoffset() == dt.timedelta(hours=5, minutes=30)  # in the schedule's zone
    info = await engine.get_schedule("hourly")
    assert (info.next_tick, info.last_tick, info.last_run_id, info.last_run_status) == (
        next_tick, previous, run_id, "pending")
    async with engine.worker(workflows=[report]):
        assert await engine.handle(run_id).result(timeout=10) == f"in@{scheduled_at.isoformat()}"


async def test_many_schedulers_racing_fire_each_tick_once(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "*/10 * * * *", name="raced", catchup="all", overlap="allow")
    schedulers = [_scheduler(engine) for _ in range(8)]
    await schedulers[0].run_once()
    (next_tick,) = _row(dsn, "raced", "next_tick")
    _rewind(dsn, "raced", next_tick - dt.timedelta(minutes=30))  # three ticks due
    await asyncio.gather(*(s.run_once() for s in schedulers))
    assert sum(s.started for s in schedulers) == 3
    assert [run[1] for run in _runs(dsn, "raced")] == [
        next_tick - dt.timedelta(minutes=m) for m in (30, 20, 10)]


async def test_the_scheduled_time_is_written_in_the_schedules_zone(dsn: str) -> None:
    cases = {
        ("2026-03-29 01:00:00+00", "Europe/Berlin"): "2026-03-29T03:00:00+02:00",
        ("2026-03-29 00:59:59+00", "Europe/Berlin"): "2026-03-29T01:59:59+01:00",
        ("2026-07-01 12:00:00+00", "America/St_Johns"): "2026-07-01T09:30:00-02:30",
        ("2026-01-01 00:00:00+00", "UTC"): "2026-01-01T00:00:00+00:00",
    }
    for (tick, zone), expected in cases.items():
        value = sql_value(dsn, "SELECT werkfluss._scheduled_at(%s::timestamptz, %s)::text", [tick, zone])
        assert serializer.loads(value) == dt.datetime.fromisoformat(expected)
        assert serializer.loads(value).isoformat() == expected


# --- catch-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(("catchup", "overlap", "limit", "started", "skipped"), [
    ("skip", "skip", 10, [], 4),
    ("latest", "skip", 10, [1], 3),
    ("all", "allow", 3, [3, 2, 1], 1),
    ("all", "allow", 10, [4, 3, 2, 1], 0),
])
async def test_ticks_missed_while_no_worker_ran_follow_the_catchup_policy(
    engine: Engine, dsn: str, catchup: str, overlap: str, limit: int, started: list[int], skipped: int
) -> None:
    # A daily schedule whose tick today was two to three hours ago: four days
    # without workers leave four missed ticks, none of them on time.
    hour = sql_value(dsn, "SELECT extract(hour FROM now() AT TIME ZONE 'UTC' - interval '2 hours')::int")
    await engine.schedule(report, f"0 {hour} * * *", name="daily", catchup=catchup,  # type: ignore[arg-type]
                          overlap=overlap, catchup_limit=limit)  # type: ignore[arg-type]
    scheduler = _scheduler(engine)
    await scheduler.run_once()
    (tomorrow,) = _row(dsn, "daily", "next_tick")
    _rewind(dsn, "daily", tomorrow - dt.timedelta(days=4))
    await scheduler.run_once()
    assert [run[1] for run in _runs(dsn, "daily")] == [tomorrow - dt.timedelta(days=d) for d in started]
    assert _row(dsn, "daily", "next_tick, skipped") == (tomorrow, skipped)


async def test_ticks_missed_during_a_real_downtime_are_caught_up(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "* * * * * *", name="every-second", catchup="all", overlap="allow",
                          catchup_limit=3)
    await _serve_until(engine, dsn, "every-second", runs=2)
    last, skipped_before = _row(dsn, "every-second", "last_tick, skipped")
    # Nobody serves the schedule for five seconds (by the database's clock).
    await wait_until(lambda: _db_past(dsn, last + dt.timedelta(seconds=5)), timeout=15,
                     message="five seconds to pass")
    await _serve_until(engine, dsn, "every-second", runs=len(_runs(dsn, "every-second")) + 4)
    runs = _runs(dsn, "every-second")
    ticks = [run[1].astimezone(UTC) for run in runs]
    span = int((ticks[-1] - ticks[0]).total_seconds())
    every = [ticks[0] + dt.timedelta(seconds=s) for s in range(span + 1)]
    missed = sorted(set(every) - set(ticks))
    assert missed, "the downtime left no gap"
    assert missed == every[every.index(missed[0]):every.index(missed[-1]) + 1]  # one gap
    assert missed[0] == last + dt.timedelta(seconds=1)
    assert _row(dsn, "every-second", "skipped")[0] - skipped_before == len(missed)
    # The restart's first pass started the three most recent missed ticks in one go.
    batches = Counter(run[2] for run in runs)
    assert batches[runs[ticks.index(missed[-1] + dt.timedelta(seconds=1))][2]] == 3
    assert len(set(ticks)) == len(ticks)


async def test_latest_runs_only_the_last_tick_after_a_real_downtime(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "* * * * * *", name="every-second-latest", catchup="latest")
    await _serve_until(engine, dsn, "every-second-latest", runs=1)
    last, skipped_before = _row(dsn, "every-second-latest", "last_tick, skipped")
    await wait_until(lambda: _db_past(dsn, last + dt.timedelta(seconds=3)), timeout=15,
                     message="three seconds to pass")
    await _serve_until(engine, dsn, "every-second-latest", runs=len(_runs(dsn, "every-second-latest")) + 2)
    runs = _runs(dsn, "every-second-latest")
    assert max(Counter(run[2] for run in runs).values()) == 1  # never more than one per pass
    ticks = [run[1].astimezone(UTC) for run in runs]
    after = ticks[ticks.index(last) + 1]  # the tick the restart ran: the latest one then
    assert after - last >= dt.timedelta(seconds=3)
    skipped = _row(dsn, "every-second-latest", "skipped")[0] - skipped_before
    assert skipped == (after - last).total_seconds() - 1


async def _db_past(dsn: str, when: dt.datetime) -> bool:
    return bool(sql_value(dsn, "SELECT now() > %s", [when]))


async def _serve_until(engine: Engine, dsn: str, name: str, *, runs: int) -> None:
    async with engine.worker(workflows=[report], poll_interval="0.2s"):
        await wait_until(lambda: _count(dsn, name, runs), timeout=20, interval=0.05,
                         message=f"{runs} runs of {name}")


async def _count(dsn: str, name: str, at_least: int) -> bool:
    return len(_runs(dsn, name)) >= at_least


# --- overlap -----------------------------------------------------------------------------


async def test_overlap_skip_starts_no_run_while_the_previous_one_waits(engine: Engine, dsn: str) -> None:
    await engine.schedule(gated, "* * * * * *", name="gated", overlap="skip")
    async with engine.worker(workflows=[gated], poll_interval="0.2s"):
        await wait_until(lambda: _count(dsn, "gated", 1), timeout=10, message="the first run")
        ((first_id, first_at, _),) = _runs(dsn, "gated")
        await wait_until(lambda: _skipped(dsn, "gated", 2), timeout=10, message="two ticks skipped")
        assert [run[0] for run in _runs(dsn, "gated")] == [first_id]  # still the only run
        assert await engine.handle(first_id).status() == "waiting"
        await engine.send(f"tests.sched.gate:{first_at.isoformat()}", None)
        assert await engine.handle(first_id).result(timeout=10) == "released"
        await wait_until(lambda: _count(dsn, "gated", 2), timeout=10, message="the next run")
        await engine.pause_schedule("gated")
    second_at = _runs(dsn, "gated")[1][1]
    assert second_at - first_at >= dt.timedelta(seconds=3)


async def _skipped(dsn: str, name: str, at_least: int) -> bool:
    return bool(_row(dsn, name, "skipped")[0] >= at_least)


async def test_overlap_allow_starts_a_run_at_every_tick(engine: Engine, dsn: str) -> None:
    await engine.schedule(gated, "* * * * * *", name="gated-allow", overlap="allow")
    async with engine.worker(workflows=[gated], poll_interval="0.2s"):
        await wait_until(lambda: _count(dsn, "gated-allow", 3), timeout=10, message="three runs")
        await engine.pause_schedule("gated-allow")
    assert _row(dsn, "gated-allow", "skipped") == (0,)
    statuses = {await engine.handle(run[0]).status() for run in _runs(dsn, "gated-allow")}
    assert statuses <= {"pending", "running", "waiting"}  # none finished, and yet each tick ran


# --- pause, resume, trigger, delete ------------------------------------------------------


async def test_pause_resume_trigger_delete_from_python(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "0 * * * *", name="steered", args=["de"])
    assert await engine.pause_schedule("steered") is True
    assert await engine.pause_schedule("steered") is False
    scheduler = _scheduler(engine)
    _rewind(dsn, "steered", sql_value(dsn, "SELECT now() - interval '3 hours'"))  # ticks came
    await scheduler.run_once()
    assert _runs(dsn, "steered") == []  # paused: nothing fires
    handle = await engine.trigger_schedule("steered")  # a paused schedule can be triggered
    assert handle.run_id.startswith("schedule:steered:manual:")
    ((run_id, scheduled_at, created),) = _runs(dsn, "steered")
    assert run_id == handle.run_id
    assert abs(scheduled_at - created) < dt.timedelta(seconds=1)
    info = await engine.get_schedule("steered")
    assert (info.paused, info.next_tick, info.last_run_id) == (True, None, run_id)
    assert await engine.resume_schedule("steered") is True
    assert await engine.resume_schedule("steered") is False
    resumed = await engine.get_schedule("steered")
    assert resumed.next_tick is not None
    assert resumed.since >= created
    await scheduler.run_once()  # the ticks that fell into the pause do not run
    assert len(_runs(dsn, "steered")) == 1
    await engine.delete_schedule("steered")
    with pytest.raises(ScheduleNotFound):
        await engine.get_schedule("steered")
    assert len(_runs(dsn, "steered")) == 1  # its runs are kept


def test_pause_resume_trigger_delete_from_sql(dsn: str) -> None:
    assert sql_value(dsn, "SELECT werkfluss.create_schedule('from-sql', 'tests.sched.report', "
                          "'0  2 * * *', 'Europe/Berlin', '[\"fr\"]')") == "from-sql"
    assert _row(dsn, "from-sql", "cron, timezone, args, origin, next_tick") == (
        "0 2 * * *", "Europe/Berlin", ["fr"], "api", None)
    assert sql_value(dsn, "SELECT werkfluss.pause_schedule('from-sql')") is True
    assert sql_value(dsn, "SELECT werkfluss.pause_schedule('from-sql')") is False
    run_id = sql_value(dsn, "SELECT werkfluss.trigger_schedule('from-sql')")
    assert run_id.startswith("schedule:from-sql:manual:")
    args = sql_value(dsn, "SELECT args::text FROM werkfluss.runs WHERE id = %s", [run_id])
    assert serializer.loads(args)[1:] == ["fr"]
    assert sql_value(dsn, "SELECT werkfluss.resume_schedule('from-sql')") is True
    assert sql_value(dsn, "SELECT werkfluss.resume_schedule('from-sql')") is False
    assert sql_value(dsn, "SELECT werkfluss.delete_schedule('from-sql')") is True
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.schedules") == 0
    for function in ("pause_schedule", "resume_schedule", "trigger_schedule", "delete_schedule"):
        with pytest.raises(psycopg.errors.NoDataFound,
                           match=f"werkfluss.{function}: no schedule named 'ghost'"):
            sql(dsn, f"SELECT werkfluss.{function}('ghost')")


async def test_a_schedule_created_from_sql_fires_once_a_worker_computes_its_ticks(
    engine: Engine, dsn: str
) -> None:
    sql(dsn, "SELECT werkfluss.create_schedule('sql-every-second', 'tests.sched.report', '* * * * * *')")
    info = await engine.get_schedule("sql-every-second")
    assert info.next_tick is not None  # shown even before a worker computed it
    async with engine.worker(workflows=[report], poll_interval="0.2s"):
        await wait_until(lambda: _count(dsn, "sql-every-second", 2), timeout=10, message="two runs")
        await engine.pause_schedule("sql-every-second")


# --- SQL input checks --------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    ("NULL, 'w', '0 2 * * *'", "the schedule name is NULL"),
    ("' ', 'w', '0 2 * * *'", "the schedule name is empty"),
    ("'a:b', 'w', '0 2 * * *'", "the schedule name 'a:b' contains ':'"),
    ("'a b', 'w', '0 2 * * *'", "the schedule name 'a b' contains whitespace"),
    ("repeat('n', 201), 'w', '0 2 * * *'", "is 201 characters long; the limit is 200"),
    ("'n', NULL, '0 2 * * *'", "the workflow name is NULL"),
    ("'n', repeat('w', 256), '0 2 * * *'", "the workflow name is 256 characters long"),
    ("'n', 'w', '0 2 * *'", "'0 2 * *' is not a cron expression"),
    ("'n', 'w', '0 2 * * ?'", "is not a cron expression"),
    ("'n', 'w', NULL", "NULL is not a cron expression"),
    ("'n', 'w', '0 2 * * *', 'Mars/Olympus'", "unknown time zone 'Mars/Olympus'"),
    ("'n', 'w', '0 2 * * *', NULL", "unknown time zone NULL"),
    ("'n', 'w', '0 2 * * *', 'UTC', '{}'", "args must be a JSON array, got object"),
    ("'n', 'w', '0 2 * * *', 'UTC', '[]', '[]'", "kwargs must be a JSON object, got array"),
    ("'n', 'w', '0 2 * * *', catchup => 'never'", "catchup must be 'skip', 'latest' or 'all'"),
    ("'n', 'w', '0 2 * * *', overlap => NULL", "overlap must be 'skip' or 'allow', got NULL"),
    ("'n', 'w', '0 2 * * *', catchup => 'all', overlap => 'allow', catchup_limit => 0",
     "catchup_limit must be from 1 to 1000"),
    ("'n', 'w', '0 2 * * *', catchup => 'all'", "catchup 'all' needs overlap 'allow'"),
])
def test_create_schedule_checks_its_input(dsn: str, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape(message)):
        sql(dsn, f"SELECT werkfluss.create_schedule({call})")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.schedules") == 0


def test_schedule_names_have_the_same_limits_in_python_and_sql(dsn: str) -> None:
    from werkfluss.limits import MAX_SCHEDULE_NAME_LENGTH, check_schedule_name

    longest = "n" * MAX_SCHEDULE_NAME_LENGTH
    for name in (longest, "reports.nightly-eu", "ünïcode/ok"):
        assert check_schedule_name(name) == name
        sql(dsn, "SELECT werkfluss.create_schedule(%s, 'w', '0 2 * * *')", [name])
    for name in (longest + "n", "a:b", "tab\there", "new\nline", "", " "):
        with pytest.raises(InvalidArgument):
            check_schedule_name(name)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            sql(dsn, "SELECT werkfluss.create_schedule(%s, 'w', '0 2 * * *')", [name])
    # The longest run id a schedule makes fits the run id limit.
    run_id = sql_value(dsn, "SELECT werkfluss.trigger_schedule(%s)", [longest])
    assert len(run_id) <= 255


async def test_a_cron_expression_the_parser_refuses_breaks_the_schedule_visibly(
    engine: Engine, dsn: str
) -> None:
    sql(dsn, "SELECT werkfluss.create_schedule('broken', 'tests.sched.report', '61 2 * * *')")
    await _scheduler(engine).run_once()
    info = await engine.get_schedule("broken")
    assert info.error is not None
    assert "Bad minute" in info.error
    assert info.next_tick is None
    await _scheduler(engine).run_once()  # a broken schedule is not looked at again
    assert _runs(dsn, "broken") == []
    # Redefining it mends it.
    sql(dsn, "SELECT werkfluss.create_schedule('broken', 'tests.sched.report', '1 2 * * *')")
    await _scheduler(engine).run_once()
    assert (await engine.get_schedule("broken")).error is None
    assert _row(dsn, "broken", "next_tick")[0] is not None


async def test_a_tick_whose_run_id_another_workflow_took_is_skipped(engine: Engine, dsn: str) -> None:
    await engine.schedule(report, "0 * * * *", name="squatted")
    scheduler = _scheduler(engine)
    await scheduler.run_once()
    (next_tick,) = _row(dsn, "squatted", "next_tick")
    previous = next_tick - dt.timedelta(hours=1)
    await engine.start("tests.sched.other", run_id=f"schedule:squatted:{previous:%Y-%m-%dT%H:%M:%SZ}")
    _rewind(dsn, "squatted", previous)
    await scheduler.run_once()
    assert _row(dsn, "squatted", "next_tick, skipped, last_run_id") == (next_tick, 1, None)


# --- schedules declared in code ----------------------------------------------------------


async def test_a_worker_stores_the_schedules_its_workflows_declare(engine: Engine, dsn: str) -> None:
    async with engine.worker(workflows=[declared]):
        pass
    info = await engine.get_schedule(declared.name)
    assert (info.workflow, info.cron, info.timezone, info.origin, info.paused) == (
        declared.name, "0 3 1 1 *", "Europe/Berlin", "code", False)
    assert info.next_tick is not None
    assert info.next_tick.astimezone(UTC).strftime("%m-%d %H:%M") == "01-01 02:00"  # 03:00 CET


async def test_pause_survives_redeclaration_and_a_changed_definition(engine: Engine, dsn: str) -> None:
    async with engine.worker(workflows=[declared]):
        pass
    await engine.pause_schedule(declared.name)
    revision = _row(dsn, declared.name, "revision")[0]
    async with engine.worker(workflows=[declared]):
        pass
    assert _row(dsn, declared.name, "paused, revision") == (True, revision)  # unchanged
    changed = workflow(name=declared.name, schedule="30 4 * * *")(_declared_body)
    try:
        async with engine.worker(workflows=[changed]):
            pass
        assert _row(dsn, declared.name, "cron, timezone, paused") == ("30 4 * * *", "UTC", True)
        unscheduled = workflow(name=declared.name)(_declared_body)
        await engine.schedule(unscheduled, "0 5 * * *", name="kept-api-schedule")
        async with engine.worker(workflows=[unscheduled]):
            pass
        # Declared in code no more: gone; one made with engine.schedule() stays.
        assert [s.name for s in await engine.schedules(workflow=declared.name)] == ["kept-api-schedule"]
    finally:
        registry.register(declared)


def test_the_decorator_refuses_a_workflow_that_cannot_take_its_scheduled_time() -> None:
    with pytest.raises(InvalidArgument, match="must take its scheduled time"):
        @workflow(name="tests.sched.no_args", schedule="0 2 * * *")
        async def no_args() -> None: ...
    with pytest.raises(InvalidArgument, match="given without schedule="):
        @workflow(name="tests.sched.tz_only", timezone="Europe/Berlin")
        async def tz_only(at: dt.datetime) -> None: ...
    with pytest.raises(InvalidArgument, match="is named after it"):
        @workflow(name="tests:sched:colons", schedule="0 2 * * *")
        async def colons(at: dt.datetime) -> None: ...
    with pytest.raises(InvalidCron):
        @workflow(name="tests.sched.bad_cron", schedule="0 2 * *")
        async def bad_cron(at: dt.datetime) -> None: ...
    assert "tests.sched.no_args" not in registry.registered()


# --- log events --------------------------------------------------------------------------


async def test_schedule_log_events(engine: Engine, dsn: str) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        # By name: the workflow need not be registered in this process.
        await engine.schedule("tests.sched.elsewhere", "0 * * * *", name="logged", timezone="UTC")
        scheduler = Scheduler(engine.connector, workflows=["tests.sched.elsewhere"], poll_interval=1.0,
                              worker_id="w-1")
        await scheduler.run_once()
        (next_tick,) = _row(dsn, "logged", "next_tick")
        _rewind(dsn, "logged", next_tick - dt.timedelta(hours=3))
        await scheduler.run_once()
        await engine.pause_schedule("logged")
        await engine.resume_schedule("logged")
        run = await engine.trigger_schedule("logged")
        await engine.delete_schedule("logged")
        sql(dsn, "SELECT werkfluss.create_schedule('cracked', 'tests.sched.elsewhere', '0 2 30 2 *')")
        await scheduler.run_once()
    latest = f"schedule:logged:{next_tick - dt.timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}"
    expected = [
        {"event": "schedule.created", "schedule": "logged", "workflow": "tests.sched.elsewhere",
         "cron": "0 * * * *", "timezone": "UTC", "log_level": "info"},
        {"event": "schedule.fired", "schedule": "logged", "workflow": "tests.sched.elsewhere",
         "run_ids": [latest], "skipped": 2, "next_tick": next_tick.isoformat(), "worker_id": "w-1",
         "log_level": "info"},
        {"event": "schedule.paused", "schedule": "logged", "log_level": "info"},
        {"event": "schedule.resumed", "schedule": "logged", "log_level": "info"},
        {"event": "schedule.triggered", "schedule": "logged", "run_id": run.run_id, "log_level": "info"},
        {"event": "schedule.deleted", "schedule": "logged", "log_level": "info"},
    ]
    events = [e for e in logs if e["event"].startswith("schedule.")]
    assert [e for e in events if e["event"] != "schedule.broken"] == expected
    (broken,) = [e for e in logs if e["event"] == "schedule.broken"]
    assert broken["schedule"] == "cracked"
    assert "Bad day-of-month" in broken["error"]
    assert broken["log_level"] == "error"
