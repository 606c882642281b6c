"""The schedules table, in domain verbs.

Cron expressions are evaluated by the workers; the database keeps each
schedule's definition, its next tick and what happened last, and fires
ticks: ``fire`` starts the runs of the ticks a worker computed, through
``start_run`` with the tick's time in the run id, only if the schedule's
revision is still the one the worker read. Of many workers computing the
same ticks, one fires them; the others get ``None``.

    due, now = await due_schedules(connector, workflows=["app.reports.nightly"])
    for s in due:
        started = await fire(connector, name=s.name, revision=s.revision, ticks=[...],
                             next_tick=..., skipped=0)
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from werkfluss.store.connector import Connector, Row


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as stored, with the status of its last run (``engine.schedules()``).

    ``next_tick`` is ``None`` while the schedule is paused, or when no tick
    will ever come; ``last_run_status`` is ``None`` before the first run (or
    once that run was pruned). ``since``: ticks at or before it do not run
    (the schedule's creation, a change of cron or time zone, a resume).
    """

    name: str
    workflow: str
    cron: str
    timezone: str
    args: list[Any]
    kwargs: dict[str, Any]
    catchup: str
    catchup_limit: int
    overlap: str
    origin: str  # "code" (declared with @workflow(schedule=...)) or "api"
    paused: bool
    since: dt.datetime
    next_tick: dt.datetime | None
    last_tick: dt.datetime | None
    last_run_id: str | None
    last_run_status: str | None
    skipped: int
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row, **override: Any) -> ScheduleInfo:
        values = {name: row[name] for name in cls.__dataclass_fields__ if name in row}
        values["args"] = decode_json(row["args"], [])
        values["kwargs"] = decode_json(row["kwargs"], {})
        values.update(override)
        return cls(**values)


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule row as read: the scheduler's and the engine's raw material."""

    name: str
    workflow: str
    cron: str
    timezone: str
    catchup: str
    catchup_limit: int
    overlap: str
    since: dt.datetime
    next_tick: dt.datetime | None
    revision: int


def _stored(row: Row) -> StoredSchedule:
    return StoredSchedule(**{name: row[name] for name in StoredSchedule.__dataclass_fields__})


async def create(
    connector: Connector, *, name: str, workflow: str, cron: str, timezone: str, args: str, kwargs: str,
    catchup: str, overlap: str, catchup_limit: int,
) -> None:
    """Create or redefine a schedule (``args``/``kwargs``: JSON text)."""
    await connector.fetch_one(
        "create_schedule", schedule_name=name, workflow=workflow, cron=cron, timezone=timezone,
        args=args, kwargs=kwargs, catchup=catchup, overlap=overlap, catchup_limit=catchup_limit,
    )


@dataclass(frozen=True)
class Declared:
    """A schedule declared in code (``@workflow(schedule=...)``)."""

    name: str
    workflow: str
    cron: str
    timezone: str
    catchup: str
    overlap: str
    catchup_limit: int


async def declare(
    connector: Connector, *, declared: Sequence[Declared], served: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Bring the schedules declared in code into the table; delete those the
    code of ``served`` declares no more. Returns (changed, removed) names."""
    row = await connector.fetch_one(
        "declare_schedules",
        names=[d.name for d in declared], workflows=[d.workflow for d in declared],
        crons=[d.cron for d in declared], timezones=[d.timezone for d in declared],
        catchups=[d.catchup for d in declared], overlaps=[d.overlap for d in declared],
        catchup_limits=[d.catchup_limit for d in declared], served=list(served),
    )
    return (list(row["changed"]), list(row["removed"])) if row else ([], [])


async def due_schedules(
    connector: Connector, *, workflows: Sequence[str], limit: int = 100
) -> tuple[list[StoredSchedule], dt.datetime | None]:
    """Schedules of ``workflows`` whose next tick has come (or is not computed
    yet), and the database's clock (``None`` if nothing is due)."""
    rows = await connector.fetch_all("due_schedules", workflows=list(workflows), limit=limit)
    return [_stored(row) for row in rows], (rows[0]["db_now"] if rows else None)


async def seconds_until_next_tick(connector: Connector, *, workflows: Sequence[str]) -> float | None:
    """Seconds until the next tick of ``workflows``' schedules (database clock), or ``None``."""
    row = await connector.fetch_one("next_schedule_tick", workflows=list(workflows))
    return None if row is None or row["seconds"] is None else float(row["seconds"])


async def fire(
    connector: Connector, *, name: str, revision: int, ticks: Sequence[dt.datetime],
    next_tick: dt.datetime | None, skipped: int,
) -> list[str] | None:
    """Start the runs of ``ticks`` and move the next tick on; ``None`` if the
    schedule changed since it was read at ``revision`` (another worker fired it,
    it was paused or redefined)."""
    row = await connector.fetch_one("fire_schedule", schedule_name=name, revision=revision,
                                    ticks=list(ticks), next_tick=next_tick, skipped=skipped)
    return None if row is None or row["run_ids"] is None else list(row["run_ids"])


async def mark_broken(connector: Connector, *, name: str, revision: int, error: str) -> None:
    """Keep why the schedule's ticks cannot be computed; it fires nothing until redefined."""
    await connector.fetch_one("break_schedule", schedule_name=name, revision=revision, error=error[:1000])


async def list_schedules(
    connector: Connector, *, workflow: str | None = None
) -> tuple[list[ScheduleInfo], dt.datetime | None]:
    """Every schedule (of ``workflow``), by name, and the database's clock."""
    rows = await connector.fetch_all("list_schedules", workflow=workflow)
    return [ScheduleInfo.from_row(row) for row in rows], (rows[0]["db_now"] if rows else None)


async def get(connector: Connector, name: str) -> tuple[ScheduleInfo | None, dt.datetime | None]:
    """One schedule (``None`` if there is none by this name), and the database's clock."""
    row = await connector.fetch_one("get_schedule", schedule_name=name)
    return (None, None) if row is None else (ScheduleInfo.from_row(row), row["db_now"])


async def pause(connector: Connector, name: str) -> bool:
    row = await connector.fetch_one("pause_schedule", schedule_name=name)
    return bool(row and row["changed"])


async def resume(connector: Connector, name: str) -> bool:
    row = await connector.fetch_one("resume_schedule", schedule_name=name)
    return bool(row and row["changed"])


async def trigger(connector: Connector, name: str) -> str:
    row = await connector.fetch_one("trigger_schedule", schedule_name=name)
    assert row is not None
    return str(row["run_id"])


async def delete(connector: Connector, name: str) -> None:
    await connector.fetch_one("delete_schedule", schedule_name=name)


def decode_json(text: str | None, default: Any) -> Any:
    """A jsonb column read as text (the connector's loader), decoded for display."""
    if text is None:
        return default
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return default
