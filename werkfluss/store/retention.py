"""Retention: deleting finished runs, with their log, hooks and payloads.

One batch is one call of ``werkfluss.prune_runs`` (migration 0007): a short
transaction that takes the pruning turn (an advisory lock), deletes up to
``batch_size`` of the oldest finished runs and everything that belongs to
them, and commits. Workers ask without waiting, so that only one of them
prunes at a time; ``werkfluss prune`` waits its turn.

    deleted = await prune_batch(connector, older_than_seconds=14 * 86400, batch_size=100)
    if deleted == BUSY:
        ...  # another pruner has the turn
"""

from __future__ import annotations

from werkfluss.store.connector import Connector

BUSY = -1  # prune_batch(wait=False): another pruner holds the turn; nothing was deleted


async def prune_batch(
    connector: Connector, *, older_than_seconds: float, batch_size: int, wait: bool = True
) -> int:
    """Delete one batch; return the runs deleted, or :data:`BUSY`."""
    row = await connector.fetch_one(
        "prune_runs", older_than_seconds=older_than_seconds, batch_size=batch_size, wait=wait
    )
    return int(row["deleted"]) if row else 0


async def count_prunable(connector: Connector, *, older_than_seconds: float) -> int:
    """How many runs a prune with this retention would delete now (``prune --dry-run``)."""
    row = await connector.fetch_one("count_prunable", older_than_seconds=older_than_seconds)
    return int(row["runs"]) if row else 0
