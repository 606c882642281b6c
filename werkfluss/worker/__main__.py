"""``python -m werkfluss.worker --app myapp.workflows [--dsn URL] [--concurrency N]``

Also ``werkfluss worker …`` / ``python -m werkfluss worker …``. Imports the
``--app`` modules (which register their workflows), then serves those
workflows until SIGTERM or SIGINT, pruning finished runs older than
``--retention`` (default 14 days) on the way. The first signal stops gracefully
(in-flight steps finish, runs are released at once); a second one cancels
in-flight steps and releases their runs immediately.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
import traceback
from pathlib import Path

from werkfluss import telemetry
from werkfluss.durations import parse_duration
from werkfluss.engine import Engine
from werkfluss.errors import AppImportError, InvalidArgument, WerkflussError
from werkfluss.runtime import workflows


def parser(prog: str = "python -m werkfluss.worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve the workflows defined in your modules. Durations take units: "
                    "400ms, 30s, 5m, 1h, 14d (a bare number is seconds).",
    )
    p.add_argument("--app", action="append", required=True, metavar="MODULE",
                   help="module that defines workflows, by its import name (repeatable), e.g. "
                        "myapp.workflows; not a file path")
    p.add_argument("--dsn", metavar="URL",
                   help="PostgreSQL connection string (default: $WERKFLUSS_DATABASE_URL, else embedded)")
    p.add_argument("--concurrency", type=int, default=10, metavar="N",
                   help="runs executed at once, 1 to 10000 (default 10)")
    p.add_argument("--lease", default="30s", metavar="DURATION",
                   help="how long the heartbeat vouches for held runs: a killed worker's runs are "
                        "taken over after at most this long; 500ms to 1h (default 30s)")
    p.add_argument("--poll", default="5s", metavar="DURATION",
                   help="fallback poll interval when no notification arrives; 10ms to 1h (default 5s)")
    p.add_argument("--shutdown-grace", default="10s", metavar="DURATION",
                   help="time in-flight steps get to finish on SIGTERM, at most 1h (default 10s)")
    p.add_argument("--retention", default="14d", metavar="DURATION|off",
                   help="delete finished runs older than this, with their log, hooks and payloads, "
                        "in small batches, one worker at a time (default 14d; off keeps everything)")
    p.add_argument("--prune-interval", default="5m", metavar="DURATION",
                   help="how often the worker prunes, with 25%% jitter; 10ms to 1d (default 5m)")
    p.add_argument("--workflow", action="append", metavar="NAME",
                   help="serve only these workflows (repeatable; default: all registered)")
    p.add_argument("--migrate", action="store_true", help="apply migrations before starting")
    p.add_argument("--log-format", choices=("console", "json"), default="console",
                   help="how log events are rendered on stderr (default console)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default=os.environ.get("WERKFLUSS_LOG_LEVEL", "info").lower(),
                   help="default: $WERKFLUSS_LOG_LEVEL, else info")
    p.add_argument("--pool-size", type=int, default=10, metavar="N",
                   help="the most connections of the application pool that code in the process "
                        "uses through the Engine (default 10); the worker's own pools are fixed: "
                        "claims and reads 4, writes 2, heartbeat 1, LISTEN 1")
    p.add_argument("--cache-size", type=int, default=256, metavar="N",
                   help="suspended runs kept in memory to resume without replaying their log "
                        "(default 256; 0 turns the cache off)")
    p.add_argument("--listen-dsn", metavar="URL", help="direct connection for LISTEN when --dsn goes through "
                   "PgBouncer in transaction mode (default: $WERKFLUSS_LISTEN_URL, else --dsn)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (needs werkfluss[metrics]; "
                        "default: no metrics)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--metrics-interval", default="15s", metavar="DURATION",
                   help="how often the queue depth gauges are sampled, e.g. 15s (default)")
    return p


def module_for_path(app: str) -> str | None:
    """What to pass instead of a file path given as ``--app``, or ``None`` if
    ``app`` is not a path.

        >>> module_for_path("crashapp.py")
        '--app crashapp'
        >>> module_for_path("./myapp/workflows.py")
        '--app myapp.workflows'
        >>> module_for_path("/srv/jobs/tasks.py")
        '--app tasks, with PYTHONPATH=/srv/jobs'
    """
    text = app.replace("\\", "/")
    if not (text.endswith(".py") or "/" in text):
        return None
    path = Path(text.removesuffix(".py"))
    if path.is_absolute() or ".." in path.parts:
        return f"--app {path.name}, with PYTHONPATH={path.parent}"
    parts = [part for part in path.parts if part != "."]
    if parts and all(part.isidentifier() for part in parts):
        return "--app " + ".".join(parts)
    return "a dotted module name, e.g. --app myapp.workflows"


def import_apps(modules: list[str]) -> None:
    """Import the user's modules; :class:`AppImportError` if one cannot be imported.

    The current directory is on the import path, as with ``python -m``, also
    when the worker runs as the ``werkfluss`` console script.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        meant = module_for_path(name)
        if meant is not None:
            raise AppImportError(
                f"--app {name} is a file path; --app takes the module's import name: {meant} "
                "(run the worker from the directory that contains the module, or put that "
                "directory on PYTHONPATH)"
            )
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                raise AppImportError(
                    f"cannot import --app {name}: {err}. Run the worker from "
                    "your project's directory or put the package on PYTHONPATH"
                ) from None
            traceback.print_exc()
            raise AppImportError(f"importing --app {name} failed: {err} (traceback above)") from err
        except Exception as err:  # the module itself raised: its traceback is what helps
            traceback.print_exc()
            raise AppImportError(
                f"importing --app {name} failed: {type(err).__name__}: {err} (traceback above)"
            ) from err
    if not workflows.registered():
        raise AppImportError(f"{', '.join(modules)} defined no @workflow; nothing to serve")


def retention_setting(value: str) -> str | None:
    """``--retention``: a positive duration, or ``off``."""
    if value.strip().lower() in ("off", "none", "never"):
        return None
    if parse_duration(value, what="--retention") == 0:
        raise InvalidArgument("--retention must be positive; use --retention off to keep every run")
    return value


async def serve(args: argparse.Namespace) -> None:
    log = telemetry.logger()
    async with Engine(args.dsn, pool_size=args.pool_size, listen_dsn=args.listen_dsn) as engine:
        if args.migrate:
            await engine.migrate()
        worker = engine.worker(
            concurrency=args.concurrency,
            workflows=args.workflow,
            lease=args.lease,
            poll_interval=args.poll,
            shutdown_grace=args.shutdown_grace,
            cache_size=args.cache_size,
            retention=args.retention,
            prune_interval=args.prune_interval,
        )
        stop = asyncio.Event()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            log.info("worker.signal", signal=signal.Signals(signum).name, count=signals)
            stop.set()
            if signals > 1:
                worker.force_stop()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        metrics = None
        if args.metrics_port is not None:
            from werkfluss.worker.metrics import WorkerMetrics

            metrics = WorkerMetrics(worker, sample_interval=args.metrics_interval)
            metrics.serve(args.metrics_port, args.metrics_host)
            metrics.start()
        try:
            await worker.start()
            await stop.wait()
        finally:
            await worker.stop()
            if metrics is not None:
                await metrics.stop()


def main(argv: list[str] | None = None, prog: str = "python -m werkfluss.worker") -> int:
    args = parser(prog).parse_args(argv)
    telemetry.configure_logging(args.log_format, args.log_level)
    try:
        args.retention = retention_setting(args.retention)
        import_apps(args.app)
        asyncio.run(serve(args))
    except WerkflussError as err:
        print(f"werkfluss worker: {err}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
