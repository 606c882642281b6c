"""A worker's liveness: one heartbeat row, and what follows when it stops.

Every ``lease / 3`` seconds the worker updates its row in the workers table
(one small update, however many runs it holds) and reaps workers whose
heartbeat stopped. Its leases are valid while its last confirmed heartbeat is
younger than ``lease - margin`` by the local monotonic clock: other workers
reap it only once the *database* has seen no heartbeat for a whole lease, so
a worker always stops before its runs can be given away. A worker that was
silent too long (stopped by SIGSTOP, cut off from the database) starts no
step body until a heartbeat confirms it is alive — and when that heartbeat
says its runs were given away, it drops them all.
"""

from __future__ import annotations

import asyncio
import time


class Liveness:
    """Whether this worker may still act for the runs it holds."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.margin = max(0.2, lease_seconds * 0.2)
        self._confirmed_at: float | None = None  # monotonic time a confirmed heartbeat was *sent*
        self._changed = asyncio.Event()

    def confirmed(self, sent: float) -> None:
        """A heartbeat sent at ``sent`` (monotonic) was committed."""
        if self._confirmed_at is None or sent > self._confirmed_at:
            self._confirmed_at = sent
        self._changed.set()

    def reset(self) -> None:
        self._confirmed_at = None

    def valid(self) -> bool:
        confirmed = self._confirmed_at
        return confirmed is not None and time.monotonic() < confirmed + self.lease_seconds - self.margin

    def expires_in(self) -> float:
        confirmed = self._confirmed_at
        if confirmed is None:
            return 0.0
        return confirmed + self.lease_seconds - self.margin - time.monotonic()

    async def wait_valid(self) -> None:
        """Return once the worker's leases are vouched for by a recent heartbeat."""
        while not self.valid():
            self._changed.clear()
            await self._changed.wait()
