"""``python -m werkfluss <command>``: operate werkfluss from a shell.

    python -m werkfluss migrate [--dsn URL]
    python -m werkfluss demo [onboard|approval]
    python -m werkfluss runs [--status failed] [--workflow NAME] [--limit 20] [--json]
    python -m werkfluss show RUN_ID [--json]
    python -m werkfluss start NAME '["user-123"]' [--run-id ID] [--timeout 1h] [--wait]
    python -m werkfluss send TOKEN '{"approved": true}'
    python -m werkfluss cancel RUN_ID
    python -m werkfluss schedules [pause|resume|trigger|delete NAME]

Every command takes ``--dsn`` (default: ``$WERKFLUSS_DATABASE_URL``, else the
embedded PostgreSQL). Errors print one line to stderr and exit with status 1.
Workers have their own entry point: ``python -m werkfluss.worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from werkfluss import limits, telemetry
from werkfluss.cli import schedules as schedules_cli
from werkfluss.durations import parse_duration
from werkfluss.engine import Engine
from werkfluss.errors import InvalidArgument, RunCancelled, RunFailed, WerkflussError
from werkfluss.runs import STATUSES, RunInfo, StepRecord

# --- formatting ------------------------------------------------------------------------


def _cell(value: Any, width: int = 40) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int = 40) -> str:
    """A plain text table (cells cut at ``width`` characters)."""
    cells = [[_cell(v, width) for v in row] for row in rows]
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
        [r.run_id, r.workflow, r.status, r.created_at, r.finished_at, r.wake_at or r.waiting_on]
        for r in runs
    ]
    return format_table(["run_id", "workflow", "status", "created", "finished", "waits for"], rows)


def _run_json(info: RunInfo) -> dict[str, Any]:
    return {
        "run_id": info.run_id, "workflow": info.workflow, "status": info.status,
        "args": info.args, "kwargs": info.kwargs, "result": info.result, "error": info.error,
        "parent_id": info.parent_id, "wake_at": info.wake_at, "waiting_on": info.waiting_on,
        "created_at": info.created_at, "started_at": info.started_at,
        "finished_at": info.finished_at,
    }


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, indent=2)


# --- commands ----------------------------------------------------------------------------


async def cmd_migrate(engine: Engine, args: argparse.Namespace) -> int:
    applied = await engine.migrate()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


async def cmd_runs(engine: Engine, args: argparse.Namespace) -> int:
    runs = await engine.runs(status=args.status, workflow=args.workflow, limit=args.limit)
    if args.json:
        print(_dump([_run_json(r) for r in runs]))
    elif runs:
        print(format_runs(runs))
    else:
        print("no runs")
    return 0


async def cmd_show(engine: Engine, args: argparse.Namespace) -> int:
    handle = engine.handle(args.run_id)
    info = await handle.info()
    steps = await handle.log()
    if args.json:
        out = _run_json(info)
        out["steps"] = [s.__dict__ for s in steps]
        print(_dump(out))
        return 0
    print(f"run {info.run_id}")
    for label, value in (
        ("workflow", info.workflow), ("status", info.status), ("args", info.args),
        ("kwargs", info.kwargs or None), ("created", info.created_at),
        ("finished", info.finished_at), ("wakes at", info.wake_at),
        ("waits on", info.waiting_on), ("parent", info.parent_id),
        ("result", info.result if info.status == "completed" else None),
    ):
        if value is not None:
            print(f"  {label + ':':10} {_cell(value, 200)}")
    if info.error:
        print(f"  {'error:':10} {info.error.get('type')}: {info.error.get('message')}")
    print(format_steps(steps) if steps else "  (no steps recorded)")
    return 0


async def cmd_start(engine: Engine, args: argparse.Namespace) -> int:
    handle = await engine.start(args.name, *args.positional, run_id=args.run_id, timeout=args.timeout)
    print(handle.run_id)
    if args.wait:
        try:
            result = await handle.result(timeout=args.wait_timeout)
        except (RunFailed, RunCancelled, TimeoutError) as err:
            print(f"werkfluss: {err}", file=sys.stderr)
            return 1
        print(_dump(result))
    return 0


async def cmd_send(engine: Engine, args: argparse.Namespace) -> int:
    outcome = await engine.send(args.token, args.payload_value)
    print("delivered" if outcome == "delivered" else "stored; no hook with this token yet")
    return 0


async def cmd_cancel(engine: Engine, args: argparse.Namespace) -> int:
    cancelled = await engine.cancel(args.run_id)
    print("cancelled" if cancelled else "already finished; nothing to cancel")
    return 0


async def cmd_demo(engine: Engine | None, args: argparse.Namespace) -> int:
    from werkfluss.cli.demo import run_approval_demo, run_demo

    if args.name == "approval":
        await run_approval_demo(args.dsn, interactive=args.interactive)
    else:
        await run_demo(args.dsn)
    return 0


# --- arguments ---------------------------------------------------------------------------


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad arguments before connecting, with the limits every door applies.

    Parses the JSON arguments (``args.positional``, ``args.payload_value``);
    raises :class:`InvalidArgument`, whose message becomes the one error line.
    """
    if args.command == "start":
        limits.check_workflow_name(args.name)
        if args.run_id is not None:
            limits.check_run_id(args.run_id)
        if args.timeout is not None:
            args.timeout = parse_duration(args.timeout, what="--timeout", allow_zero=False)
        if args.wait_timeout is not None and not args.wait_timeout > 0:
            raise InvalidArgument(
                f"--wait-timeout must be a positive number of seconds, got {args.wait_timeout:g}"
            )
        try:
            args.positional = json.loads(args.args)
        except json.JSONDecodeError as err:
            raise InvalidArgument(
                f"ARGS must be a JSON array, e.g. '[\"user-123\"]'; {_short(args.args)!r} is not JSON: {err}"
            ) from None
        if not isinstance(args.positional, list):
            raise InvalidArgument(
                f"ARGS must be a JSON array, e.g. '[\"user-123\"]', not {_short(args.args)}"
            )
    elif args.command == "send":
        limits.check_token(args.token)
        try:
            args.payload_value = json.loads(args.payload)
        except json.JSONDecodeError as err:
            raise InvalidArgument(
                f"JSON must be a JSON value, e.g. '{{\"approved\": true}}'; {_short(args.payload)!r} "
                f"is not JSON: {err}"
            ) from None
    elif args.command in ("show", "cancel"):
        limits.check_existing_run_id(args.run_id)
    elif args.command == "runs" and args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {args.limit}")
    elif args.command == "schedules":
        schedules_cli.check_arguments(args)


