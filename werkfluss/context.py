"""Where code is running: inside a workflow run, inside a step, or neither.

Two context variables carry it. A workflow's task sees its
:class:`~werkfluss.replay.RunExecution`; a step body sees ``None`` there (so
steps it calls are plain function calls) and its :class:`StepInfo` instead.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkfluss.errors import NotInRunError

if TYPE_CHECKING:
    from werkfluss.replay import RunExecution

_execution: ContextVar[RunExecution | None] = ContextVar("werkfluss_execution", default=None)
_step: ContextVar[StepInfo | None] = ContextVar("werkfluss_step", default=None)


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


def current_execution() -> RunExecution | None:
    """The run whose workflow code is executing in this task, if any."""
    return _execution.get()
