"""The ``dashboard`` command: check the options, then serve the app with uvicorn.

    werkfluss dashboard --port 8080                      # read-only, on 127.0.0.1
    WERKFLUSS_DASHBOARD_TOKEN=… werkfluss dashboard      # with actions

It prints the address it listens on (``--port 0`` picks a free port) and
serves until interrupted.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import TYPE_CHECKING, Any

from werkfluss import telemetry
from werkfluss.cli.dashboard.guard import ENV_TOKEN, token_from
from werkfluss.errors import ConfigurationError, InvalidArgument

if TYPE_CHECKING:
    from werkfluss.engine import Engine

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``dashboard`` subcommand (see :mod:`werkfluss.cli.main`)."""
    parser = sub.add_parser(
        "dashboard", parents=[common], help="serve the web dashboard (runs, timelines, workers)",
        description="Serve the web dashboard: runs with filters and counts, each run's timeline and "
                    "log, the workers; with an access token also cancel, retry and send. Needs "
                    "pip install 'werkfluss[dashboard]'.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=serve, check=check_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (the common ``--dsn`` and logging options come from the CLI)."""
    parser.add_argument("--host", default=DEFAULT_HOST, metavar="H",
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                             "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                        help=f"TCP port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--token", default=None, metavar="T",
                        help=f"access token that allows cancel, retry and send (default: ${ENV_TOKEN}; "
                             "without one the dashboard is read-only). Prefer the environment variable: "
                             "a command line is visible to other users of the machine")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before connecting; sets ``args.access_token``."""
    if not 0 <= args.port <= 65535:
        raise InvalidArgument(f"--port must be from 0 to 65535, got {args.port}")
    if not args.host.strip():
        raise InvalidArgument("--host is empty; use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
    args.access_token = token_from(args.token)


def _missing_extra(err: ImportError) -> ConfigurationError:
    return ConfigurationError(
        f"the dashboard needs packages that are not installed ({err.name or err}); "
        "install them with: pip install 'werkfluss[dashboard]'"
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {err.strerror or err}; "
            "choose another --port (0 picks a free one)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(engine: Engine, args: argparse.Namespace) -> int:
    """Serve the dashboard for ``engine`` until interrupted."""
    try:
        import uvicorn

        from werkfluss.cli.dashboard.app import create_app
    except ImportError as err:
        raise _missing_extra(err) from None
    token = getattr(args, "access_token", None)
    app = create_app(engine, token=token)
    await app.state.dashboard.check_grants()  # fail before listening, with the missing grants
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    mode = "read-only" if token is None else "actions allowed with the access token"
    print(f"werkfluss dashboard: http://{shown}:{port}/ ({mode}); Ctrl-C stops it", flush=True)
    telemetry.logger().info("dashboard.started", host=host, port=port, read_only=token is None)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                            proxy_headers=True, server_header=False)
    server = uvicorn.Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
    print("werkfluss dashboard: stopped", file=sys.stderr, flush=True)
    return 0
