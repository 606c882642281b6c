"""``werkfluss schedules``: list and steer cron schedules.

    werkfluss schedules [list] [--workflow NAME] [--json]
    werkfluss schedules pause NAME
    werkfluss schedules resume NAME
    werkfluss schedules trigger NAME
    werkfluss schedules delete NAME

A run waiting for a schedule is not a run yet: ``runs`` does not show it,
``schedules`` does (its next tick, its last run and that run's status).
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from werkfluss import limits
from werkfluss.cli.output import dump, format_table
from werkfluss.engine import Engine
from werkfluss.errors import InvalidArgument
from werkfluss.store.schedules import ScheduleInfo

ACTIONS = ("list", "pause", "resume", "trigger", "delete")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``schedules`` command to the main parser's subcommands."""
    p = sub.add_parser(
        "schedules", parents=[common], help="list, pause, resume, trigger or delete cron schedules",
        description="Without an action: list the schedules with their next tick, last run and its status.",
    )
    p.add_argument("action", nargs="?", default="list", choices=ACTIONS, metavar="ACTION",
                   help="list (default), pause, resume, trigger or delete")
    p.add_argument("name", nargs="?", metavar="NAME", help="the schedule (for every action but list)")
    p.add_argument("--workflow", help="list: only the schedules of this workflow")
    p.add_argument("--json", action="store_true", help="list: print JSON instead of a table")
    p.set_defaults(handler=cmd_schedules, check=check_arguments)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad arguments before connecting (:class:`InvalidArgument`)."""
    if args.action == "list":
        if args.name is not None:
            raise InvalidArgument(
                f"schedules list takes no NAME (got {args.name!r}); use --workflow to filter")
        return
    if args.name is None:
        prog = getattr(args, "prog", "werkfluss")
        raise InvalidArgument(f"schedules {args.action} needs the schedule's NAME, e.g. "
                              f"`{prog} schedules {args.action} nightly-report`")
    limits.check_schedule_name(args.name)


def _local(when: dt.datetime | None, zone: str) -> str | None:
    if when is None:
        return None
    try:
        return when.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (ValueError, KeyError, OSError):
        return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(s: ScheduleInfo) -> str:
    if s.error is not None:
        return f"broken: {s.error}"
    return "paused" if s.paused else "active"


def format_schedules(found: list[ScheduleInfo]) -> str:
    rows = [
        [s.name, s.workflow, s.cron, s.timezone, _local(s.next_tick, s.timezone), s.last_run_id,
         s.last_run_status, _state(s)]
        for s in found
    ]
    return format_table(
        ["name", "workflow", "cron", "time zone", "next tick", "last run", "status", "state"], rows, width=60)


def _json(s: ScheduleInfo) -> dict[str, Any]:
    return {name: getattr(s, name) for name in ScheduleInfo.__dataclass_fields__}


async def cmd_schedules(engine: Engine, args: argparse.Namespace) -> int:
    if args.action == "list":
        found = await engine.schedules(workflow=args.workflow)
        if args.json:
            print(dump([_json(s) for s in found]))
        elif found:
            print(format_schedules(found))
        else:
            print("no schedules")
    elif args.action == "pause":
        print("paused" if await engine.pause_schedule(args.name) else "already paused")
    elif args.action == "resume":
        print("resumed" if await engine.resume_schedule(args.name) else "not paused; nothing to resume")
    elif args.action == "trigger":
        print((await engine.trigger_schedule(args.name)).run_id)
    else:
        await engine.delete_schedule(args.name)
        print("deleted")
    return 0
