"""Tick computation: cron expressions in a time zone, daylight saving time,
catch-up after missed ticks, and the errors for bad definitions.

Europe/Berlin in 2026: clocks go forward on Sunday 29 March at 02:00 CET
(01:00 UTC) to 03:00 CEST, and back on Sunday 25 October at 03:00 CEST
(01:00 UTC) to 02:00 CET.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest

from werkfluss import InvalidArgument, InvalidCron, Schedule, UnknownTimezone
from werkfluss.cron import ON_TIME, check_cron, check_timezone

UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def berlin(cron: str) -> Schedule:
    return Schedule(cron, timezone="Europe/Berlin")


def _iso(ticks: list[dt.datetime]) -> list[str]:
    return [t.strftime("%m-%dT%H:%M:%S") for t in ticks]


# --- plain ticks ---------------------------------------------------------------------------


def test_ticks_are_instants_in_utc_strictly_after_the_start() -> None:
    s = Schedule("0 2 * * *")
    assert s.next_tick(utc(2026, 1, 1, 1, 59, 59)) == utc(2026, 1, 1, 2)
    assert s.next_tick(utc(2026, 1, 1, 2)) == utc(2026, 1, 2, 2)  # strictly after
    assert s.next_tick(utc(2026, 1, 1, 2, 0, 0, 1)) == utc(2026, 1, 2, 2)
    tick = berlin("0 2 * * *").next_tick(utc(2026, 1, 1))
    assert tick == utc(2026, 1, 1, 1)  # 02:00 CET
    assert tick is not None
    assert tick.tzinfo is UTC


def test_a_seconds_field_gives_ticks_every_few_seconds() -> None:
    s = Schedule("*/2 * * * * *")
    assert _iso(s.ticks(utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 7))) == [
        "01-01T00:00:02", "01-01T00:00:04", "01-01T00:00:06"]


def test_the_expression_is_stored_with_single_spaces() -> None:
    assert Schedule("  0   2 * *\t* ").cron == "0 2 * * *"
    assert check_cron("*/5 * * * * *") == "*/5 * * * * *"


# --- daylight saving time: wall-clock expressions ----------------------------------------


def test_a_tick_in_the_skipped_hour_runs_at_the_first_instant_after_it() -> None:
    s = berlin("30 2 * * *")
    assert _iso(s.ticks(utc(2026, 3, 27, 12), utc(2026, 3, 31))) == [
        "03-28T01:30:00",  # 02:30 CET
        "03-29T01:00:00",  # 02:30 does not exist: 03:00 CEST
        "03-30T00:30:00",  # 02:30 CEST
    ]
    assert berlin("0 2 * * *").next_tick(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)  # 03:00 CEST


def test_a_tick_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    s = berlin("30 2 * * *")
    assert _iso(s.ticks(utc(2026, 10, 24, 12), utc(2026, 10, 27))) == [
        "10-25T00:30:00",  # 02:30 CEST; 02:30 CET an hour later does not run
        "10-26T01:30:00",  # 02:30 CET
    ]
    assert _iso(berlin("0 2 * * *").ticks(utc(2026, 10, 24, 12), utc(2026, 10, 26))) == [
        "10-25T00:00:00"]


def test_starting_inside_the_repeated_hour_never_gives_a_tick_in_the_past() -> None:
    s = berlin("30 2 * * *")
    # 02:10 CET, the second 02:10 of the day: 02:30 CEST has passed already.
    assert s.next_tick(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)
    # 02:10 CEST, the first one: 02:30 CEST comes next.
    assert s.next_tick(utc(2026, 10, 25, 0, 10)) == utc(2026, 10, 25, 0, 30)


# --- daylight saving time: elapsed-time expressions -------------------------------------


def test_interval_expressions_follow_elapsed_time_across_both_changes() -> None:
    s = berlin("*/30 * * * *")
    assert _iso(s.ticks(utc(2026, 3, 29, 0, 15), utc(2026, 3, 29, 1, 45))) == [
        "03-29T00:30:00",  # 01:30 CET
        "03-29T01:00:00",  # 03:00 CEST: no 02:00, no 02:30
        "03-29T01:30:00",
    ]
    assert _iso(s.ticks(utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 1, 45))) == [
        "10-25T00:00:00",  # 02:00 CEST
        "10-25T00:30:00",  # 02:30 CEST
        "10-25T01:00:00",  # 02:00 CET
        "10-25T01:30:00",  # 02:30 CET
    ]


def test_hourly_at_a_minute_keeps_its_interval() -> None:
    s = berlin("30 * * * *")
    assert len(s.ticks(utc(2026, 10, 24, 22), utc(2026, 10, 25, 22))) == 24  # a 25-hour day less one
    assert len(s.ticks(utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))) == 23


def test_six_field_expressions_follow_elapsed_time_even_at_a_fixed_hour() -> None:
    s = berlin("0 30 2 * * *")
    assert _iso(s.ticks(utc(2026, 3, 27, 12), utc(2026, 3, 31))) == ["03-28T01:30:00", "03-30T00:30:00"]
    assert _iso(s.ticks(utc(2026, 10, 24, 12), utc(2026, 10, 26))) == ["10-25T00:30:00", "10-25T01:30:00"]


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 2 * * *", "*/30 * * * *", "0,30 2,3 * * *",
                                  "0 30 2 * * *", "15 1-4 * * *", "10 */20 * * * *"])
@pytest.mark.parametrize("day", [utc(2026, 3, 28, 18), utc(2026, 10, 24, 18)])
def test_walking_back_finds_the_same_ticks_as_walking_forward(cron: str, day: dt.datetime) -> None:
    # Catch-up walks backwards from now; it must see exactly the ticks the
    # forward walk fires, also across a change of clocks.
    s = berlin(cron)
    rng = random.Random(cron + day.isoformat())
    for _ in range(20):
        first = day + dt.timedelta(seconds=rng.randrange(0, 8 * 3600))
        until = first + dt.timedelta(seconds=rng.randrange(0, 6 * 3600))
        forward = s.ticks(first - dt.timedelta(microseconds=1), until)
        assert s.recent_ticks(first, until, 10_000) == forward[::-1], (first, until)


# --- catch-up ----------------------------------------------------------------------------


def test_a_tick_seen_on_time_runs_under_every_policy() -> None:
    for catchup, overlap in (("skip", "skip"), ("latest", "skip"), ("all", "allow")):
        s = Schedule("0 * * * *", catchup=catchup, overlap=overlap)  # type: ignore[arg-type]
        plan = s.plan(first=utc(2026, 1, 1, 3), now=utc(2026, 1, 1, 3, 0, 0, 2000))
        assert plan.ticks == (utc(2026, 1, 1, 3),)
        assert plan.skipped == 0
        assert plan.next_tick == utc(2026, 1, 1, 4)


def test_nothing_is_due_before_the_first_tick() -> None:
    plan = Schedule("0 * * * *").plan(first=utc(2026, 1, 1, 3), now=utc(2026, 1, 1, 2, 59, 59))
    assert plan.ticks == ()
    assert plan.next_tick == utc(2026, 1, 1, 3)


def test_missed_ticks_follow_the_catchup_policy() -> None:
    first, now = utc(2026, 1, 1, 0), utc(2026, 1, 1, 5, 20)  # 00:00 … 05:00 missed: six ticks
    skip = Schedule("0 * * * *", catchup="skip").plan(first, now)
    assert (skip.ticks, skip.skipped, skip.next_tick) == ((), 6, utc(2026, 1, 1, 6))
    latest = Schedule("0 * * * *", catchup="latest").plan(first, now)
    assert (latest.ticks, latest.skipped) == ((utc(2026, 1, 1, 5),), 5)
    every = Schedule("0 * * * *", catchup="all", overlap="allow", catchup_limit=10).plan(first, now)
    assert every.ticks == tuple(utc(2026, 1, 1, h) for h in range(6))
    assert every.skipped == 0
    bounded = Schedule("0 * * * *", catchup="all", overlap="allow", catchup_limit=4).plan(first, now)
    assert bounded.ticks == tuple(utc(2026, 1, 1, h) for h in (2, 3, 4, 5))  # the most recent four
    assert bounded.skipped == 2


def test_skip_runs_a_tick_seen_within_the_grace_and_not_later() -> None:
    s = Schedule("0 * * * *", catchup="skip")
    assert s.plan(utc(2026, 1, 1, 3), utc(2026, 1, 1, 3) + ON_TIME).ticks == (utc(2026, 1, 1, 3),)
    late = s.plan(utc(2026, 1, 1, 3), utc(2026, 1, 1, 3) + ON_TIME + dt.timedelta(seconds=1))
    assert (late.ticks, late.skipped) == ((), 1)


def test_a_long_gap_costs_a_bounded_walk() -> None:
    # A week without workers for an every-second schedule: 604,800 missed ticks.
    s = Schedule("* * * * * *", catchup="latest")
    plan = s.plan(utc(2026, 1, 1), utc(2026, 1, 8, 0, 0, 0, 500))
    assert plan.ticks == (utc(2026, 1, 8),)
    assert plan.skipped == 1000  # counted up to a bound
    assert plan.next_tick == utc(2026, 1, 8, 0, 0, 1)


def test_catching_up_across_the_spring_change_runs_the_moved_tick() -> None:
    s = Schedule("30 2 * * *", timezone="Europe/Berlin", catchup="all", overlap="allow")
    plan = s.plan(first=utc(2026, 3, 28, 1, 30), now=utc(2026, 3, 30, 12))
    assert _iso(list(plan.ticks)) == ["03-28T01:30:00", "03-29T01:00:00", "03-30T00:30:00"]


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cron", "reason"), [
    ("61 2 * * *", "Bad minute"),
    ("0 2 * *", "Wrong number of fields"),
    ("0 2 * * * * *", "Wrong number of fields"),
    ("0 25 * * *", "Bad hour"),
    ("0 2 31 2 *", "Bad day-of-month"),
    ("every day", "Wrong number of fields"),
    ("0 2 * * FUNDAY", "Bad day-of-week"),
])
def test_a_malformed_cron_expression_is_refused_with_the_reason(cron: str, reason: str) -> None:
    with pytest.raises(InvalidCron, match=reason) as caught:
        Schedule(cron)
    assert "five fields" in str(caught.value)
    assert isinstance(caught.value, InvalidArgument)


@pytest.mark.parametrize("cron", ["", "   ", None, 5, "0 " * 150])
def test_an_empty_or_non_string_cron_expression_is_refused(cron: object) -> None:
    with pytest.raises(InvalidCron):
        check_cron(cron)


def test_an_unknown_time_zone_is_refused_with_suggestions() -> None:
    with pytest.raises(UnknownTimezone,
                       match="unknown time zone 'Europe/Berln'; did you mean 'Europe/Berlin'"):
        Schedule("0 2 * * *", timezone="Europe/Berln")
    for bad in ("", "Mars/Olympus", "../etc/passwd", None, 3):
        with pytest.raises(UnknownTimezone):
            check_timezone(bad)
    assert check_timezone("America/New_York") == "America/New_York"


@pytest.mark.parametrize(("options", "message"), [
    ({"catchup": "sometimes"}, "catchup must be 'skip', 'latest' or 'all'"),
    ({"overlap": "queue"}, "overlap must be 'skip' or 'allow'"),
    ({"catchup": "all", "overlap": "allow", "catchup_limit": 0}, "catchup_limit must be a whole number"),
    ({"catchup": "all", "overlap": "allow", "catchup_limit": 1001}, "from 1 to 1000"),
    ({"catchup_limit": True}, "catchup_limit must be a whole number"),
    ({"catchup": "all"}, "catchup='all' needs overlap='allow'"),
])
def test_bad_policies_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Schedule("0 2 * * *", **options)  # type: ignore[arg-type]


def test_times_must_be_timezone_aware() -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        Schedule("0 2 * * *").next_tick(dt.datetime(2026, 1, 1))
