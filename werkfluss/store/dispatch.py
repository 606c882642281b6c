"""The dispatch queue, in domain verbs: claim due runs, read their logs and
inputs, find the next due time.

A claim is one statement: ``SELECT … FOR UPDATE SKIP LOCKED`` picks due runs,
leases them to the worker, marks them running and returns what may unblock
each (undelivered hook payloads, ended children) with the server's clock.
Logs are read in a second query, only for claimed runs that have a log and
that the worker does not already have in its cache.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from werkfluss.clock import DatabaseClock
from werkfluss.records import ChildOutcome, LogRecord, Payload
from werkfluss.store.connector import Connector, Row
from werkfluss.store.writes import Lease, payload_from_json


@dataclass
class RunInputs:
    """What may unblock a run: undelivered payloads, ended children, the wake-up count."""

    wakeups: int = 0
    payloads: list[Payload] = field(default_factory=list)
    children: list[ChildOutcome] = field(default_factory=list)
    error: str | None = None  # set when the inputs could not be read (a value nobody can decode)


@dataclass
class ClaimedRun:
    run_id: str
    workflow: str
    args: str  # JSON text
    kwargs: str  # JSON text
    lease: Lease
    claims: int
    previous_worker_id: str | None
    taken_over: bool  # the previous holder did not let go (it died or was cut off)
    deadline: dt.datetime | None
    parent_id: str | None
    started_at: dt.datetime
    inputs: RunInputs
    has_log: bool = False
    log: list[LogRecord] = field(default_factory=list)
    traceparent: str | None = None  # the W3C trace context of whoever started the run
    waited: float = 0.0  # seconds the run was due before this claim


@dataclass
class Claim:
    """What one claim got: the runs leased, and when the next one is due."""

    runs: list[ClaimedRun]
    # Seconds (by the database's clock) until the next run of these workflows
    # becomes claimable, when fewer runs than asked for were leased; None if
    # none is scheduled or all asked for were leased.
    next_due: float | None = None


async def claim_runs(
    connector: Connector,
    *,
    workflows: Sequence[str],
    limit: int,
    worker_id: str,
    clock: DatabaseClock | None = None,
) -> Claim:
    """Lease up to ``limit`` due runs of ``workflows`` to ``worker_id``, in one round trip."""
    if limit <= 0 or not workflows:
        return Claim([])
    sent = time.monotonic()
    rows = await connector.fetch_all("claim_runs", workflows=list(workflows), limit=limit,
                                     worker_id=worker_id)
    received = time.monotonic()
    if rows and clock is not None:
        clock.observe(rows[0]["db_now"], sent, received)
    due = rows[0]["next_due"] if rows else None
    return Claim(
        [
            ClaimedRun(
                run_id=row["run_id"],
                workflow=row["workflow"],
                args=row["args"],  # decoded by the run: a bad value fails that run only
                kwargs=row["kwargs"],
                lease=Lease(row["run_id"], str(row["lease_id"]), keyed=row["concurrency_key"] is not None),
                claims=row["claims"],
                previous_worker_id=row["previous_worker_id"],
                taken_over=row["previous_worker_id"] is not None,
                deadline=row["deadline"],
                parent_id=row["parent_id"],
                started_at=row["started_at"],
                inputs=inputs_from_row(row),
                has_log=row["has_log"],
                traceparent=row["traceparent"],
                waited=row["waited_s"],
            )
            for row in rows
            if row["run_id"] is not None  # leasing none returns one row: next_due alone
        ],
        None if due is None else float(due),
    )


async def read_logs(connector: Connector, run_ids: Sequence[str]) -> dict[str, list[LogRecord]]:
    """The logs of ``run_ids`` (records in seq order)."""
    logs: dict[str, list[LogRecord]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return logs
    for row in await connector.fetch_all("read_logs", run_ids=list(run_ids)):
        logs[row["run_id"]].append(record_from_row(row))
    return logs


async def run_inputs(connector: Connector, run_id: str) -> RunInputs:
    row = await connector.fetch_one("run_inputs", run_id=run_id)
    return inputs_from_row(row) if row is not None else RunInputs()


def record_from_row(row: Row) -> LogRecord:
    return LogRecord(
        seq=row["seq"], kind=row["kind"], name=row["name"], status=row["status"],
        input=row["input"], output=row["output"], error=row["error"], attempts=row["attempts"],
        started_at=row["started_at"], finished_at=row["finished_at"],
    )


def inputs_from_row(row: Row) -> RunInputs:
    """Parse what ``_run_inputs`` returned; a value nobody can decode is reported, not raised."""
    inputs = RunInputs(wakeups=row.get("wakeups") or 0)
    try:
        inputs.payloads = [payload_from_json(p) for p in json.loads(row["inbox"] or "[]")]
        inputs.children = [_child(c) for c in json.loads(row["children"] or "[]")]
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        inputs.error = f"{type(err).__name__}: {err}"[:500]
    return inputs


def _child(entry: dict[str, Any]) -> ChildOutcome:
    finished = entry.get("finished_at")
    if isinstance(finished, str):
        finished = dt.datetime.fromisoformat(finished)
    result = entry.get("result")
    error = entry.get("error")
    return ChildOutcome(
        run_id=str(entry["run_id"]),
        status=str(entry["status"]),
        result=None if result is None else json.dumps(result, ensure_ascii=False, separators=(",", ":")),
        error=None if error is None else json.dumps(error, ensure_ascii=False),
        finished_at=finished,
    )
