"""How the commands print: plain tables, times, durations and JSON.

    >>> print(format_table(["run_id", "status"], [["r1", "completed"]]))
      run_id  status
      ------  ---------
      r1      completed
    >>> seconds_text(95)
    '1m 35s'
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from werkfluss.runs import RunInfo, StepRecord


def cell(value: Any, width: int = 40) -> str:
    """One value as table text: ``-`` for nothing, UTC times, JSON for the rest."""
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int = 40) -> str:
    """A plain text table (cells cut at ``width`` characters)."""
    cells = [[cell(v, width) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join("  " + line.rstrip() for line in lines)


def format_steps(steps: Sequence[StepRecord]) -> str:
    """The log as a table (steps, and sleeps, hooks, payloads, child runs, races)."""
    rows = []
    for s in steps:
        duration = (
            f"{(s.finished_at - s.started_at).total_seconds() * 1000:.1f} ms"
            if s.started_at and s.kind == "step" else None
        )
        outcome = s.output if s.status == "completed" else (s.error or {}).get("message")
        args = s.input.get("args") if isinstance(s.input, dict) else s.input
        name = s.name.rsplit(".", 1)[-1] if s.kind in ("step", "child") else s.name
        rows.append([s.seq, s.kind, name, s.status, s.attempts, duration, args, outcome])
    return format_table(
        ["seq", "kind", "name", "status", "attempts", "took", "input", "output / error"], rows
    )


def format_runs(runs: Sequence[RunInfo]) -> str:
    rows = [
        [r.run_id, r.workflow, r.status, r.created_at, r.finished_at,
         r.blocked_by or r.wake_at or r.waiting_on]
        for r in runs
    ]
    return format_table(["run_id", "workflow", "status", "created", "finished", "waits for"], rows)


def run_json(info: RunInfo) -> dict[str, Any]:
    return {
        "run_id": info.run_id, "workflow": info.workflow, "status": info.status,
        "args": info.args, "kwargs": info.kwargs, "result": info.result, "error": info.error,
        "parent_id": info.parent_id, "wake_at": info.wake_at, "waiting_on": info.waiting_on,
        "created_at": info.created_at, "started_at": info.started_at,
        "finished_at": info.finished_at, "queue": info.queue, "concurrency_key": info.concurrency_key,
        "priority": info.priority, "blocked_by": info.blocked_by,
    }


def dump(value: Any) -> str:
    """Indented JSON; times and other values as their ``str``."""
    return json.dumps(value, default=str, ensure_ascii=False, indent=2)


def seconds_text(seconds: float) -> str:
    """A duration for people: ``850ms``, ``12.3s``, ``4m 05s``, ``3h 12m``, ``2d 4h``."""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
