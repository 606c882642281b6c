"""``race(*awaitables)``: the first to finish wins.

    index, value = await race(slow_step(), approval.wait(), sleep("400ms"))

A thin helper over ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` on the
run's deterministic loop: outcomes reach a run one at a time, in the order
the run first saw them, so a replay picks the same winner without any record
of its own. Losing branches are cancelled (a losing step is not recorded, a
losing child run is cancelled, a payload a losing hook wait did not take
stays for a later wait). If the winner raised, ``race`` raises it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

from werkfluss import serializer
from werkfluss.errors import InvalidArgument
from werkfluss.runtime.context import current_instance, error_from_json
from werkfluss.runtime.failures import rebuild_exception


def race(*awaitables: Awaitable[Any]) -> Any:
    """Await all branches; return ``(index, value)`` of the first to finish."""
    if not awaitables:
        raise InvalidArgument("race() needs at least one awaitable")
    run = current_instance()
    if run is not None:
        # Runs recorded by releases before 0.2 have a record of the race's
        # outcome right after its branches: honour it.
        legacy = run.peek_legacy("race")
        if legacy is not None:
            for awaitable in awaitables:
                run.discard(awaitable)
            return _recorded(legacy.status, legacy.output, legacy.error, run.run_id, legacy.seq)
    return _race(awaitables)


async def _recorded(status: str, output: str | None, error: str | None, run_id: str, seq: int) -> Any:
    if status == "completed":
        value = json.loads(output or "{}")
        return value["index"], serializer.decode(value["value"])
    raise rebuild_exception(error_from_json(error), where=f" for run {run_id} seq {seq}")


async def _race(awaitables: tuple[Awaitable[Any], ...]) -> tuple[int, Any]:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (Exception, asyncio.CancelledError):
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    except BaseException:  # GeneratorExit: the run is leaving the worker; do not await here
        for task in tasks:
            task.cancel()
        raise
    index = min(i for i, task in enumerate(tasks) if task in done)
    losers = [task for i, task in enumerate(tasks) if i != index]
    for task in losers:
        task.cancel()
    await asyncio.gather(*losers, return_exceptions=True)
    return index, tasks[index].result()
