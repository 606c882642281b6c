"""What the dashboard's pages show, computed from what the engine reads.

Pure functions of their inputs (no database, no web framework), so the
timeline and the "waiting for" box are tested on hand-made records:

    timeline = build_timeline(info, log, children, hooks, now=now)
    for bar in timeline.bars:
        print(bar.label, bar.left, bar.width, bar.duration)
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from werkfluss.runs import TERMINAL, RunInfo, StepRecord
from werkfluss.store.dashboard import ChildRun, HookState

MIN_WIDTH = 0.4  # percent of the chart: a bar of a few microseconds stays visible
MAX_BARS = 300  # a run with a longer log draws its first bars and says how many it left out


# --- formatting ----------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``"12.3 ms"``, ``"4.20 s"``, ``"3m 07s"``, ``"2h 05m"``, ``"3d 04h"``.

    >>> format_duration(0.0123), format_duration(187), format_duration(90061)
    ('12.3 ms', '3m 07s', '1d 01h')
    """
    if seconds is None:
        return ""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_time(value: dt.datetime | None) -> str:
    """A timestamp in UTC to the millisecond (what the CLI prints)."""
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def relative(value: dt.datetime | None, now: dt.datetime) -> str:
    """``"3m 07s ago"`` or ``"in 2h 05m"``."""
    if value is None:
        return ""
    delta = (value - now).total_seconds()
    if abs(delta) < 0.5:
        return "now"
    return f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"


def pretty_json(value: Any) -> str:
    """A stored value, indented for reading."""
    return json.dumps(value, default=str, ensure_ascii=False, indent=2)


def short_name(name: str) -> str:
    """``app.workflows.fetch_data`` -> ``fetch_data``."""
    return name.rsplit(".", 1)[-1]


# --- what a run waits for ------------------------------------------------------------------

_WAIT_ITEM = re.compile(r"(?:^|, )(hook|run):(.*?)(?=, (?:hook|run):|$)", re.DOTALL)


def parse_waiting_on(waiting_on: str | None) -> tuple[list[str], list[str]]:
    """Split ``runs.waiting_on`` into hook tokens and child run ids.

    >>> parse_waiting_on("hook:order-42:approval, run:p1::5")
    (['order-42:approval'], ['p1::5'])
    """
    hooks: list[str] = []
    runs: list[str] = []
    for kind, value in _WAIT_ITEM.findall(waiting_on or ""):
        (hooks if kind == "hook" else runs).append(value)
    return hooks, runs


@dataclass(frozen=True)
class Waits:
    """What a sleeping or waiting run needs before it goes on."""

    wake_at: dt.datetime | None
    hooks: list[HookState]  # hooks the run waits on (a token with no row yet is left out)
    tokens: list[str]  # every token it waits on
    children: list[ChildRun]  # child runs it waits on
    child_ids: list[str]

    @property
    def anything(self) -> bool:
        return bool(self.wake_at or self.tokens or self.child_ids)


def waits_of(info: RunInfo, hooks: Sequence[HookState], children: Sequence[ChildRun]) -> Waits:
    tokens, child_ids = parse_waiting_on(info.waiting_on)
    by_token = {h.token: h for h in hooks}
    by_id = {c.run_id: c for c in children}
    return Waits(
        wake_at=info.wake_at if info.status in ("sleeping", "waiting") else None,
        hooks=[by_token[t] for t in tokens if t in by_token],
        tokens=tokens,
        children=[by_id[c] for c in child_ids if c in by_id],
        child_ids=child_ids,
    )


# --- the timeline ----------------------------------------------------------------------------


@dataclass
class Bar:
    """One row of the timeline: a step, a sleep, a wait for a hook, a child run."""

    kind: str  # "run" | "step" | "sleep" | "wait" | "child"
    label: str
    status: str  # "completed" | "failed" | "cancelled" | "open" (still going)
    start: dt.datetime
    end: dt.datetime
    seq: int | None = None
    attempts: int = 1
    detail: str = ""  # the tooltip: times, error
    link: str | None = None  # the run id a child bar links to
    left: float = 0.0  # percent of the chart
    width: float = 0.0

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)

    @property
    def duration(self) -> str:
        return format_duration(self.seconds)

    @property
    def retries(self) -> int:
        return max(self.attempts - 1, 0)


@dataclass
class Timeline:
    start: dt.datetime
    end: dt.datetime
    bars: list[Bar] = field(default_factory=list)
    now_at: float | None = None  # percent where "now" is, for a run still going
    hidden: int = 0  # bars left out (past MAX_BARS)
    ticks: list[tuple[float, str]] = field(default_factory=list)

    @property
    def span(self) -> str:
        return format_duration((self.end - self.start).total_seconds())


