"""LISTEN/NOTIFY fan-out: one dedicated connection per engine, many subscribers.

Channels (payloads are ids or names, never data):

* ``werkfluss_queue`` — a workflow name (or ``''``): work may be claimable.
* ``werkfluss_runs`` — comma-separated run ids (or ``'*'``): runs finished or
  were cancelled.
* ``werkfluss_wake`` — a run id: something that run waits for happened (a
  hook payload) while a worker holds it.

A notification is only a hint. After every (re)connect the listener calls all
subscribers with ``None`` ("anything may have changed"), and everyone also
polls slowly, so a lost notification delays work but never loses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from werkfluss import telemetry
from werkfluss.errors import DatabaseUnavailable
from werkfluss.store.connector import Connector, sleep_backoff

QUEUE_CHANNEL = "werkfluss_queue"
RUNS_CHANNEL = "werkfluss_runs"
WAKE_CHANNEL = "werkfluss_wake"
CHANNELS = (QUEUE_CHANNEL, RUNS_CHANNEL, WAKE_CHANNEL)

Callback = Callable[[str | None], None]


class Listener:
    """Keeps a LISTEN connection open (reconnecting) and dispatches notifications.

    Example::

        listener = Listener(connector)
        await listener.start()
        with listener.watch_run(run_id) as changed:
            await asyncio.wait_for(changed.wait(), timeout=5)
    """

    def __init__(self, connector: Connector, *, dsn: str | None = None) -> None:
        self._connector = connector
        self._dsn = dsn
        self._subscribers: dict[str, list[Callback]] = {channel: [] for channel in CHANNELS}
        self._run_watchers: dict[str, set[asyncio.Event]] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def start(self, *, wait: float = 5.0) -> bool:
        """Start listening; return whether LISTEN is active within ``wait`` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="werkfluss-listener")
        try:
            await asyncio.wait_for(self._connected.wait(), wait)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(payload)`` for each notification on ``channel``; returns an unsubscribe."""
        self._subscribers[channel].append(callback)
        return lambda: self._subscribers[channel].remove(callback)

    @contextmanager
    def watch_run(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``run_id`` may have finished."""
        event = asyncio.Event()
        self._run_watchers.setdefault(run_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._run_watchers.get(run_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._run_watchers[run_id]

    async def _run(self) -> None:
        log = telemetry.logger()
        attempt = 0
        while True:
            try:
                async with self._connector.listening(CHANNELS, dsn=self._dsn) as notifications:
                    self._connected.set()
                    if attempt or self.reconnects:
                        log.info("listener.reconnected")
                    attempt = 0
                    self._resync()
                    async for note in notifications:
                        self._dispatch(note.channel, note.payload)
            except DatabaseUnavailable as err:
                self._connected.clear()
                if attempt == 0:
                    log.warning("listener.disconnected", error=str(err))
                self.reconnects += 1
                await sleep_backoff(attempt)
                attempt += 1

    def _resync(self) -> None:
        for channel in CHANNELS:
            self._dispatch(channel, None)

    def _dispatch(self, channel: str, payload: str | None) -> None:
        if channel == RUNS_CHANNEL:
            if payload is None or payload == "*":
                for events in self._run_watchers.values():
                    for event in events:
                        event.set()
            else:
                for run_id in payload.split(","):
                    for event in self._run_watchers.get(run_id, ()):
                        event.set()
        for callback in list(self._subscribers.get(channel, ())):
            callback(payload)
