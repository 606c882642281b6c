"""Cron schedules: what a schedule is, when its ticks are, and what a
scheduler starts once ticks were missed.

    nightly = Schedule("0 2 * * *", timezone="Europe/Berlin")
    nightly.next_tick(datetime(2026, 3, 28, 12, tzinfo=UTC))
    # 2026-03-29 01:00 UTC: 03:00 summer time, the first instant after the skipped 02:00

Expressions are parsed and evaluated by `cronsim <https://pypi.org/project/cronsim/>`_:
five fields (minute, hour, day of month, month, day of week, with ``*``,
``,``, ``-``, ``/``, names such as ``MON`` and ``JAN``, ``L``, ``LW`` and
``#``), or six with seconds first (``*/10 * * * * *``: every ten seconds).

**Daylight saving time.** Ticks are computed in the schedule's time zone:

* An expression with a fixed minute and hour (five fields, neither the
  minute nor the hour field starting with ``*``: ``0 2 * * *``,
  ``30 8,20 * * MON-FRI``) follows the wall clock, as Debian's cron does. A
  tick that falls into the hour skipped when clocks go forward runs at the
  first valid instant after the gap (``30 2 * * *`` runs at 03:00 on that
  day); a tick in the hour repeated when clocks go back runs once, at its
  first occurrence (summer time).
* Any other expression (``*/15 * * * *``, ``0 * * * *``, ``30 */2 * * *``,
  and every six-field expression) follows elapsed time: the skipped hour
  has no ticks and the repeated hour has its ticks twice, once in each
  offset, so intervals stay intervals.

Every tick is an instant (shown in UTC); the run started for it receives
it in the schedule's time zone.

**Catch-up.** Ticks that came while no worker served the schedule are
*missed*. ``catchup="skip"`` runs none of them (a tick seen up to
:data:`ON_TIME` late still counts as on time), ``"latest"`` runs the most
recent one, ``"all"`` runs every missed tick, at most ``catchup_limit`` of
them (the most recent). :meth:`Schedule.plan` decides; it is pure, and the
scheduler calls it with the database's clock.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from werkfluss.errors import InvalidArgument, InvalidCron, UnknownTimezone

UTC = dt.UTC

Catchup = Literal["skip", "latest", "all"]
Overlap = Literal["skip", "allow"]
CATCHUPS: tuple[str, ...] = ("skip", "latest", "all")
OVERLAPS: tuple[str, ...] = ("skip", "allow")

#: With ``catchup="skip"``, a tick the scheduler sees at most this late still runs.
ON_TIME = dt.timedelta(seconds=60)

#: The most ticks ``catchup="all"`` may start at once (``catchup_limit``).
MAX_CATCHUP_LIMIT = 1000

#: The longest cron expression (the SQL function applies the same limit).
MAX_CRON_LENGTH = 200

# More than any daylight-saving shift (2 h at most, Antarctica/Troll).
_LONGEST_SHIFT = dt.timedelta(hours=3)

# Missed ticks are counted (for the schedule's `skipped`) up to this many per pass.
_COUNTED = 1000

_CRON_ADVICE = (
    "five fields, minute hour day-of-month month day-of-week (e.g. '0 2 * * *': 02:00 every "
    "day), or six with seconds first (e.g. '*/10 * * * * *')"
)


def check_cron(expression: Any) -> str:
    """``expression`` with its fields separated by single spaces, if cronsim
    accepts it and it ever fires; else raise :class:`InvalidCron`.

        check_cron(" 0  2 * * * ")   # '0 2 * * *'
        check_cron("61 2 * * *")     # InvalidCron: ... Bad minute
    """
    if not isinstance(expression, str):
        raise InvalidCron(
            f"a cron expression must be a string, not {type(expression).__name__}; {_CRON_ADVICE}")
    text = " ".join(expression.split())
    if not text:
        raise InvalidCron(f"the cron expression is empty; {_CRON_ADVICE}")
    if len(text) > MAX_CRON_LENGTH:
        raise InvalidCron(
            f"the cron expression is {len(text)} characters long; the limit is {MAX_CRON_LENGTH}")
    try:
        next(CronSim(text, dt.datetime(2000, 1, 1)))
    except CronSimError as err:
        raise InvalidCron(f"{expression!r} is not a cron expression ({err}); {_CRON_ADVICE}") from None
    except StopIteration:
        raise InvalidCron(f"{expression!r} never fires (no such date comes); {_CRON_ADVICE}") from None
    return text


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> dt.tzinfo:
    if name == "UTC":
        return UTC  # cronsim evaluates UTC without its daylight-saving handling
    return ZoneInfo(name)


def check_timezone(name: Any) -> str:
    """``name`` if it is an IANA time zone (``"Europe/Berlin"``, ``"UTC"``);
    else raise :class:`UnknownTimezone`, suggesting close names."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownTimezone(
            f"the time zone must be an IANA name such as 'Europe/Berlin' or 'UTC', got {name!r}")
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownTimezone(
            f"unknown time zone {name!r}{hint} Use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
    return name


def _aware(when: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(when, dt.datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(f"{what} must be a timezone-aware datetime, got {when!r}")
    return when.astimezone(UTC)


@dataclass(frozen=True)
class Plan:
    """What a scheduler does with a schedule at one moment."""

    ticks: tuple[dt.datetime, ...]  # to start a run for, oldest first (UTC)
    skipped: int  # due ticks that start no run (counted up to 1000 beyond those started)
    next_tick: dt.datetime | None  # the first tick after now (None: no tick ever again)


@dataclass(frozen=True)
class Schedule:
    """A cron expression in a time zone, with what to do about missed and overlapping ticks.

    Parameters:
        cron: five fields (minute hour day-of-month month day-of-week), or six
            with seconds first.
        timezone: an IANA name; ticks follow its clock, daylight saving time
            included (see the module's documentation). Default ``"UTC"``.
        catchup: ``"skip"``, ``"latest"`` (default) or ``"all"``: which of the
            ticks missed while no worker ran get a run.
        overlap: ``"skip"`` (default) a tick while the schedule's previous run
            has not finished, or ``"allow"`` it.
        catchup_limit: with ``catchup="all"``, the most missed ticks started
            at once (the most recent ones; 1 to 1000, default 10).

    Example::

        @workflow(schedule=Schedule("0 * * * *", catchup="all", catchup_limit=24, overlap="allow"))
        async def hourly_rollup(scheduled_at: datetime) -> None: ...
    """

    cron: str
    timezone: str = "UTC"
    catchup: Catchup = "latest"
    overlap: Overlap = "skip"
    catchup_limit: int = 10
    _tz: dt.tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cron", check_cron(self.cron))
        object.__setattr__(self, "timezone", check_timezone(self.timezone))
        object.__setattr__(self, "_tz", _zone(self.timezone))
        if self.catchup not in CATCHUPS:
            raise InvalidArgument(f"catchup must be 'skip', 'latest' or 'all', got {self.catchup!r}")
        if self.overlap not in OVERLAPS:
            raise InvalidArgument(f"overlap must be 'skip' or 'allow', got {self.overlap!r}")
        limit = self.catchup_limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CATCHUP_LIMIT:
            raise InvalidArgument(
                f"catchup_limit must be a whole number from 1 to {MAX_CATCHUP_LIMIT}, got {limit!r}")
        if self.catchup == "all" and self.overlap == "skip":
            raise InvalidArgument(
                "catchup='all' needs overlap='allow': with overlap='skip' every missed tick but one "
                "would be skipped (use catchup='latest' for that)"
            )

    # --- ticks ---------------------------------------------------------------------------

    @property
    def wall_clock(self) -> bool:
        """Whether ticks follow the wall clock across daylight-saving changes (a
        fixed minute and hour in five fields, outside UTC), rather than elapsed time."""
        fields = self.cron.split()
        return (len(fields) == 5 and not fields[0].startswith("*") and not fields[1].startswith("*")
                and self._tz is not UTC)

    def next_tick(self, after: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after ``after`` (UTC), or ``None`` if none
        comes within 50 years.

            Schedule("0 2 * * *", timezone="Europe/Berlin").next_tick(
                datetime(2026, 10, 24, 23, tzinfo=UTC))   # 2026-10-25 00:00 UTC (02:00 summer time)
        """
        after = _aware(after, "after")
        ticks = CronSim(self.cron, after.astimezone(self._tz))
        # A wall-clock expression is iterated on naive local time: starting in the
        # second pass of a repeated hour, its first answer can lie before `after`.
        for _ in range(8):
            try:
                tick = next(ticks).astimezone(UTC)
            except StopIteration:
                return None
            if tick > after:
                return tick
        raise AssertionError(f"cronsim went backwards for {self.cron!r} after {after}")  # pragma: no cover

    def ticks(self, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
        """Every tick in ``(after, until]``, oldest first (UTC). For looking, not
        for long spans: it enumerates them all."""
        found: list[dt.datetime] = []
        tick = self.next_tick(after)
        until = _aware(until, "until")
        while tick is not None and tick <= until:
            found.append(tick)
            tick = self.next_tick(tick)
        return found

    def recent_ticks(self, first: dt.datetime, until: dt.datetime, limit: int) -> list[dt.datetime]:
        """The most recent ticks in ``[first, until]``, newest first, at most
        ``limit`` of them: walked backwards from ``until``, so a long gap costs
        ``limit`` steps, not one per tick in it."""
        first = _aware(first, "first")
        until = _aware(until, "until")
        # Ticks fall on whole seconds: the walk starts just after the last
        # whole second at or before `until`, so a tick exactly at `until` counts.
        start = until.replace(microsecond=0) + dt.timedelta(seconds=1)
        if self.wall_clock:
            # cronsim walks a wall-clock expression on naive local time: from
            # the second pass of a repeated hour it would step over the ticks of
            # the first pass that are still ahead on the wall clock. Starting
            # past any change of clocks (and dropping what lies beyond `until`)
            # finds the same ticks as walking forward.
            start += _LONGEST_SHIFT
        ticks = CronSim(self.cron, start.astimezone(self._tz), reverse=True)
        found: list[dt.datetime] = []
        while len(found) < limit:
            try:
                tick = next(ticks).astimezone(UTC)
            except StopIteration:
                break
            if tick > until or (found and tick >= found[-1]):
                continue  # a daylight-saving adjustment moved it forward: seen already
            if tick < first:
                break
            found.append(tick)
        return found

    # --- catch-up --------------------------------------------------------------------------

    def plan(self, first: dt.datetime, now: dt.datetime) -> Plan:
        """What to start at ``now`` when ``first`` is the first tick not handled yet.

        Every tick in ``[first, now]`` is due. The most recent one is on time
        if ``now`` is at most :data:`ON_TIME` past it; the others were missed.

            s = Schedule("0 * * * *", catchup="latest")
            s.plan(first=datetime(2026, 1, 1, 0, tzinfo=UTC), now=datetime(2026, 1, 1, 3, 0, 5, tzinfo=UTC))
            # Plan(ticks=(03:00,), skipped=3, next_tick=04:00)
        """
        first = _aware(first, "first")
        now = _aware(now, "now")
        if first > now:
            return Plan((), 0, first)
        keep = self.catchup_limit if self.catchup == "all" else 1
        due = self.recent_ticks(first, now, keep + _COUNTED)
        chosen = due[:keep]
        if self.catchup == "skip" and chosen and now - chosen[0] > ON_TIME:
            chosen = []
        return Plan(tuple(reversed(chosen)), len(due) - len(chosen), self.next_tick(now))


def make_schedule(
    cron: str | Schedule,
    *,
    timezone: str | None = None,
    catchup: Catchup | None = None,
    overlap: Overlap | None = None,
    catchup_limit: int | None = None,
) -> Schedule:
    """A :class:`Schedule` from a cron expression and options, or the one given
    (options beside a ``Schedule`` are refused: they belong inside it)."""
    given = [name for name, value in (("timezone", timezone), ("catchup", catchup), ("overlap", overlap),
                                      ("catchup_limit", catchup_limit)) if value is not None]
    if isinstance(cron, Schedule):
        if given:
            raise InvalidArgument(f"pass {', '.join(given)} inside the Schedule(...), not beside it")
        return cron
    return Schedule(
        cron,
        timezone="UTC" if timezone is None else timezone,
        catchup="latest" if catchup is None else catchup,
        overlap="skip" if overlap is None else overlap,
        catchup_limit=10 if catchup_limit is None else catchup_limit,
    )
