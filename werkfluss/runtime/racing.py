"""``race(*awaitables)``: the first to finish wins.

    index, value = await race(slow_step(), approval.wait(), sleep("400ms"))

Branches may be step calls, hook waits, sleeps and child runs (other
awaitables work too, but their side effects are not recorded). Inside a run
the winner — its index and its value, or its error — is recorded, so a replay
gives the same answer without running anything; losing branches are
cancelled (a losing child run is cancelled too, a payload a losing hook wait
saw stays for a later wait). If the winner raised, ``race`` raises it.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
from collections.abc import Awaitable, Sequence
from typing import Any

from werkfluss import serializer
from werkfluss.errors import InvalidArgument
from werkfluss.runtime import context
from werkfluss.runtime.context import RaceBranch
from werkfluss.runtime.failures import error_record, rebuild_exception
from werkfluss.runtime.replay import RunExecution
from werkfluss.runtime.waits import utcnow
from werkfluss.store.recorder import EventRecord


def race(*awaitables: Awaitable[Any]) -> Any:
    """Await all branches; return ``(index, value)`` of the first to finish."""
    if not awaitables:
        raise InvalidArgument("race() needs at least one awaitable")
    execution = context.current_execution()
    if execution is None:
        return _plain_race(awaitables)
    seq, recorded = execution.next_seq("race", "race")
    return execution.register_call(_race(execution, seq, recorded, awaitables), seq)


def _discard(awaitables: tuple[Awaitable[Any], ...]) -> None:
    for awaitable in awaitables:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        elif isinstance(awaitable, asyncio.Future):
            awaitable.cancel()
            awaitable.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # seen: no "exception was never retrieved" for a discarded branch


async def _plain_race(awaitables: tuple[Awaitable[Any], ...]) -> tuple[int, Any]:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        index = min(i for i, t in enumerate(tasks) if t in done)
        return index, tasks[index].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _race(
    execution: RunExecution, seq: int, recorded: dict[str, Any] | None, awaitables: tuple[Awaitable[Any], ...]
) -> tuple[int, Any]:
    if recorded is not None:
        _discard(awaitables)
        execution.check(recorded)
        if recorded["status"] == "completed":
            output = recorded["output"]
            return output["index"], serializer.decode(output["value"])
        raise rebuild_exception(recorded["error"], where=f" for run {execution.run_id} seq {seq}")
    try:
        await execution.before_durable()
    except BaseException:
        _discard(awaitables)
        raise
    branches = [RaceBranch(execution.seq_of(a)) for a in awaitables]
    waits = execution.waits
    for branch in branches:  # each branch is activity until it blocks (see WaitSet.blocked)
        branch.counted = True
    waits.add_activity(len(branches))
    tasks = []
    for awaitable, branch in zip(awaitables, branches, strict=True):
        ctx = contextvars.copy_context()
        ctx.run(context._race_branch.set, branch)
        if asyncio.iscoroutine(awaitable):
            tasks.append(asyncio.get_running_loop().create_task(awaitable, context=ctx))
        else:
            tasks.append(asyncio.ensure_future(awaitable))
    try:
        async with waits.blocked():
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        index = _first(tasks, branches, done)
        winner = tasks[index]
        await _cancel([t for t in tasks if t is not winner])
    except BaseException:
        await _cancel(tasks)
        raise
    finally:
        counted = sum(1 for branch in branches if branch.counted)
        for branch in branches:
            branch.counted = False
        if counted:
            waits.release_activity(counted)
    for i, branch in enumerate(branches):
        if i != index:
            if branch.release is not None and tasks[i].done() and not tasks[i].cancelled():
                branch.release()
            if branch.child_id is not None:
                execution.cancel_child(branch.child_id)
    if winner.cancelled():
        raise asyncio.CancelledError()
    now = utcnow()
    error = winner.exception()
    if error is not None:
        if isinstance(error, asyncio.CancelledError):
            raise error
        record = error_record(error)
        await execution.record(EventRecord(
            seq=seq, kind="race", name="race", status="failed", input=None, output=None,
            error=json.dumps(record, ensure_ascii=False), attempts=1, started_at=now, finished_at=now,
        ))
        raise rebuild_exception(record, where=f" for run {execution.run_id} seq {seq}") from error
    value_json = serializer.dumps(winner.result(), what="the value of the race's winner")
    await execution.record(EventRecord(
        seq=seq, kind="race", name="race", status="completed", input=None,
        output=f'{{"index":{index},"value":{value_json}}}', error=None, attempts=1,
        started_at=now, finished_at=now, consumes=branches[index].consumes,
    ))
    winning = branches[index]
    if winning.consumes is not None and winning.release is not None:
        execution.waits.consumed({"id": winning.consumes})
    return index, serializer.loads(value_json)


def _first(tasks: Sequence[asyncio.Future[Any]], branches: list[RaceBranch], done: set[Any]) -> int:
    """The winner among the finished branches: the one whose event happened
    first (a resumed run may find several ready at once), then the lowest index."""
    finished = [i for i, t in enumerate(tasks) if t in done]
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return min(finished, key=lambda i: (branches[i].event_time or far, i))


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
