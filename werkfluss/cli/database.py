"""The commands about the database itself: ``migrate`` and ``dsn``.

    werkfluss migrate [--dsn URL]
    werkfluss dsn [--show-password] [--quiet] [--hold]

``dsn`` prints the connection string the other commands would use (``--dsn``,
else ``$WERKFLUSS_DATABASE_URL``, else the embedded PostgreSQL) with its
password as ``***``, where it comes from, and a ``psql`` command that reaches
it. For the embedded default it also says where the data directory is; it
starts (or joins) the embedded server to learn its address, and ``--hold``
keeps it running until Ctrl-C so that psql can reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

from werkfluss.engine import ENV_DSN, ENV_LISTEN_DSN, Engine
from werkfluss.store import embedded
from werkfluss.store.connector import describe_dsn, redact_dsn, without_password


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("migrate", parents=[common], help="create or update the werkfluss schema"
                   ).set_defaults(handler=cmd_migrate)
    dsn = sub.add_parser(
        "dsn", parents=[common], help="show the database the commands use, and how to reach it with psql",
        description="Print the connection string the commands would use (--dsn, else "
                    "$WERKFLUSS_DATABASE_URL, else the embedded PostgreSQL), with the password "
                    "replaced by ***, where it comes from, and a psql command that reaches it.",
    )
    dsn.add_argument("--show-password", action="store_true",
                     help="print the password instead of *** (it then shows on your screen)")
    dsn.add_argument("--quiet", "-q", action="store_true",
                     help="print the connection string only, e.g. for psql \"$(werkfluss dsn -q)\"")
    dsn.add_argument("--hold", action="store_true",
                     help="embedded PostgreSQL: keep it running until Ctrl-C, so that psql can reach it")
    dsn.set_defaults(handler=cmd_dsn, uses_engine=False)


async def cmd_migrate(engine: Engine, args: argparse.Namespace) -> int:
    applied = await engine.migrate()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def _line(label: str, text: str) -> None:
    print(f"  {label + ':':8} {text}")


async def cmd_dsn(args: argparse.Namespace) -> int:
    configured = args.dsn or os.environ.get(ENV_DSN) or None
    if configured is not None:
        _print_configured(configured, "--dsn" if args.dsn else f"${ENV_DSN}", args)
        return 0
    server = await asyncio.to_thread(embedded.EmbeddedServer.start)
    print(server.uri)
    if args.quiet and not args.hold:
        return 0
    if not args.quiet:
        _print_embedded(server, args.prog)
    if args.hold:
        print("\n  holding the embedded PostgreSQL until Ctrl-C …", flush=True)
        await _until_signalled()
    return 0  # the server stops if this was the last process using it


async def _until_signalled() -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    await done.wait()


def _print_configured(dsn: str, source: str, args: argparse.Namespace) -> None:
    shown = dsn if args.show_password else redact_dsn(dsn)
    print(shown)
    if args.quiet:
        return
    _line("from", source)
    _line("server", describe_dsn(dsn))
    bare = without_password(dsn)
    if bare is None or args.show_password:
        _line("psql", embedded.psql_command(dsn if bare is None else shown, shipped=False))
    else:
        _line("psql", f"{embedded.psql_command(bare, shipped=False)}   (asks for the password, "
                      "or reads ~/.pgpass)")
    listen = os.environ.get(ENV_LISTEN_DSN)
    if listen:
        _line("LISTEN", f"{listen if args.show_password else redact_dsn(listen)} (${ENV_LISTEN_DSN})")


def _print_embedded(server: embedded.EmbeddedServer, prog: str) -> None:
    state = embedded.state(server.data_dir)
    _line("from", f"the embedded PostgreSQL (no --dsn, no ${ENV_DSN})")
    _line("data", f"{server.data_dir} (set ${embedded.ENV_DIR} to use another directory)")
    _line("log", str(state.log))
    pid = f"pid {state.pid}" if state.pid else "running"
    if embedded.as_root():
        pid += f", as the system user {embedded.SYSTEM_USER} (PostgreSQL does not run as root)"
    _line("server", f"{pid}; it runs while a werkfluss process uses it and stops when the last exits")
    _line("psql", embedded.psql_command(server.uri))
    print(f"  {'':8} (reachable while the server runs: keep it up with `{prog} dsn --hold` in "
          "another shell)")
