"""Flow control in the database: declaring queues, taking rate-limit tokens,
reading queues' state.

The limits themselves are enforced where runs are claimed
(``werkfluss._claim``, see ``sql/migrations/0008_flow_control.sql``); this
module is what the worker and the engine call around it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from werkfluss.flow import Queue
from werkfluss.store.connector import Connector, Row


@dataclass(frozen=True)
class QueueInfo:
    """A queue as ``engine.queues()`` and ``werkfluss queues`` show it.

    ``running`` runs hold a worker (what the limits count); ``ready`` runs
    wait in line for a free slot or a worker; ``parked`` ones wait because
    their key is at its limit; ``throttled`` ones wait for a token of their
    key's start rate limit (``key_rate_limit`` per ``key_rate_period``
    seconds); ``scheduled`` ones wait for a delayed or debounced start;
    ``suspended`` ones sleep or wait for an event (they hold no slot).
    ``keys_at_limit``: keys with ``per_key`` runs holding a worker.
    ``tokens``: what the start rate limit has left now.
    """

    name: str
    concurrency: int | None
    per_key: int | None
    worker_concurrency: int | None
    rate_limit: int | None
    rate_period: float | None
    priority_aging: float
    running: int
    ready: int
    parked: int
    scheduled: int
    suspended: int
    keys_running: int
    keys_at_limit: int
    tokens: float | None
    created_at: dt.datetime
    updated_at: dt.datetime
    key_rate_limit: int | None = None
    key_rate_period: float | None = None
    throttled: int = 0

    @property
    def depth(self) -> int:
        """Runs waiting to start or resume: ready, parked, throttled and scheduled ones."""
        return self.ready + self.parked + self.throttled + self.scheduled

    @classmethod
    def from_row(cls, row: Row) -> QueueInfo:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


async def declare_queue(connector: Connector, queue: Queue) -> str:
    """Write a queue's limits: ``"created"``, ``"changed"`` or ``"unchanged"``."""
    rate, period = queue.rate if queue.rate is not None else (None, None)
    key_rate, key_period = queue.key_rate if queue.key_rate is not None else (None, None)
    row = await connector.fetch_one(
        "declare_queue", name=queue.name, concurrency=queue.concurrency, per_key=queue.per_key,
        worker_concurrency=queue.worker_concurrency, rate_limit=rate, rate_period_seconds=period,
        priority_aging_seconds=queue.priority_aging, key_rate_limit=key_rate,
        key_rate_period_seconds=key_period,
    )
    return str(row["outcome"]) if row else "unchanged"


async def declare_workflow_queue(connector: Connector, workflow: str, queue: str | None) -> bool:
    """Store a workflow's default queue (``None``: none); whether it changed."""
    row = await connector.fetch_one("declare_workflow_queue", workflow=workflow, queue=queue)
    return bool(row and row["changed"])


async def take_token(
    connector: Connector, *, name: str, capacity: int, period: float, run_id: str | None = None,
    waited: bool = False,
) -> float:
    """Take one token of the bucket ``name``: 0.0 if taken, else the seconds until one is there."""
    row = await connector.fetch_one("take_token", name=name, capacity=capacity, period=period,
                                    run_id=run_id, waited=waited)
    return float(row["wait"]) if row else 0.0


async def list_queues(connector: Connector) -> list[QueueInfo]:
    return [QueueInfo.from_row(row) for row in await connector.fetch_all("list_queues")]
