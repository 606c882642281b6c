"""The workers table: who is serving, and whether they are alive.

A worker registers when it starts, beats its heartbeat every lease/3
seconds (one small update, however many runs it holds), and reaps workers
whose heartbeat stopped: their runs become claimable at once. A worker whose
own row reads ``dead`` was silent for longer than its lease (stopped,
partitioned) and has lost every run it held.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from werkfluss.clock import DatabaseClock
from werkfluss.store.connector import Connector, Row
from werkfluss.store.writes import Lease


@dataclass(frozen=True)
class Heartbeat:
    state: str  # "running" | "stopping" | "dead"
    holding: int  # runs the queue says this worker holds
    sent: float  # time.monotonic() when the heartbeat was sent


@dataclass(frozen=True)
class WorkerInfo:
    """A row of the workers table (``werkfluss workers``)."""

    id: str
    host: str
    pid: int
    version: str
    workflows: list[str]
    concurrency: int
    lease_seconds: float
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    runs_held: int
    state: str
    stopped_at: dt.datetime | None
    alive: bool  # its heartbeat vouches for it: running or stopping, heartbeat within its lease
    heartbeat_age: float = 0.0  # seconds since its last heartbeat, by the database's clock

    @classmethod
    def from_row(cls, row: Row) -> WorkerInfo:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RunLease:
    """Who holds a run, and until when (``handle.lease()``, ``werkfluss show``).

    A worker holds its runs as long as its heartbeat is younger than its
    lease; after ``expires_at`` any live worker's reaper frees them (within
    a third of that worker's lease) and the run is claimed again. Host, pid,
    state and times are ``None`` if the worker's row is gone.
    """

    worker_id: str
    host: str | None
    pid: int | None
    state: str | None  # the worker's: "running", "stopping", "dead", ...
    heartbeat_at: dt.datetime | None
    expires_at: dt.datetime | None
    seconds_left: float | None  # until expires_at, by the database's clock; < 0: expired

    @classmethod
    def from_row(cls, row: Row) -> RunLease:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


async def register(
    connector: Connector, *, id: str, host: str, pid: int, version: str, workflows: list[str],
    concurrency: int, lease_seconds: float, clock: DatabaseClock, app_name: str | None = None,
) -> None:
    sent = time.monotonic()
    row = await connector.fetch_one(
        "worker_register", id=id, host=host, pid=pid, version=version, workflows=workflows,
        concurrency=concurrency, lease_seconds=lease_seconds, app_name=app_name,
    )
    if row is not None:
        clock.observe(row["db_now"], sent, time.monotonic())


async def heartbeat(
    connector: Connector, *, id: str, runs_held: int, state: str, clock: DatabaseClock
) -> Heartbeat:
    sent = time.monotonic()
    row = await connector.fetch_one("worker_heartbeat", id=id, runs_held=runs_held, state=state)
    if row is None:
        return Heartbeat("dead", 0, sent)  # the row is gone: as good as dead
    clock.observe(row["db_now"], sent, time.monotonic())
    return Heartbeat(row["state"], int(row["holding"]), sent)


async def held_runs(connector: Connector, *, id: str) -> list[Lease]:
    rows = await connector.fetch_all("worker_held_runs", id=id)
    return [Lease(row["run_id"], str(row["lease_id"])) for row in rows]


async def reap(connector: Connector) -> int:
    """Release the runs of workers whose heartbeat stopped; returns how many."""
    row = await connector.fetch_one("reap_workers")
    return int(row["released"]) if row else 0


async def stopped(connector: Connector, *, id: str) -> None:
    await connector.execute("worker_stopped", id=id)


async def list_workers(
    connector: Connector, *, recent_seconds: float = 3600, limit: int = 100
) -> list[WorkerInfo]:
    rows = await connector.fetch_all("list_workers", recent_seconds=recent_seconds, limit=limit)
    return [WorkerInfo.from_row(row) for row in rows]


async def run_lease(connector: Connector, *, run_id: str) -> RunLease | None:
    """The lease on a run, or ``None`` if no worker holds it."""
    row = await connector.fetch_one("run_lease", run_id=run_id)
    return RunLease.from_row(row) if row else None


async def served_workflows(connector: Connector) -> set[str]:
    """The workflows that running workers with a fresh heartbeat serve."""
    rows = await connector.fetch_all("served_workflows")
    return {row["workflow"] for row in rows}
