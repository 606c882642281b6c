"""Where code is running, and the deterministic helpers for workflow code.

Workflow code runs on a :class:`~werkfluss.runtime.loop.WorkflowLoop`; the
running loop therefore tells whether a call happens inside a run. A step body
runs on the worker's real loop (or in a thread), where steps it calls are
plain function calls, and sees its :class:`StepInfo`.

Workflow code must be deterministic: the same log must lead it to the same
calls. Use :func:`now` and :func:`uuid4` instead of ``datetime.now()`` and
``uuid.uuid4()`` (their values are recorded, so a replay sees the same ones),
and do I/O only inside steps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid as uuid_module
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkfluss import serializer
from werkfluss.errors import NotInRunError
from werkfluss.records import LogRecord
from werkfluss.runtime.durable import DurableCall, load_value
from werkfluss.runtime.loop import WorkflowLoop

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance

_step: ContextVar[StepInfo | None] = ContextVar("werkfluss_step", default=None)
# True inside a workflow called as a plain function (outside any run): its step
# calls are awaited like in a run, so sync steps return awaitables there too.
_plain_workflow: ContextVar[bool] = ContextVar("werkfluss_plain_workflow", default=False)


def current_instance() -> WorkflowInstance | None:
    """The run whose workflow code is executing right now, if any."""
    loop = asyncio._get_running_loop()
    if isinstance(loop, WorkflowLoop):
        return loop.instance
    return None


@dataclass(frozen=True)
class StepInfo:
    """What a running step knows about itself (see :func:`step_info`)."""

    run_id: str
    workflow: str
    step: str
    seq: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """``"<run_id>:<seq>"``: the same for every attempt and every replay of this call."""
        return f"{self.run_id}:{self.seq}"


def step_info() -> StepInfo:
    """The current step's run id, seq, attempt and idempotency key.

    Use the key to make outside side effects idempotent, e.g. as a payment
    provider's idempotency key::

        @step(retries=3)
        async def charge(order: dict) -> str:
            key = step_info().idempotency_key
            return await payments.charge(order["amount"], idempotency_key=key)
    """
    info = _step.get()
    if info is None:
        raise NotInRunError(
            "step_info() works only inside a @step while a workflow run executes it"
        )
    return info


class _ValueCall(DurableCall):
    """A value fixed when first computed and recorded: ``now()`` and ``uuid4()``."""

    def __init__(self, kind: str, make: Any) -> None:
        self.kind = kind  # type: ignore[misc]
        self.name = kind
        self._make = make

    def begin(self, run: WorkflowInstance, seq: int) -> Any:
        value = self._make(run)
        run.emit_record(LogRecord(
            seq=seq, kind=self.kind, name=self.kind, status="completed",
            output=serializer.dumps(value, what=f"the value of {self.kind}()"),
            started_at=run.workflow_time, finished_at=run.workflow_time,
        ))
        return value

    def restore(self, run: WorkflowInstance, seq: int, record: LogRecord) -> Any:
        return load_value(record.output)


def now() -> dt.datetime:
    """The current time (UTC). Inside a workflow the value is recorded, so a
    replay returns the same one; outside a run it is ``datetime.now(UTC)``.

        @workflow
        async def invoice(order_id: str) -> None:
            issued = werkfluss.now()
            await send_invoice(order_id, issued)
    """
    run = current_instance()
    if run is None:
        return dt.datetime.now(dt.UTC)
    value: dt.datetime = run.call_now(_ValueCall("now", lambda r: r.now()))
    return value


def uuid4() -> uuid_module.UUID:
    """A random UUID. Inside a workflow the value is recorded, so a replay
    returns the same one; outside a run it is ``uuid.uuid4()``."""
    run = current_instance()
    if run is None:
        return uuid_module.uuid4()
    value: uuid_module.UUID = run.call_now(_ValueCall("uuid", lambda r: uuid_module.uuid4()))
    return value


def error_from_json(text: str | None) -> dict[str, Any]:
    """An error record stored as JSON text (``{}`` if there is none or it is unreadable)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {"type": "UnknownError", "message": text[:1000]}
    return value if isinstance(value, dict) else {"type": "UnknownError", "message": str(value)[:1000]}
