"""The closing note of a chaos scenario: runs by shape and outcome, faults by
kind, re-executed step bodies, timings, each invariant, and for a broken one the
offending runs with the worker log lines that mention them."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from .harness import busy_share, log_time, read_log, skew_seconds
from .invariants import Check, dropped_as_cancelled, expected_bodies, identify, reaped_at, self_takeovers
from .scenario import Collected

EVIDENCE_EVENTS = {
    "run.claimed", "run.suspended", "run.completed", "run.failed", "run.cancelled", "step.completed",
    "step.failed", "worker.lease_taken_over", "worker.lease_lost", "worker.run_abandoned",
    "worker.claim_failed", "worker.renew_failed", "recorder.write_failed", "worker.reconnected",
}


def fault_counts(data: Collected) -> dict[str, str]:
    faults = Counter(f.kind for f in data.faults)
    restarts = [f for f in data.faults if f.kind == "restart"]
    immediate = sum(1 for f in restarts if "immediate" in f.detail)
    backends = sum(int(f.detail.split()[0]) for f in data.faults if f.kind == "terminate")
    taken = sum(len(s.taken_over) for s in data.stops)
    held = sum(len(s.held) for s in data.stops)
    skewed = [w for w in data.workers if w["skew"]]
    return {
        "worker kills (SIGKILL, replaced)": str(faults["kill"]),
        "postgres restarts": f"{faults['restart']} ({immediate} immediate, {len(restarts) - immediate} fast)",
        "pg_terminate_backend rounds": f"{faults['terminate']} ({backends} backends)",
        "proxy stalls then resets": str(faults["stall"]),
        "proxy blips (stall, resume)": str(faults["blip"]),
        "SIGSTOP past the lease": f"{faults['stop']} ({held} runs held, {taken} seen taken over)",
        "skewed-clock workers": (f"{len(data.settings.skews)} at a time "
                                 f"({', '.join(data.settings.skews)}; {len(skewed)} processes in all)"
                                 if skewed else "0"),
        "cancels": str(faults["cancel"]),
        "workers restarted after exiting": str(sum(1 for n in data.notes if n.startswith("supervisor:"))),
        "workers reaped (heartbeat lapsed)": str(sum(len(v) for v in reaped_at(data).values())),
    }


def outcome_table(data: Collected) -> list[list[str]]:
    counts: dict[str, Counter[str]] = {}
    for run_id, run in data.runs.items():
        who = identify(run_id, data.runs)
        kind = who.kind if who else "unknown"
        counts.setdefault(kind, Counter())[run["status"]] += 1
    statuses = ["completed", "failed", "cancelled"]
    rows = [["shape", "runs", *statuses, "other"]]
    for kind in sorted(counts, key=lambda k: (k in ("kid", "doomed_kid"), k)):
        c = counts[kind]
        other = sum(v for k, v in c.items() if k not in statuses)
        rows.append([kind, str(sum(c.values())), *(str(c[s]) for s in statuses), str(other)])
    total = Counter[str]()
    for c in counts.values():
        total.update(c)
    rows.append(["total", str(sum(total.values())), *(str(total[s]) for s in statuses),
                 str(sum(v for k, v in total.items() if k not in statuses))])
    return rows


def body_counts(data: Collected) -> dict[str, int]:
    executed = sum(len(rows) for rows in data.effects.values())
    expected = 0
    for (run_id, seq), rows in data.effects.items():
        who = identify(run_id, data.runs)
        if who is not None:
            expected += expected_bodies(who, seq, rows[0]["step"])
    return {"executed": executed, "fault-free": expected, "re-executed": executed - expected}


def claim_counts(data: Collected) -> list[str]:
    """How often runs were claimed (every resumption counts), from the workers' logs."""
    per_run: Counter[str] = Counter()
    by_worker: dict[str, Counter[str]] = {}
    for worker in data.workers:
        for event in read_log(Path(worker["log"])):
            if event.get("event") == "run.claimed" and isinstance(event.get("run_id"), str):
                per_run[event["run_id"]] += 1
                by_worker.setdefault(event["run_id"], Counter())[worker["name"]] += 1
    cancelled = sum(len(v) for v in dropped_as_cancelled(data).values())
    selves = sum(len(v) for v in self_takeovers(data).values())
    oddities = (f"; run.cancelled for runs nobody cancelled: {cancelled}; "
                f"lease_taken_over from itself: {selves}")
    if not per_run:
        return ["claims: none logged" + oddities]
    top = per_run.most_common(3)
    described = ", ".join(
        f"{run} {count}x ({', '.join(f'{w} {c}' for w, c in by_worker[run].most_common(3))})"
        for run, count in top)
    return [f"claims: {sum(per_run.values())} in all for {len(per_run)} runs; most claimed: {described}"
            + oddities]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                             enumerate(zip(row, widths, strict=True))) for row in rows]


