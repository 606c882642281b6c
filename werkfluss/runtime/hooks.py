"""Hooks: a run waits for an event from outside.

    @workflow
    async def approve(order_id: str) -> bool:
        approval = hook()                                # or hook(token=f"order-{order_id}:approval")
        await ask_reviewer(order_id, approval.token)     # a step hands the token out
        decision = await approval.wait(timeout="7 days") # TimeoutError if nobody answers
        return decision["approved"]

Deliver with ``await engine.send(token, payload)``,
``SELECT werkfluss.send(token, payload)`` or ``werkfluss send TOKEN JSON``.

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
* Payloads are delivered in the order they were received; each wait records
  the payload it received, so a replay receives the same one.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from werkfluss.durations import Duration, parse_duration
from werkfluss.errors import HookConflict, InvalidArgument, NotInRunError
from werkfluss.limits import check_token
from werkfluss.records import LogRecord
from werkfluss.runtime import commands as cmd
from werkfluss.runtime.context import current_instance, error_from_json
from werkfluss.runtime.durable import DurableCall, load_value
from werkfluss.runtime.failures import error_record, rebuild_exception

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance

TOKEN_PREFIX = "wfh_"

_UNKNOWN = object()  # the database has not answered the hook's creation yet


class Hook:
    """A hook of the current run; ``token`` is what senders use."""

    def __init__(self, run: WorkflowInstance, seq: int, token: str, multi: bool) -> None:
        self._run = run
        self.seq = seq
        self.token = token
        self.multi = multi
        self._creation: Any = _UNKNOWN  # None: created; a dict: the error record

    def __repr__(self) -> str:
        return f"<werkfluss hook {self.token}>"

    @property
    def creation_known(self) -> bool:
        return self._creation is not _UNKNOWN

    @property
    def creation_error(self) -> dict[str, Any] | None:
        return None if self._creation is _UNKNOWN else self._creation

    def created(self, error: dict[str, Any] | None) -> None:
        self._creation = error

    def wait(self, timeout: Duration | None = None) -> Any:
        """Await the next payload; ``TimeoutError`` if none arrives within ``timeout``."""
        run = self._current()
        if timeout is None:
            return run.awaitable(run.call(ReceiveCall(self)))
        seconds = parse_duration(timeout, what="hook wait timeout")
        from werkfluss.runtime.racing import race
        from werkfluss.runtime.timers import sleep

        return self._first_or_timeout(race(self.wait(), sleep(seconds)), seconds)

    async def _first_or_timeout(self, outcome: Any, seconds: float) -> Any:
        index, value = await outcome
        if index == 1:
            raise TimeoutError(f"no payload arrived for hook {self.token} within {seconds:g}s")
        return value

    def __aiter__(self) -> Hook:
        run = self._current()
        if not self.multi:
            self.multi = True
        run.emit(cmd.MarkHookMulti(self.token))
        return self

    async def __anext__(self) -> Any:
        return await self.wait()

    def _current(self) -> WorkflowInstance:
        run = current_instance()
        if run is not self._run:
            raise NotInRunError(
                f"hook {self.token} belongs to run {self._run.run_id}; wait for it in that "
                "run's workflow code (not inside a step)"
            )
        return run


class HookCall(DurableCall):
    """``hook()``: the hook's creation is recorded with its token."""

    kind = "hook"

    def __init__(self, token: str | None, multi: bool) -> None:
        self.name = token  # None (generated) matches the recorded token, whatever it is
        self.multi = multi

    def begin(self, run: WorkflowInstance, seq: int) -> Hook:
        token = self.name or TOKEN_PREFIX + secrets.token_urlsafe(32)
        hook = Hook(run, seq, token, self.multi)
        run.register_hook(token, hook)
        run.create_hook(seq, token, self.multi)
        return hook

    def restore(self, run: WorkflowInstance, seq: int, record: LogRecord) -> Hook:
        output = _loads(record.output) or {}
        token = output.get("token", record.name) if isinstance(output, dict) else record.name
        multi = bool(output.get("multi")) if isinstance(output, dict) else False
        hook = Hook(run, seq, str(token), multi or self.multi)
        run.register_hook(hook.token, hook)
        if record.status == "failed":
            error = error_from_json(record.error) or error_record(HookConflict(str(token), None))
            hook.created(error)
            run.fail(rebuild_exception(error))
        else:
            hook.created(None)
        return hook


class ReceiveCall(DurableCall):
    """``await hook.wait()``: the payload it received is recorded."""

    kind = "receive"
    delivers = True

    def __init__(self, hook: Hook) -> None:
        self.hook = hook
        self.name = hook.token
        self.wait_key = f"hook:{hook.token}"

    def deliverable(self, run: WorkflowInstance, seq: int) -> LogRecord | None:
        hook = self.hook
        if not hook.creation_known:
            return None
        error = hook.creation_error
        if error is not None:
            return LogRecord(seq=seq, kind="receive", name=hook.token, status="failed",
                             error=json.dumps(error, ensure_ascii=False))
        payload = run.take_payload(hook.token)
        if payload is None:
            return None
        return LogRecord(seq=seq, kind="receive", name=hook.token, status="completed",
                         output=payload.payload, started_at=payload.received_at, consumes=payload.id)

    def resolve(self, run: WorkflowInstance, record: LogRecord) -> Any:
        if record.status == "completed":
            return load_value(record.output)
        raise rebuild_exception(error_from_json(record.error),
                                where=f" for run {run.run_id} seq {record.seq}")


def hook(token: str | None = None, *, multi: bool = False) -> Hook:
    """Create a hook in the current run (see the module docs).

    ``token``: choose the token yourself (e.g. ``"order-42:approval"``);
    default: an unguessable generated one. ``multi``: accept many payloads.
    """
    run = current_instance()
    if run is None:
        raise NotInRunError(
            "hook() works only inside a workflow run: a hook belongs to the run that waits for it"
        )
    if token is not None:
        token = check_token(token)
        if token.startswith(TOKEN_PREFIX):
            raise InvalidArgument(
                f"hook tokens starting with {TOKEN_PREFIX!r} are reserved for generated ones"
            )
    created: Hook = run.call_now(HookCall(token, multi))
    return created


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None
