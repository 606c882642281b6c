"""``python -m werkfluss.worker --app myapp.workflows [--dsn URL] [--concurrency N]``

Imports the ``--app`` modules (which register their workflows), then serves
those workflows until SIGTERM or SIGINT. The first signal stops gracefully
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

from werkfluss import telemetry
from werkfluss.engine import Engine
from werkfluss.errors import WerkflussError
from werkfluss.runtime import workflows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m werkfluss.worker",
        description="Serve the workflows defined in your modules.",
    )
    p.add_argument("--app", action="append", required=True, metavar="MODULE",
                   help="module that defines workflows (repeatable), e.g. myapp.workflows")
    p.add_argument("--dsn", help="PostgreSQL URL (default: $WERKFLUSS_DATABASE_URL, else embedded)")
    p.add_argument("--concurrency", type=int, default=10, help="runs executed at once (default 10)")
    p.add_argument("--lease", default="30s", help="lease duration, e.g. 30s (default)")
    p.add_argument("--poll", default="5s", help="fallback poll interval (default 5s)")
    p.add_argument("--shutdown-grace", default="10s",
                   help="time in-flight steps get to finish on SIGTERM (default 10s)")
    p.add_argument("--workflow", action="append", metavar="NAME",
                   help="serve only these workflows (repeatable; default: all registered)")
    p.add_argument("--migrate", action="store_true", help="apply migrations before starting")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default=os.environ.get("WERKFLUSS_LOG_LEVEL", "info").lower(),
                   help="default: $WERKFLUSS_LOG_LEVEL, else info")
    p.add_argument("--pool-size", type=int, default=10,
                   help="the most connections of the application pool that code in the process "
                        "uses through the Engine (default 10); the worker's own pools are fixed: "
                        "claims and reads 4, writes 2, heartbeat 1, LISTEN 1")
    p.add_argument("--cache-size", type=int, default=256,
                   help="suspended runs kept in memory to resume without replaying their log "
                        "(default 256; 0 turns the cache off)")
    p.add_argument("--listen-dsn", help="direct connection for LISTEN when --dsn goes through "
                   "PgBouncer in transaction mode (default: $WERKFLUSS_LISTEN_URL, else --dsn)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (needs werkfluss[metrics]; "
                        "default: no metrics)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--metrics-interval", default="15s", metavar="DURATION",
                   help="how often the queue depth gauges are sampled, e.g. 15s (default)")
    return p


def import_apps(modules: list[str]) -> None:
    """Import the user's modules; a clear message if one cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                raise SystemExit(
                    f"werkfluss worker: cannot import --app {name}: {err}. Run the worker from "
                    "your project's directory or put the package on PYTHONPATH"
                ) from None
            raise
    if not workflows.registered():
        raise SystemExit(
            f"werkfluss worker: {', '.join(modules)} defined no @workflow; nothing to serve"
        )


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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    telemetry.configure_logging(args.log_format, args.log_level)
    import_apps(args.app)
    try:
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
