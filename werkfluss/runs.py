"""The read side of runs: :class:`RunHandle`, :class:`RunInfo`, :class:`StepRecord`.

    handle = await engine.start(onboard, "user-123")
    await handle.status()              # "pending", "running", ..., "completed"
    value = await handle.result(timeout=30)
    for record in await handle.steps():
        print(record.seq, record.name, record.status, record.output)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from werkfluss import serializer
from werkfluss.errors import DatabaseUnavailable, RunCancelled, RunFailed, RunNotFound
from werkfluss.store.connector import Connector, Row
from werkfluss.store.listener import Listener
from werkfluss.store.workers import RunLease, run_lease


class RunSource(Protocol):
    """What a :class:`RunHandle` needs from the engine that made it."""

    result_poll_interval: float

    @property
    def connector(self) -> Connector: ...

    async def listener(self) -> Listener | None: ...

    async def cancel(self, run_id: str) -> bool: ...

TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("pending", "running", "sleeping", "waiting", "completed", "failed", "cancelled")


def _load(text: str | None) -> Any:
    """Decode stored JSON for display. A value this process cannot rebuild
    (a class not imported here, a malformed tagged value) stays plain JSON, and
    JSON too deep to read stays text: listing runs never fails on a bad value."""
    if text is None:
        return None
    try:
        return serializer.loads(text)
    except (Exception, RecursionError):
        pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return {"type": "UnknownError", "message": text[:1000]}


def describe_blocked(reason: dict[str, Any] | None) -> str | None:
    """Why a pending run has not started, in words (``None``: it is next in line).

        >>> describe_blocked({"kind": "key", "key": "customer-42", "held": 5, "limit": 5})
        'key customer-42 at 5/5'
    """
    if not reason:
        return None
    kind = reason.get("kind")
    if kind == "key":
        return f"key {reason.get('key')} at {reason.get('held')}/{reason.get('limit')}"
    if kind == "queue":
        return f"queue {reason.get('queue')} at {reason.get('held')}/{reason.get('limit')}"
    if kind == "worker_limit":
        return (f"queue {reason.get('queue')} at its limit of {reason.get('limit')} per worker "
                "on every worker serving it")
    if kind == "rate":
        return f"rate limit {reason.get('name')} until {_when(reason.get('until'))}"
    if kind == "scheduled":
        return f"scheduled for {_when(reason.get('at'))}"
    return str(reason)


def _when(value: Any) -> str:
    """A time as ``12:00:03 UTC`` today, else ``2026-11-28 02:00:00 UTC``."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, dt.datetime):
        return str(value)
    value = value.astimezone(dt.UTC)
    if value.date() == dt.datetime.now(dt.UTC).date():
        return value.strftime("%H:%M:%S UTC")
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class RunInfo:
    """A run as stored: what ``engine.runs()`` lists and ``handle.info()`` returns.

    ``queue``, ``concurrency_key`` and ``priority`` are how it was started;
    ``blocked_by`` says, for a pending run, why it has not started yet
    (``"queue exports at 20/20"``, ``"key customer-42 at 5/5"``,
    ``"rate limit queue exports until 12:00:03 UTC"``, ``"scheduled for …"``);
    ``None`` when it is next in line (whether a worker serves it:
    ``engine.served_workflows()``).
    """

    run_id: str
    workflow: str
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    parent_id: str | None
    wake_at: dt.datetime | None
    waiting_on: str | None
    deadline: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    queue: str | None = None
    concurrency_key: str | None = None
    priority: int = 0
    blocked_by: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> RunInfo:
        return cls(
            run_id=row["run_id"],
            workflow=row["workflow"],
            status=row["status"],
            args=_load(row["args"]),
            kwargs=_load(row["kwargs"]),
            result=_load(row["result"]),
            error=_json(row["error"]),
            parent_id=row["parent_id"],
            wake_at=row["wake_at"],
            waiting_on=row["waiting_on"],
            deadline=row["deadline"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
            queue=row.get("queue_name"),
            concurrency_key=row.get("concurrency_key"),
            priority=row.get("priority") or 0,
            blocked_by=describe_blocked(_json(row.get("blocked"))),
        )

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class StepRecord:
    """One record of a run's log: one per step call, in seq order."""

    seq: int
    name: str
    status: str  # "completed" | "failed"
    input: Any  # {"args": [...], "kwargs": {...}}
    output: Any
    error: dict[str, Any] | None
    attempts: int
    started_at: dt.datetime | None
    finished_at: dt.datetime
    kind: str = "step"  # or "sleep", "hook", "receive", "child", "race" (see RunHandle.log)

    @classmethod
    def from_row(cls, row: Row) -> StepRecord:
        return cls(
            seq=row["seq"],
            name=row["name"],
            status=row["status"],
            input=_load(row["input"]),
            output=_load(row["output"]),
            error=_json(row["error"]),
            attempts=row["attempts"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            kind=row["kind"],
        )


class RunHandle:
    """A reference to one run; cheap to create (``engine.handle(run_id)``)."""

    def __init__(self, engine: RunSource, run_id: str) -> None:
        self._engine = engine
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    async def info(self) -> RunInfo:
        """Everything stored about the run (raises :class:`RunNotFound`)."""
        connector = self._engine.connector
        row = await connector.fetch_one("get_run", run_id=self.run_id)
        if row is None:
            raise RunNotFound(self.run_id)
        if row["status"] == "pending":
            reason = await connector.fetch_one("run_blocked", run_id=self.run_id)
            row = {**row, "blocked": None if reason is None else reason["blocked"]}
        return RunInfo.from_row(row)

    async def status(self) -> str:
        """``pending``, ``running``, ``sleeping``, ``waiting``, ``completed``, ``failed`` or ``cancelled``."""
        return (await self.info()).status

    async def steps(self) -> list[StepRecord]:
        """The run's step records: exactly one per step call, in seq order.

        Sleeps, hooks, races and child starts are in :meth:`log`, not here.
        """
        rows = await self._engine.connector.fetch_all("list_steps", run_id=self.run_id)
        if not rows:
            await self.info()  # raise RunNotFound for an unknown id
        return [StepRecord.from_row(row) for row in rows]

    async def log(self) -> list[StepRecord]:
        """The whole log in seq order: steps, and the records of sleeps
        (``kind="sleep"``), hooks (``hook``), received payloads (``receive``),
        child runs (``child``) and races (``race``)."""
        rows = await self._engine.connector.fetch_all("list_events", run_id=self.run_id)
        if not rows:
            await self.info()
        return [StepRecord.from_row(row) for row in rows]

    async def lease(self) -> RunLease | None:
        """Which worker holds the run, and until when its heartbeat vouches for it.

        ``None`` when no worker holds the run (it is not ``running``). A
        lease whose ``seconds_left`` is negative belongs to a worker that
        stopped beating (killed, frozen); the next live worker's reaper frees
        the run.

            lease = await handle.lease()
            if lease is not None:
                print(f"held by {lease.host}:{lease.pid} until {lease.expires_at}")
        """
        return await run_lease(self._engine.connector, run_id=self.run_id)

    async def cancel(self) -> bool:
        """Cancel the run; ``False`` if it had already finished."""
        return await self._engine.cancel(self.run_id)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result.

        Raises :class:`RunFailed` (with the recorded error type, message and
        traceback), :class:`RunCancelled`, or ``TimeoutError`` after
        ``timeout`` seconds. Woken by NOTIFY; polls slowly as a fallback.
        """
        engine = self._engine
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = await engine.listener()
        with _watch(listener, self.run_id) as changed:
            while True:
                changed.clear()
                try:
                    row = await engine.connector.fetch_one("run_outcome", run_id=self.run_id)
                except DatabaseUnavailable as lost:
                    # Keep waiting through a lost connection (the deadline still holds).
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"run {self.run_id} did not finish within {timeout:g}s "
                            f"(the database could not be reached: {lost})"
                        ) from lost
                    await asyncio.sleep(0.2)
                    continue
                if row is None:
                    raise RunNotFound(self.run_id)
                status = row["status"]
                if status == "completed":
                    return _load(row["result"])
                if status == "failed":
                    raise RunFailed.from_record(self.run_id, _json(row["error"]))
                if status == "cancelled":
                    raise RunCancelled(self.run_id)
                wait = engine.result_poll_interval if listener and listener.connected else 0.5
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"run {self.run_id} did not finish within {timeout:g}s "
                            f"(status: {status})"
                        )
                    wait = min(wait, remaining)
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                except TimeoutError:
                    pass


@contextmanager
def _watch(listener: Listener | None, run_id: str) -> Iterator[asyncio.Event]:
    if listener is None:
        yield asyncio.Event()  # no notifications: the slow poll does the work
        return
    with listener.watch_run(run_id) as changed:
        yield changed