def _parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def build_timeline(
    info: RunInfo,
    log: Sequence[StepRecord],
    children: Sequence[ChildRun],
    hooks: Sequence[HookState],
    *,
    now: dt.datetime,
    max_bars: int = MAX_BARS,
) -> Timeline:
    """The run's bars, placed on one time axis from its creation to its end (or now).

    At most ``max_bars`` bars besides the run's own: the first ones, then the
    open ones (what the run is waiting on), so a long log stays readable.
    """
    finished = info.status in TERMINAL
    hook_created = {h.token: h.created_at for h in hooks}
    child_by_id = {c.run_id: c for c in children}
    bars: list[Bar] = []
    run_end = info.finished_at if finished and info.finished_at else now
    bars.append(Bar(
        kind="run", label="run", status=info.status if finished else "open",
        start=info.created_at, end=run_end,
        detail=f"created {format_time(info.created_at)}"
        + (f", started {format_time(info.started_at)}" if info.started_at else "")
        + (f", finished {format_time(info.finished_at)}" if info.finished_at else ""),
    ))
    last_receive: dict[str, dt.datetime] = {}
    seen_children: set[str] = set()
    for record in log:
        if record.kind == "step":
            start = record.started_at or record.finished_at
            detail = f"{record.name}: {record.attempts} attempt{'s' if record.attempts != 1 else ''}"
            if record.error:
                detail += f"; {_error_text(record.error)}"
            bars.append(Bar(kind="step", label=short_name(record.name), status=record.status,
                            start=start, end=record.finished_at, seq=record.seq,
                            attempts=record.attempts, detail=detail))
        elif record.kind == "sleep":
            start = record.started_at or record.finished_at
            output = record.output if isinstance(record.output, dict) else {}
            wake = _parse_time(output.get("wake_at")) or record.finished_at
            still = wake > now and not finished
            bars.append(Bar(kind="sleep", label="sleep", status="open" if still else "completed",
                            start=start, end=wake, seq=record.seq,
                            detail=f"sleep until {format_time(wake)}"))
        elif record.kind == "receive":
            token = record.name
            start = last_receive.get(token) or hook_created.get(token) or record.started_at \
                or record.finished_at
            last_receive[token] = record.finished_at
            bars.append(Bar(kind="wait", label=f"hook {token}", status=record.status,
                            start=min(start, record.finished_at), end=record.finished_at,
                            seq=record.seq,
                            detail=f"waited for a payload to hook {token}"
                            + (f"; {_error_text(record.error)}" if record.error else "")))
        elif record.kind == "child":
            output = record.output if isinstance(record.output, dict) else {}
            child_id = str(output.get("run_id") or f"{info.run_id}::{record.seq}")
            seen_children.add(child_id)
            child = child_by_id.get(child_id)
            start = child.created_at if child else (record.started_at or record.finished_at)
            end = child.finished_at if child and child.finished_at else record.finished_at
            status = child.status if child else record.status
            bars.append(Bar(kind="child", label=f"child {short_name(record.name)}", status=status,
                            start=start, end=max(end, start), seq=record.seq,
                            link=child_id,
                            detail=f"child run {child_id} ({status})"
                            + (f"; {_error_text(record.error)}" if record.error else "")))
        # hook records start waits; now/uuid/race records take no time
    if not finished:
        tokens, _ = parse_waiting_on(info.waiting_on)
        for token in tokens:
            start = last_receive.get(token) or hook_created.get(token) or info.updated_at
            bars.append(Bar(kind="wait", label=f"hook {token}", status="open", start=min(start, now),
                            end=now, detail=f"waiting for a payload to hook {token}"))
    for child in children:
        if child.run_id in seen_children:
            continue
        end = child.finished_at or now
        bars.append(Bar(kind="child", label=f"child {short_name(child.workflow)}",
                        status=child.status if child.finished_at else "open",
                        start=child.created_at, end=max(end, child.created_at),
                        link=child.run_id, detail=f"child run {child.run_id} ({child.status})"))
    hidden = 0
    if len(bars) > max_bars + 1:
        head = bars[:max_bars + 1]
        tail = [b for b in bars[max_bars + 1:] if b.status == "open"][-10:]
        hidden = len(bars) - len(head) - len(tail)
        bars = head + tail
    timeline = _place(bars, info.created_at, now=None if finished else now)
    timeline.hidden = hidden
    return timeline


def _place(bars: list[Bar], start: dt.datetime, *, now: dt.datetime | None) -> Timeline:
    end = max([b.end for b in bars] + ([now] if now else []) + [start])
    span = (end - start).total_seconds() or 0.001
    for bar in bars:
        offset = (bar.start - start).total_seconds() / span * 100
        width = (bar.end - bar.start).total_seconds() / span * 100
        bar.left = round(min(max(offset, 0.0), 100.0 - MIN_WIDTH), 3)
        bar.width = round(min(max(width, MIN_WIDTH), 100.0 - bar.left), 3)
    ticks = [(float(pct), "+" + format_duration(span * pct / 100) if pct else "0")
             for pct in (0, 25, 50, 75, 100)]
    now_at = None
    if now is not None:
        now_at = round(min(max((now - start).total_seconds() / span * 100, 0.0), 100.0), 3)
    return Timeline(start=start, end=end, bars=bars, now_at=now_at, ticks=ticks)
