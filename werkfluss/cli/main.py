"""``werkfluss <command>`` (or ``python -m werkfluss <command>``): operate werkfluss from a shell.

    werkfluss migrate | dsn | demo [onboard|approval] | worker --app MODULE
    werkfluss runs | show RUN | start NAME ARGS | send TOKEN JSON | cancel RUN | retry RUN
    werkfluss workers | prune [--older-than 14d] [--dry-run]
    werkfluss schedules [list | pause NAME | resume NAME | trigger NAME | delete NAME]
    werkfluss queues [--json]
    werkfluss dashboard [--port 8080] [--host 127.0.0.1] [--token TOKEN]

Every command takes ``--dsn`` (default: ``$WERKFLUSS_DATABASE_URL``, else the
embedded PostgreSQL). Errors print one line to stderr and exit with status 1.
``worker`` runs the worker entry point (``python -m werkfluss.worker``).

Each concept's commands live in their own module (``database``, ``runs``,
``workers``, ``retention``), which adds its subcommands with ``register()``
and sets ``handler`` (and ``check``, run before connecting) on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from werkfluss import telemetry
from werkfluss.cli import database, queues, retention, runs, schedules, workers
from werkfluss.cli.dashboard import serve as dashboard
from werkfluss.engine import Engine
from werkfluss.errors import WerkflussError

# The modules whose subcommands `werkfluss` offers, in the order of its help.
# A new concept's commands: a module with `register(sub, common)`, added here.
COMMAND_MODULES: tuple[Any, ...] = (runs, workers, retention, schedules, queues, dashboard)

DESCRIPTION = "Operate werkfluss: durable workflows that live in PostgreSQL."
EPILOG = ("Durations take units: 400ms, 30s, 5m, 1h, 14d (a bare number is seconds). "
          "Run `%(prog)s COMMAND --help` for a command's options.")


def _demo(sub: Any, common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", parents=[common], help="run a demo (embedded PostgreSQL by default)")
    demo.add_argument("name", nargs="?", default="onboard", choices=("onboard", "approval"),
                      help="onboard: a run, then a worker killed mid-run and its run taken over "
                           "(default); approval: a run waiting on a hook")
    demo.add_argument("--interactive", action="store_true",
                      help="approval: wait (up to 120s) for you to send the approval yourself")
    demo.set_defaults(handler=cmd_demo, uses_engine=False)


async def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here: the demo module registers its workflows when imported.
    from werkfluss.cli.demo import run_approval_demo, run_demo

    if args.name == "approval":
        await run_approval_demo(args.dsn, interactive=args.interactive)
    else:
        await run_demo(args.dsn)
    return 0


def parser(prog: str = "werkfluss") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", metavar="URL",
                        help="PostgreSQL connection string (default: $WERKFLUSS_DATABASE_URL, "
                             "else the embedded PostgreSQL)")
    common.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="how log events are rendered on stderr (default console)")
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default=os.environ.get("WERKFLUSS_LOG_LEVEL", "warning").lower(),
                        help="default: $WERKFLUSS_LOG_LEVEL, else warning")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    database.register(sub, common)
    _demo(sub, common)
    sub.add_parser("worker", add_help=False,
                   help=f"serve workflows: {prog} worker --app MODULE (python -m werkfluss.worker)")
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return p


async def _run(args: argparse.Namespace) -> int:
    check = getattr(args, "check", None)
    if check is not None:
        check(args)  # refuse bad arguments before connecting
    if not getattr(args, "uses_engine", True):
        return int(await args.handler(args))
    async with Engine(args.dsn) as engine:
        return int(await args.handler(engine, args))


def main(argv: list[str] | None = None, prog: str = "werkfluss") -> int:
    """Run one command; returns the exit status.

    ``prog`` is how the user called it: ``werkfluss`` (the console script)
    or ``python -m werkfluss``; help and hints use it.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from werkfluss.worker.__main__ import main as worker_main

        return worker_main(argv[1:], prog=f"{prog} worker")
    args = parser(prog).parse_args(argv)
    args.prog = prog
    telemetry.configure_logging(args.log_format, args.log_level)
    try:
        return asyncio.run(_run(args))
    except WerkflussError as err:
        print(f"werkfluss: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(prog="python -m werkfluss"))
