"""Hooks: a run waits for an event from outside.

    @workflow
    async def approve(order_id: str) -> bool:
        approval = hook()                                # or hook(token=f"order-{order_id}:approval")
        await ask_reviewer(order_id, approval.token)     # a step hands the token out
        decision = await approval.wait(timeout="7 days") # TimeoutError if nobody answers
        return decision["approved"]

Deliver with ``await engine.send(token, payload)``,
``SELECT werkfluss.send(token, payload)`` or ``python -m werkfluss send TOKEN JSON``.

* A generated token is ``wfh_`` followed by 256 random bits, so ``send`` can
  refuse a token that was never issued. A token you choose is yours for good:
  no other run can create a hook with it.
* A hook is single-use (its first payload wins; later sends are refused)
  unless the workflow iterates it (``async for payload in h``) or creates it
  with ``hook(multi=True)``; an iterated hook receives every payload sent
  while the run lives. Create it with ``multi=True`` if several payloads may
  arrive before the workflow starts iterating.
* A payload sent before the run reaches ``wait()`` is kept and delivered. For
  a token you chose, it may even arrive before the hook exists; the first
  such payload is kept, a second one is refused.
* Payloads are delivered in the order they were received.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from werkfluss import serializer
from werkfluss.durations import Duration, parse_duration
from werkfluss.errors import HookConflict, InvalidArgument, NotInRunError
from werkfluss.runtime import context
from werkfluss.runtime.failures import rebuild_exception
from werkfluss.runtime.replay import RunExecution
from werkfluss.runtime.waits import parse_time, utcnow
from werkfluss.store.recorder import EventRecord

TOKEN_PREFIX = "wfh_"
MAX_TOKEN_LENGTH = 500


class Hook:
    """A hook of the current run; ``token`` is what senders use."""

    def __init__(self, execution: RunExecution, seq: int, token: str, multi: bool) -> None:
        self._execution = execution
        self.seq = seq
        self.token = token
        self.multi = multi

    def __repr__(self) -> str:
        return f"<werkfluss hook {self.token}>"

    def wait(self, timeout: Duration | None = None) -> Any:
        """Await the next payload; ``TimeoutError`` if none arrives within ``timeout``."""
        execution = self._current()
        if timeout is None:
            seq, recorded = execution.next_seq("receive", self.token)
            return execution.register_call(self._receive(seq, recorded), seq)
        seconds = parse_duration(timeout, what="hook wait timeout")
        from werkfluss.runtime.racing import race
        from werkfluss.runtime.timers import sleep

        outcome = race(self.wait(), sleep(seconds))
        return self._first_or_timeout(outcome, seconds)

    async def _first_or_timeout(self, outcome: Any, seconds: float) -> Any:
        index, value = await outcome
        if index == 1:
            raise TimeoutError(f"no payload arrived for hook {self.token} within {seconds:g}s")
        return value

    def __aiter__(self) -> Hook:
        if not self.multi:
            self.multi = True
            execution = self._current()
            execution.defer(asyncio.ensure_future(execution.recorder.mark_multi(self.token)))
        return self

    async def __anext__(self) -> Any:
        return await self.wait()

    def _current(self) -> RunExecution:
        execution = context.current_execution()
        if execution is not self._execution:
            raise NotInRunError(
                f"hook {self.token} belongs to run {self._execution.run_id}; wait for it in that "
                "run's workflow code (not inside a step)"
            )
        return execution

    async def _receive(self, seq: int, recorded: dict[str, Any] | None) -> Any:
        execution = self._execution
        execution.check(recorded)
        if recorded is not None:
            if recorded["status"] == "completed":
                return serializer.decode(recorded["output"])
            raise rebuild_exception(recorded["error"], where=f" for run {execution.run_id} seq {seq}")
        await execution.before_durable()
        entry = await execution.waits.until(
            "hook", self.token, lambda: execution.waits.take_payload(self.token)
        )
        branch = context.race_branch_for(seq)
        if branch is not None:  # the race records the payload, if this branch wins
            branch.consumes = int(entry["id"])
            branch.release = lambda: execution.waits.give_back(entry)
            branch.event_time = parse_time(entry["received_at"])
            return serializer.decode(entry["payload"])
        now = utcnow()
        await execution.record(EventRecord(
            seq=seq, kind="receive", name=self.token, status="completed",
            input=None, output=json.dumps(entry["payload"], ensure_ascii=False),
            error=None, attempts=1, started_at=now, finished_at=now, consumes=int(entry["id"]),
        ))
        execution.waits.consumed(entry)
        return serializer.decode(entry["payload"])


def hook(token: str | None = None, *, multi: bool = False) -> Hook:
    """Create a hook in the current run (see the module docs).

    ``token``: choose the token yourself (e.g. ``"order-42:approval"``);
    default: an unguessable generated one. ``multi``: accept many payloads.
    """
    execution = context.current_execution()
    if execution is None:
        raise NotInRunError(
            "hook() works only inside a workflow run: a hook belongs to the run that waits for it"
        )
    if token is not None:
        if not isinstance(token, str) or not token.strip():
            raise InvalidArgument("a hook token must be a non-empty string")
        if token.startswith(TOKEN_PREFIX):
            raise InvalidArgument(
                f"hook tokens starting with {TOKEN_PREFIX!r} are reserved for generated ones"
            )
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidArgument(f"a hook token is at most {MAX_TOKEN_LENGTH} characters")
    seq, recorded = execution.next_seq("hook", token)
    if recorded is not None and not recorded.get("mismatch"):
        if recorded["status"] == "failed":
            execution.defer(error=rebuild_exception(recorded["error"]))
            return Hook(execution, seq, recorded["name"], multi)
        output = recorded["output"]
        return Hook(execution, seq, output["token"], bool(output.get("multi")) or multi)
    if recorded is not None:  # a mismatch: raised at the next durable call
        execution.defer(error=execution.nondeterminism)
        return Hook(execution, seq, token or "", multi)
    chosen = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    execution.defer(_create(execution, seq, chosen, multi))
    return Hook(execution, seq, chosen, multi)


def _create(execution: RunExecution, seq: int, token: str, multi: bool) -> Any:
    async def create() -> None:
        status, error, early = await execution.write(
            execution.recorder.create_hook(execution.lease, seq, token, multi, utcnow())
        )
        if status == "failed":
            raise rebuild_exception(error) if error else HookConflict(token, None)
        execution.waits.add_inputs(execution.waits.seen_wakeups, early, [])

    return asyncio.ensure_future(create())
