"""Write ``legacy-0.1.sql``: runs recorded by werkfluss 0.1, left mid-flight.

Run from a checkout of the previous release (its code on PYTHONPATH) with
this directory's ``legacy_app.py``::

    git worktree add /tmp/werkfluss-0.1 15a6d15
    PYTHONPATH=/tmp/werkfluss-0.1:. python tests/upgrade/record_legacy.py \\
        postgresql://postgres@127.0.0.1:5432/postgres tests/upgrade/legacy-0.1.sql

It creates a scratch database, migrates it with the old code, starts the
runs with an old worker inside this process, waits until each is where it
should be (sleeping, waiting), stops the worker, and dumps the werkfluss
tables' rows as INSERT statements.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

import legacy_app

from werkfluss import Engine

TABLES = ["runs", "events", "queue", "hooks", "hook_payloads"]


async def wait_for(engine: Engine, run_id: str, statuses: set[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (await engine.handle(run_id).status()) not in statuses:
        if time.monotonic() > deadline:
            raise SystemExit(f"{run_id} did not reach {statuses}")
        await asyncio.sleep(0.05)


async def record(dsn: str) -> None:
    async with Engine(dsn) as engine:
        await engine.migrate()
        async with engine.worker(lease="2s", poll_interval="0.1s"):
            await engine.start(legacy_app.nap, 1, run_id="legacy-nap")
            await engine.start(legacy_app.approval, "legacy:approval", run_id="legacy-approval")
            await engine.start(legacy_app.race_pending, "legacy:race-pending", run_id="legacy-race-pending")
            await engine.start(legacy_app.race_decided, "legacy:race-decided", run_id="legacy-race-decided")
            await engine.start(legacy_app.timed_wait, "legacy:timed", run_id="legacy-timed")
            await engine.start(legacy_app.parent, "legacy:child", run_id="legacy-parent")
            await wait_for(engine, "legacy-nap", {"sleeping"})
            for run_id in ("legacy-approval", "legacy-race-pending", "legacy-timed", "legacy-parent"):
                await wait_for(engine, run_id, {"waiting"})
            await wait_for(engine, "legacy-parent:2", {"waiting"})
            # race_decided: its sleep wins, then it waits on a second hook.
            await wait_for(engine, "legacy-race-decided", {"waiting"})
            deadline = time.monotonic() + 10
            while True:
                log = await engine.handle("legacy-race-decided").log()
                if any(r.kind == "race" for r in log) and any(r.name.endswith(":second") for r in log):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("legacy-race-decided did not record its race")
                await asyncio.sleep(0.05)
            await wait_for(engine, "legacy-race-decided", {"waiting"})


def main() -> None:
    server, out = sys.argv[1], Path(sys.argv[2])
    name = "werkfluss_legacy_record"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    asyncio.run(record(dsn))
    dump = subprocess.run(
        ["pg_dump", "--data-only", "--inserts", "--no-owner", "--no-privileges",
         *[f"--table=werkfluss.{t}" for t in TABLES], dsn],
        check=True, capture_output=True, text=True,
    ).stdout
    body = [line for line in dump.splitlines()
            if line.startswith("INSERT INTO") or line.startswith("SELECT pg_catalog.setval")]
    out.write_text(
        "-- Runs recorded by werkfluss 0.1 (tests/upgrade/record_legacy.py), mid-flight.\n"
        "-- Load after migrations 0001-0004, then migrate to the current schema.\n"
        + "\n".join(body) + "\n"
    )
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"wrote {out} ({len(body)} statements)")


if __name__ == "__main__":
    main()
