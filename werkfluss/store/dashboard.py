"""What the dashboard reads and records, beyond the engine's own verbs.

Every read needs only ``SELECT`` on the tables it names; the one write of
its own is a row of ``werkfluss.audit``. Sending to a hook goes through the
public ``werkfluss.send()`` function, so a role with ``werkfluss_client``'s
rights plus read access serves the whole dashboard (docs/operations.md,
"Dashboard", lists the grants).

    rows = await list_runs(connector, status="failed", id_prefix="order:", limit=50)
    counts = await count_runs(connector, since_seconds=3600)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from werkfluss.store.connector import Connector, Row

#: The most runs a count looks at (the newest first): each poll costs the same
#: however long the history is; a count that reaches it is shown as "N+".
COUNT_CAP = 100_000


@dataclass(frozen=True)
class RunSummary:
    """A run as the dashboard's list shows it: no arguments, result or traceback."""

    run_id: str
    workflow: str
    status: str
    parent_id: str | None
    wake_at: dt.datetime | None
    waiting_on: str | None
    deadline: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    error_type: str | None
    error_message: str | None

    @classmethod
    def from_row(cls, row: Row) -> RunSummary:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ChildRun:
    """A child run, as its parent's page lists it."""

    run_id: str
    workflow: str
    status: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error_type: str | None
    error_message: str | None

    @classmethod
    def from_row(cls, row: Row) -> ChildRun:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class HookState:
    """A hook of a run: its token, and the payloads sent to it."""

    token: str
    seq: int
    multi: bool
    created_at: dt.datetime
    received: int  # payloads sent to it, read or not
    unread: int  # payloads the run has not received yet

    @classmethod
    def from_row(cls, row: Row) -> HookState:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Holder:
    """A live run's queue row: who holds it, or when it is due."""

    held: bool
    worker_id: str | None
    claims: int
    due_at: dt.datetime | None  # when a run nobody holds becomes claimable (None: only an event wakes it)
    host: str | None
    pid: int | None
    worker_state: str | None
    heartbeat_at: dt.datetime | None
    lease_expires_at: dt.datetime | None  # the holder's last heartbeat plus its lease

    @classmethod
    def from_row(cls, row: Row) -> Holder:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AuditRecord:
    """One action taken through the dashboard (``werkfluss.audit``)."""

    id: int
    at: dt.datetime
    action: str  # "cancel" | "retry" | "send"
    run_id: str | None
    detail: dict[str, Any]
    client: str | None

    @classmethod
    def from_row(cls, row: Row) -> AuditRecord:
        detail = json.loads(row["detail"]) if row["detail"] else {}
        return cls(id=row["id"], at=row["at"], action=row["action"], run_id=row["run_id"],
                   detail=detail, client=row["client"])


async def list_runs(
    connector: Connector, *, status: str | None = None, workflow: str | None = None,
    id_prefix: str | None = None, since_seconds: float | None = None, limit: int = 50,
) -> list[RunSummary]:
    """The newest runs matching every filter given (``None``: no filter)."""
    rows = await connector.fetch_all(
        "dashboard_list_runs", status=status, workflow=workflow, id_prefix=id_prefix,
        since_seconds=since_seconds, limit=limit,
    )
    return [RunSummary.from_row(row) for row in rows]


async def count_runs(
    connector: Connector, *, workflow: str | None = None, id_prefix: str | None = None,
    since_seconds: float | None = None, cap: int = COUNT_CAP,
) -> dict[str, int]:
    """Runs by status among the newest ``cap`` that match the filters."""
    rows = await connector.fetch_all(
        "dashboard_count_runs", workflow=workflow, id_prefix=id_prefix,
        since_seconds=since_seconds, cap=cap,
    )
    return {row["status"]: int(row["runs"]) for row in rows}


async def run_children(connector: Connector, *, run_id: str, limit: int = 1000) -> list[ChildRun]:
    rows = await connector.fetch_all("dashboard_run_children", run_id=run_id, limit=limit)
    return [ChildRun.from_row(row) for row in rows]


async def run_hooks(connector: Connector, *, run_id: str) -> list[HookState]:
    rows = await connector.fetch_all("dashboard_run_hooks", run_id=run_id)
    return [HookState.from_row(row) for row in rows]


async def run_holder(connector: Connector, *, run_id: str) -> Holder | None:
    """The run's queue row; ``None`` once the run has finished (it left the queue)."""
    row = await connector.fetch_one("dashboard_run_holder", run_id=run_id)
    return Holder.from_row(row) if row else None


