"""The dispatch queue, in domain verbs: claim due runs, find the next due time,
release runs. (Lease renewal and finishing go through the
:class:`~werkfluss.store.recorder.Recorder`, serialized with the log writes.)

A claim is one statement: ``SELECT … FOR UPDATE SKIP LOCKED`` picks due runs,
leases them (``available_at`` becomes the lease expiry), marks them running
and returns each run with its whole log, so a resumed run is replayed without
another query.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from werkfluss.store.connector import Connector
from werkfluss.store.recorder import Lease


@dataclass(frozen=True)
class ClaimedRun:
    run_id: str
    workflow: str
    args: str  # JSON text
    kwargs: str  # JSON text
    lease: Lease
    claims: int
    previous_worker_id: str | None
    log: list[dict[str, Any]]
    deadline: dt.datetime | None
    parent_id: str | None
    wakeups: int
    inbox: list[dict[str, Any]]
    children: list[dict[str, Any]]


async def claim_runs(
    connector: Connector,
    *,
    workflows: Sequence[str],
    limit: int,
    worker_id: str,
    lease_seconds: float,
) -> list[ClaimedRun]:
    """Lease up to ``limit`` due runs of ``workflows`` for ``worker_id``."""
    if limit <= 0 or not workflows:
        return []
    rows = await connector.fetch_all(
        "claim_runs",
        workflows=list(workflows),
        limit=limit,
        worker_id=worker_id,
        lease_seconds=lease_seconds,
    )
    return [
        ClaimedRun(
            run_id=row["run_id"],
            workflow=row["workflow"],
            args=row["args"],  # decoded by the execution: a bad value fails that run only
            kwargs=row["kwargs"],
            lease=Lease(row["run_id"], str(row["lease_id"])),
            claims=row["claims"],
            previous_worker_id=row["previous_worker_id"],
            log=json.loads(row["log"]),
            deadline=row["deadline"],
            parent_id=row["parent_id"],
            wakeups=row["wakeups"] or 0,
            inbox=json.loads(row["inbox"]),
            children=json.loads(row["children"]),
        )
        for row in rows
    ]


async def seconds_until_due(connector: Connector, *, workflows: Sequence[str]) -> float | None:
    """Seconds until the next run of ``workflows`` becomes claimable (by the
    database's clock), or ``None`` if none is scheduled."""
    row = await connector.fetch_one("next_due", workflows=list(workflows))
    return None if row is None or row["seconds"] is None else float(row["seconds"])


async def release_leases(connector: Connector, leases: Iterable[Lease]) -> list[str]:
    """Make held runs claimable at once (graceful shutdown); returns the run ids released."""
    leases = list(leases)
    if not leases:
        return []
    row = await connector.fetch_one(
        "release_leases",
        run_ids=[lease.run_id for lease in leases],
        lease_ids=[lease.lease_id for lease in leases],
    )
    return list(row["run_ids"]) if row else []
