"""Retention in workers: finished runs older than the retention setting go.

Every worker runs a :class:`Pruner`, and one at a time prunes: each batch
asks ``werkfluss.prune_runs`` for the pruning turn without waiting for it (an
advisory lock held for the batch's transaction), and a worker that does not
get it skips the round. A round deletes batches of :data:`BATCH_SIZE` runs —
each with its log, hooks and payloads, in one short transaction — until a
batch comes back short. Rounds come every ``interval`` seconds with ±25 %
jitter, so that workers started together spread out; the first comes at a
random point of the first interval.

    pruner = Pruner(connector, retention=14 * 86400, interval=300)
    deleted = await pruner.run_once()   # None: another worker had the turn
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from werkfluss import telemetry
from werkfluss.store import retention as store
from werkfluss.store.connector import Connector

BATCH_SIZE = 100  # small: each batch is one short transaction
BATCH_PAUSE = 0.05  # seconds between the batches of one round, so claims get the connections


class Pruner:
    """Deletes finished runs older than ``retention`` seconds, every ``interval`` seconds.

    ``rounds``, ``skipped`` and ``deleted`` count what it did (for tests and
    telemetry); :meth:`run_once` is one round, :meth:`run` the loop.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        retention: float,
        interval: float,
        batch_size: int = BATCH_SIZE,
        worker_id: str = "",
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.connector = connector
        self.retention = retention
        self.interval = interval
        self.batch_size = batch_size
        self.worker_id = worker_id
        self._rng = rng
        self.rounds = 0  # rounds that had the turn
        self.skipped = 0  # rounds skipped: another pruner had the turn
        self.deleted = 0  # runs this pruner deleted

    async def run_once(self) -> int | None:
        """One round: delete batches until one comes back short.

        Returns the runs deleted, or ``None`` if another pruner had the turn.
        """
        total = 0
        while True:
            deleted = await store.prune_batch(
                self.connector, older_than_seconds=self.retention, batch_size=self.batch_size, wait=False
            )
            if deleted == store.BUSY:
                if total == 0:
                    self.skipped += 1
                    return None
                break  # another pruner took the turn between two batches: it goes on
            total += deleted
            if deleted < self.batch_size:
                break
            await asyncio.sleep(BATCH_PAUSE)
        self.rounds += 1
        self.deleted += total
        if total:
            telemetry.logger().info("worker.pruned", worker_id=self.worker_id, runs=total,
                                    older_than_s=self.retention)
        return total

    async def run(self) -> None:
        """Prune every interval until cancelled; a failed round is logged and
        the next one tries again."""
        log = telemetry.logger()
        failing = False
        await asyncio.sleep(self.interval * self._rng())
        while True:
            try:
                await self.run_once()
            except Exception as err:  # the loop must outlive any single failure
                if not failing:
                    log.warning("worker.prune_failed", worker_id=self.worker_id, error=str(err),
                                error_type=type(err).__name__)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.interval * (0.75 + 0.5 * self._rng()))