async def run_version(connector: Connector, *, run_id: str) -> str:
    """A short string that changes whenever the run's page would show something new."""
    row = await connector.fetch_one("dashboard_run_version", run_id=run_id)
    if row is None:
        return ""
    changed = row["children_at"].isoformat() if row["children_at"] else "-"
    return (f"{row['status']}|{row['updated_at'].isoformat()}|{row['records']}|{changed}"
            f"|{row['payloads']}|{row['actions']}")


@dataclass(frozen=True)
class Sent:
    """What :func:`send` did."""

    outcome: str  # "delivered" | "stored", or why it was refused (see HookRefused)
    run_id: str | None  # the run that owns the hook, if a hook has the token

    @property
    def accepted(self) -> bool:
        return self.outcome in ("delivered", "stored")


async def send(connector: Connector, *, token: str, payload: str) -> Sent:
    """Send ``payload`` (JSON text) through the public ``werkfluss.send()``.

    The outcome is what ``engine.send`` reports: ``delivered`` or ``stored``,
    or why it was refused (``unknown_token``, ``already_used``, ``run_ended``,
    ``duplicate_early_payload``; see :class:`~werkfluss.errors.HookRefused`),
    told from the hook as it was when the statement began.
    """
    row = await connector.fetch_one("dashboard_send", token=token, payload=payload)
    assert row is not None
    run_id = row["hook_run"]
    if row["accepted"]:
        return Sent("delivered" if run_id is not None else "stored", run_id)
    if run_id is None:
        return Sent("unknown_token" if token.startswith("wfh_") else "duplicate_early_payload", None)
    if row["run_status"] in (None, "completed", "failed", "cancelled"):
        return Sent("run_ended", run_id)
    return Sent("already_used", run_id)


async def record_action(
    connector: Connector, *, action: str, run_id: str | None, detail: dict[str, Any], client: str | None,
) -> AuditRecord:
    """Add a row to ``werkfluss.audit``."""
    text = json.dumps(detail, default=str, ensure_ascii=False)
    row = await connector.fetch_one(
        "audit_record", action=action, run_id=run_id, detail=text, client=client,
    )
    assert row is not None
    return AuditRecord(id=row["id"], at=row["at"], action=action, run_id=run_id, detail=detail,
                       client=client)


async def list_actions(
    connector: Connector, *, run_id: str | None = None, limit: int = 100
) -> list[AuditRecord]:
    """The newest audit records, of one run or of all."""
    rows = await connector.fetch_all("audit_list", run_id=run_id, limit=limit)
    return [AuditRecord.from_row(row) for row in rows]


#: What the dashboard's pages read, as ``dashboard_privileges`` names it: column -> the grant.
READ_GRANTS = {
    "select_runs": "SELECT on werkfluss.runs",
    "select_events": "SELECT on werkfluss.events",
    "select_queue": "SELECT on werkfluss.queue",
    "select_hooks": "SELECT on werkfluss.hooks",
    "select_hook_payloads": "SELECT on werkfluss.hook_payloads",
    "select_workers": "SELECT on werkfluss.workers",
    "select_pending_reasons": "SELECT on werkfluss.pending_reasons",
    "select_audit": "SELECT on werkfluss.audit",
    "select_queues": "SELECT on werkfluss.queues",
    "select_rate_limits": "SELECT on werkfluss.rate_limits",
    "select_schedules": "SELECT on werkfluss.schedules",
}
#: What its actions need besides.
ACTION_GRANTS = {
    "insert_audit": "INSERT on werkfluss.audit",
    "execute_cancel_run": "EXECUTE on werkfluss.cancel_run(text)",
    "execute_retry_run": "EXECUTE on werkfluss.retry_run(text)",
    "execute_send": "EXECUTE on werkfluss.send(text, jsonb)",
    "execute_pause_schedule": "EXECUTE on werkfluss.pause_schedule(text)",
    "execute_resume_schedule": "EXECUTE on werkfluss.resume_schedule(text)",
    "execute_trigger_schedule": "EXECUTE on werkfluss.trigger_schedule(text)",
    "execute_delete_schedule": "EXECUTE on werkfluss.delete_schedule(text)",
}


async def missing_grants(connector: Connector, *, actions: bool) -> tuple[str, list[str]]:
    """The connected role's name, and the grants it lacks to serve the dashboard
    (with its actions if ``actions``)."""
    row = await connector.fetch_one("dashboard_privileges")
    assert row is not None
    wanted = {**READ_GRANTS, **(ACTION_GRANTS if actions else {})}
    return row["role"], [grant for column, grant in wanted.items() if not row[column]]
