"""``await sleep(duration)``: durable time.

Inside a run, the wake-up time is recorded when the sleep starts; the run
then leaves its worker (no coroutine, no connection, no memory held) and is
claimable again when it is due. A replay after that time passes straight
through. Outside a run, ``sleep`` is ``asyncio.sleep``.

    @workflow
    async def remind(user_id: str) -> None:
        await sleep("1 day")          # or 86400, or timedelta(days=1)
        await send_reminder(user_id)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from werkfluss.durations import Duration, parse_duration
from werkfluss.runtime import context
from werkfluss.runtime.replay import RunExecution
from werkfluss.runtime.waits import parse_time, utcnow
from werkfluss.store.recorder import EventRecord


def sleep(duration: Duration) -> Any:
    """Sleep durably for ``duration`` (seconds, ``timedelta`` or ``"400ms"``, ``"30s"``, ``"1 day"``).

    A negative or unparseable duration raises ``InvalidArgument`` at the call.
    """
    seconds = parse_duration(duration, what="sleep duration")
    execution = context.current_execution()
    if execution is None:
        return asyncio.sleep(seconds)
    seq, recorded = execution.next_seq("sleep", "sleep")
    return execution.register_call(_sleep(execution, seq, recorded, seconds), seq)


async def _sleep(execution: RunExecution, seq: int, recorded: dict[str, Any] | None, seconds: float) -> None:
    execution.check(recorded)
    if recorded is not None:
        wake_at = parse_time(recorded["output"]["wake_at"])
    else:
        await execution.before_durable()
        now = utcnow()
        wake_at = now + dt.timedelta(seconds=seconds)
        await execution.record(EventRecord(
            seq=seq, kind="sleep", name="sleep", status="completed",
            input=json.dumps({"seconds": seconds}),
            output=json.dumps({"wake_at": wake_at.isoformat()}),
            error=None, attempts=1, started_at=now, finished_at=now,
        ))
    await wait_until(execution, wake_at)
    branch = context.race_branch_for(seq)
    if branch is not None:
        branch.event_time = wake_at


async def wait_until(execution: RunExecution, wake_at: dt.datetime) -> None:
    """Passively wait until ``wake_at`` (returns at once if it has passed)."""
    await execution.waits.until("timer", wake_at, lambda: True if utcnow() >= wake_at else None)
