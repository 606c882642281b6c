"""One clock for everything that is decided in time: the database's.

Wake-up times, run deadlines, the time a workflow sees and the order in
which a run's events happened are all on the database's clock, the same clock
that decides when a run becomes claimable and when a lease expires. A worker
whose own clock is minutes off therefore behaves exactly like one whose clock
is right: it learns the difference from the database and applies it.

* :class:`DatabaseClock` — the worker's clock: the local clock plus an offset
  learned from each round trip that returns the server's ``clock_timestamp()``
  (claims and heartbeats do). Timers wait in local *monotonic* time, so a
  jump of the wall clock does not move them.
* :class:`ManualClock` — for tests: time moves only when the test says so.

Both implement :class:`Clock`::

    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    clock.call_at(clock.now() + timedelta(seconds=5), fired.set)
    clock.advance(5)           # runs the callback; no real waiting
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

UTC = dt.UTC


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the runtime and the worker need from a clock."""

    def now(self) -> dt.datetime:
        """The current time on the database's clock (timezone-aware, UTC)."""
        ...

    def call_at(self, when: dt.datetime, callback: Callable[[], None]) -> Cancellable:
        """Call ``callback`` (on the running event loop) once ``now() >= when``."""
        ...


class DatabaseClock:
    """The local clock corrected by an offset learned from the database.

    ``observe(server_time, sent, received)`` is called with the server's
    ``clock_timestamp()`` from a query and the local monotonic times around
    it; the offset is estimated from the round trip with the smallest
    uncertainty among recent ones (a slow round trip tells less).
    """

    # An observation stays the best for at most this long, so that a drifting
    # local clock is followed.
    _KEEP_SECONDS = 60.0

    def __init__(self) -> None:
        # time.time() at a monotonic reference, so wall-clock jumps after start
        # do not move us: now() = anchor_wall + (monotonic - anchor_mono) + offset.
        self._anchor_mono = time.monotonic()
        self._anchor_wall = time.time()
        self._offset = 0.0
        self._uncertainty = float("inf")
        self._observed_at = float("-inf")
        self.synced = False

    def _local(self, mono: float) -> float:
        return self._anchor_wall + (mono - self._anchor_mono)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._local(time.monotonic()) + self._offset, UTC)

    def observe(self, server_time: dt.datetime, sent: float, received: float) -> None:
        """Learn from one round trip (``sent``/``received``: ``time.monotonic()``)."""
        uncertainty = max(0.0, received - sent) / 2
        midpoint = self._local((sent + received) / 2)
        offset = server_time.timestamp() - midpoint
        stale = received - self._observed_at > self._KEEP_SECONDS
        if stale or uncertainty <= self._uncertainty:
            self._offset = offset
            self._uncertainty = uncertainty
            self._observed_at = received
            self.synced = True

    @property
    def offset(self) -> float:
        """Seconds to add to the local clock to get the database's."""
        return self._offset

    def call_at(self, when: dt.datetime, callback: Callable[[], None]) -> Cancellable:
        delay = max(0.0, (when - self.now()).total_seconds())
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock for tests: ``advance()`` moves time and runs what became due.

    Example::

        clock = ManualClock()
        clock.advance(3600)     # an hour passes at once
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 1, tzinfo=UTC)
        self._timers: list[tuple[dt.datetime, int, _ManualTimer]] = []
        self._ids = itertools.count()

    def now(self) -> dt.datetime:
        return self._now

    def call_at(self, when: dt.datetime, callback: Callable[[], None]) -> Cancellable:
        timer = _ManualTimer(callback)
        heapq.heappush(self._timers, (when, next(self._ids), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward and run every callback that became due, in time order."""
        self.set(self._now + dt.timedelta(seconds=seconds))

    def set(self, when: dt.datetime) -> None:
        if when < self._now:
            raise ValueError("a ManualClock does not go backwards")
        while self._timers and self._timers[0][0] <= when:
            due, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            if not timer.cancelled:
                timer.callback()
        self._now = when