def evidence(data: Collected, run_ids: list[str], per_run: int = 12) -> list[str]:
    lines: list[str] = []
    logs = [(w["name"], w["pid"], skew_seconds(w["skew"]), read_log(Path(w["log"]))) for w in data.workers]
    for run_id in run_ids:
        found: list[tuple[float, str]] = []
        skewed = False
        for name, pid, shift, events in logs:
            for event in events:
                if event.get("run_id") == run_id and event.get("event") in EVIDENCE_EVENTS:
                    stamp = (log_time(event) or 0.0) - shift  # in order on the real clock
                    skewed = skewed or bool(shift)
                    rest = {k: v for k, v in event.items()
                            if k not in ("event", "run_id", "timestamp", "level", "workflow")}
                    found.append((stamp, f"{event.get('timestamp', '?')} {name}[{pid}] "
                                         f"{event['event']} {rest}"))
        found.sort()
        lines.append(f"    {run_id}: {len(found)} log lines" + ("" if found else " (none)")
                     + (" (a skewed worker's lines carry its own clock)" if skewed else ""))
        if len(found) > per_run:
            lines.append(f"      … {len(found) - per_run} earlier lines")
        lines.extend("      " + text[:300] for _, text in found[-per_run:])
    return lines


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*out, line] if line else out


def render(label: str, data: Collected, checks: list[Check], max_violations: int = 12) -> str:
    s = data.settings
    lines = [
        f"chaos scenario [{label}]  faults: {', '.join(sorted(s.faults)) or 'none'}",
        f"  seed {s.seed} (WERKFLUSS_CHAOS_SEED), {s.runs} runs, fault window {s.seconds:.0f}s, "
        f"{s.workers} workers x concurrency {s.concurrency}, lease {s.lease:g}s, poll {s.poll:g}s",
        f"  database {data.database}, logs in {data.log_dir}",
        "",
        "runs by shape and outcome:",
        *_table(outcome_table(data)),
        "",
        "faults:",
        *(f"  {name:<36} {value}" for name, value in fault_counts(data).items()),
    ]
    bodies = body_counts(data)
    drained = (f"{data.pickup.drained - data.pickup.calm:.1f}s" if data.pickup.drained
               else "not within the limit")
    lines += [
        "",
        f"step bodies: {bodies['executed']} executed, {bodies['fault-free']} in a fault-free run, "
        f"{bodies['re-executed']} re-executed",
        *claim_counts(data),
        f"duration: {data.ended - data.t0:.1f}s (faults for {data.pickup.calm - data.t0:.1f}s, drained "
        f"{drained} after they stopped; setup {data.t0 - data.began:.1f}s); workers started: "
        f"{len(data.workers)}",
    ]
    lines += ["", "fault timeline (seconds from the start; k=kill r=restart t=terminate s=stall+reset "
              "b=blip p=SIGSTOP):"]
    letters = {"kill": "k", "restart": "r", "terminate": "t", "stall": "s", "blip": "b", "stop": "p"}
    timeline = sorted((f.began - data.t0, letters[f.kind], f.ended - f.began)
                      for f in data.faults if f.kind in letters)
    text = " ".join(f"{letter}{at:.1f}" + (f"+{took:.1f}" if took >= 0.1 else "")
                    for at, letter, took in timeline)
    lines += [f"  {chunk}" for chunk in _wrap(text or "none", 100)]
    window, drain = (busy_share(data.cpu.get("t0"), data.cpu.get("calm")),
                     busy_share(data.cpu.get("calm"), data.cpu.get("drained")))
    if window is not None:
        lines.append(f"machine CPU busy: {window:.0%} during the faults, "
                     + (f"{drain:.0%} after them" if drain is not None else "?")
                     + f" ({os.cpu_count()} cores; other jobs on the machine count too)")
    if data.notes:
        exits = [n for n in data.notes if n.startswith("supervisor:")]
        others = [n for n in data.notes if not n.startswith("supervisor:")]
        lines += ["", "notes:", *(f"  {note}" for note in others)]
        if exits:
            lines.append(f"  {len(exits)} workers exited on their own and were started again, e.g.:")
            lines.extend(f"    {note[:200]}" for note in exits[:3])
    lines += ["", "invariants:"]
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        count = "" if check.ok else f" ({len(check.violations)})"
        lines.append(f"  [{mark}] {check.name}{count}: {check.description}")
        shown = check.info if len(check.info) <= 10 else [*check.info[:4], "…", *check.info[-4:]]
        lines.extend(f"           {info}" for info in shown)
        for violation in check.violations[:max_violations]:
            lines.append(f"         - {violation}")
        if len(check.violations) > max_violations:
            lines.append(f"         … and {len(check.violations) - max_violations} more")
        if check.runs:
            lines.append("         evidence from the worker logs:")
            lines.extend(evidence(data, check.runs[:3]))
    return "\n".join(lines) + "\n"


def summary(checks: list[Check]) -> dict[str, Any]:
    return {c.name: len(c.violations) for c in checks if not c.ok}
