"""``werkfluss workers``: who serves what, and whether they are alive.

    werkfluss workers [--recent 1h] [--json]

Lists live workers and those that stopped or died within ``--recent``: host,
pid, version, the workflows each serves, the runs it holds, and its last
heartbeat. Also home of the "no live worker serves …" notes that ``runs``,
``show``, ``start --wait`` and ``retry`` print.
"""

from __future__ import annotations

import argparse
from typing import Any

from werkfluss.cli.output import dump, format_table, seconds_text
from werkfluss.durations import parse_duration
from werkfluss.engine import Engine
from werkfluss.store.workers import WorkerInfo


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    workers = sub.add_parser(
        "workers", parents=[common], help="list live and recently stopped or dead workers",
        description="Live workers, and those that stopped or died within --recent, newest "
                    "heartbeat first.",
    )
    workers.add_argument("--recent", default="1h", metavar="DURATION",
                         help="also list workers that stopped or died within this long, e.g. 30m, "
                              "1d; 0 lists live workers only (default 1h)")
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    workers.set_defaults(handler=cmd_workers, check=check_workers)


def check_workers(args: argparse.Namespace) -> None:
    args.recent_seconds = parse_duration(args.recent, what="--recent")


def state_of(worker: WorkerInfo) -> str:
    """``running``/``stopping`` while its heartbeat vouches for it; ``silent``
    when the heartbeat is overdue but no reaper has declared it dead yet."""
    if worker.alive:
        return worker.state
    return "silent" if worker.state in ("running", "stopping") else worker.state


def _workflows_cell(names: list[str]) -> str:
    if len(names) <= 2:
        return ", ".join(names) or "-"
    return f"{names[0]}, {names[1]} +{len(names) - 2} more"


async def cmd_workers(engine: Engine, args: argparse.Namespace) -> int:
    workers = await engine.workers(recent=args.recent_seconds)
    if args.json:
        print(dump([w.__dict__ for w in workers]))
        return 0
    if not workers:
        print(f"no workers (none live, none stopped within {args.recent})")
        return 0
    rows = [
        [w.host, w.pid, w.version, state_of(w), _workflows_cell(w.workflows),
         w.runs_held if w.alive else 0, f"{seconds_text(w.heartbeat_age)} ago", w.id]
        for w in workers
    ]
    print(format_table(["host", "pid", "version", "state", "workflows", "runs held",
                        "last heartbeat", "worker id"], rows))
    live = sum(w.alive for w in workers)
    print(f"\n  {live} live; {len(workers) - live} stopped, dead or silent within {args.recent}")
    if any(state_of(w) == "silent" for w in workers):
        print("  silent: the heartbeat is overdue; the next live worker's reaper frees its runs")
    return 0


def no_worker_note(workflow: str, served: set[str], prog: str) -> str:
    """What to tell about a pending run whose workflow no live worker serves."""
    if not served:
        return (f"no live worker is running, so nothing serves {workflow}: start one with "
                f"`{prog} worker --app MODULE`")
    return (f"no live worker serves {workflow}: a worker that serves it must start "
            f"(`{prog} workers` lists what each serves; check the name)")
