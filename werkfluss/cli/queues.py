"""``werkfluss queues``: every queue, its limits, what holds a worker and what waits.

    $ python -m werkfluss queues
      queue    running  per key  per worker  start rate  key start rate  ready  parked  throttled ...
      -------  -------  -------  ----------  ----------  --------------  -----  ------  --------- ...
      exports  20/20    5        -           100/60s     10/60s          311    1204    40        ...

(then ``scheduled``, ``suspended`` and ``keys at limit``).

``running`` counts the runs holding a worker against the queue's limit;
``ready`` runs wait for a slot or a worker, ``parked`` ones for a slot of
their key, ``throttled`` ones for a token of their key's start rate limit,
``scheduled`` ones for a delayed or debounced start; ``suspended`` runs
sleep or wait for an event and hold no slot.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from werkfluss.cli.output import format_table
from werkfluss.engine import Engine
from werkfluss.store.flow import QueueInfo

HEADERS = ["queue", "running", "per key", "per worker", "start rate", "key start rate", "ready", "parked",
           "throttled", "scheduled", "suspended", "keys at limit"]


def _rate(limit: int | None, period: float | None) -> str | None:
    if limit is None or period is None:
        return None
    return f"{limit}/{period:g}s"


def queue_row(info: QueueInfo) -> list[Any]:
    running = f"{info.running}/{info.concurrency}" if info.concurrency is not None else str(info.running)
    return [info.name, running, info.per_key, info.worker_concurrency,
            _rate(info.rate_limit, info.rate_period), _rate(info.key_rate_limit, info.key_rate_period),
            info.ready, info.parked, info.throttled, info.scheduled, info.suspended,
            info.keys_at_limit if info.per_key is not None else None]


def queue_json(info: QueueInfo) -> dict[str, Any]:
    out = {name: getattr(info, name) for name in QueueInfo.__dataclass_fields__}
    out["depth"] = info.depth
    return out


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    queues = sub.add_parser("queues", parents=[common],
                            help="list queues: limits, runs holding a worker, depth")
    queues.add_argument("--json", action="store_true", help="print JSON instead of a table")
    queues.set_defaults(handler=cmd_queues)


async def cmd_queues(engine: Engine, args: argparse.Namespace) -> int:
    queues = await engine.queues()
    if args.json:
        print(json.dumps([queue_json(q) for q in queues], default=str, ensure_ascii=False, indent=2))
    elif queues:
        print(format_table(HEADERS, [queue_row(q) for q in queues]))
    else:
        print("no queues (workers declare the queues of their workflows when they start)")
    return 0