# --- wiring ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m werkfluss", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="PostgreSQL URL (default: $WERKFLUSS_DATABASE_URL, else embedded)")
    common.add_argument("--log-format", choices=("console", "json"), default="console")
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default=os.environ.get("WERKFLUSS_LOG_LEVEL", "warning").lower(),
                        help="default: $WERKFLUSS_LOG_LEVEL, else warning")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", parents=[common], help="create or update the werkfluss schema")
    demo = sub.add_parser("demo", parents=[common], help="run a demo (embedded PostgreSQL by default)")
    demo.add_argument("name", nargs="?", default="onboard", choices=("onboard", "approval"))
    demo.add_argument("--interactive", action="store_true",
                      help="approval: wait for you to send the approval yourself")

    runs = sub.add_parser("runs", parents=[common], help="list recent runs")
    runs.add_argument("--status", choices=STATUSES)
    runs.add_argument("--workflow")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")

    show = sub.add_parser("show", parents=[common], help="show one run and its log")
    show.add_argument("run_id", metavar="RUN")
    show.add_argument("--json", action="store_true")

    start = sub.add_parser("start", parents=[common], help="start a run by workflow name")
    start.add_argument("name", metavar="NAME")
    start.add_argument("args", metavar="ARGS", nargs="?", default="[]",
                       help="positional arguments as a JSON array (default [])")
    start.add_argument("--run-id", help="idempotency key: starting again returns the same run")
    start.add_argument("--timeout", help="fail the run if not finished within, e.g. 1h")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")
    start.add_argument("--wait-timeout", type=float, default=None)

    send = sub.add_parser("send", parents=[common], help="deliver a payload to a hook")
    send.add_argument("token", metavar="TOKEN")
    send.add_argument("payload", metavar="JSON", nargs="?", default="null",
                      help="the payload as JSON (default null)")

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a run")
    cancel.add_argument("run_id", metavar="RUN")

    schedules_cli.add_parser(sub, common)
    return p


COMMANDS = {
    "migrate": cmd_migrate,
    "runs": cmd_runs,
    "show": cmd_show,
    "start": cmd_start,
    "send": cmd_send,
    "cancel": cmd_cancel,
    "schedules": schedules_cli.cmd_schedules,
}


async def _run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.command == "demo":
        return await cmd_demo(None, args)
    async with Engine(args.dsn) as engine:
        return await COMMANDS[args.command](engine, args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    telemetry.configure_logging(args.log_format, args.log_level)
    try:
        return asyncio.run(_run(args))
    except WerkflussError as err:
        print(f"werkfluss: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
