"""``await sleep(duration)``: durable time.

Inside a run, a sleep is a durable timer: its wake-up time is fixed and
recorded when the sleep starts; if nothing else is going on, the run then
leaves its worker (no coroutine, no connection, no memory held) and is
claimable again when it is due. ``asyncio.sleep``, ``asyncio.wait_for`` and
``asyncio.timeout`` inside a workflow are durable timers too. Outside a run,
``sleep`` is ``asyncio.sleep``.

    @workflow
    async def remind(user_id: str) -> None:
        await sleep("1 day")          # or 86400, or timedelta(days=1)
        await send_reminder(user_id)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from werkfluss.durations import Duration, parse_duration
from werkfluss.records import LogRecord
from werkfluss.runtime.context import current_instance
from werkfluss.runtime.durable import DurableCall

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance


class TimerCall(DurableCall):
    """A durable timer: its wake-up time is recorded when it starts."""

    kind = "sleep"
    name = "sleep"

    def __init__(self, wake_at: dt.datetime, started: dt.datetime) -> None:
        self.wake_at = wake_at
        self.started = started

    def begin(self, run: WorkflowInstance, seq: int) -> dt.datetime:
        seconds = max(0.0, (self.wake_at - self.started).total_seconds())
        run.emit_record(LogRecord(
            seq=seq, kind="sleep", name="sleep", status="completed",
            input=json.dumps({"seconds": round(seconds, 6)}),
            output=json.dumps({"wake_at": self.wake_at.isoformat()}),
            started_at=self.started, finished_at=self.started,
        ))
        return self.wake_at

    def restore(self, run: WorkflowInstance, seq: int, record: LogRecord) -> dt.datetime:
        try:
            value = json.loads(record.output or "{}")["wake_at"]
            wake_at = dt.datetime.fromisoformat(value)
        except (ValueError, KeyError, TypeError):
            return self.wake_at  # an unreadable record: the timer is as the code asks now
        return wake_at if wake_at.tzinfo else wake_at.replace(tzinfo=dt.UTC)


def sleep(duration: Duration) -> Any:
    """Sleep durably for ``duration`` (seconds, ``timedelta`` or ``"400ms"``, ``"30s"``, ``"1 day"``).

    The timer starts at the call (so ``gather(step(), sleep(1))`` replays the
    same way every time). A negative or unparseable duration raises
    ``InvalidArgument`` at the call.
    """
    seconds = parse_duration(duration, what="sleep duration")
    run = current_instance()
    if run is None:
        return asyncio.sleep(seconds)
    future: asyncio.Future[None] = run.loop.create_future()
    handle = run.loop.call_later(seconds, _wake, future)
    future.add_done_callback(lambda f: handle.cancel() if f.cancelled() else None)
    return run.awaitable(future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
