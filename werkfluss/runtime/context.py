"""Where code is running: inside a workflow run, inside a step, or neither.

Two context variables carry it. A workflow's task sees its
:class:`~werkfluss.runtime.replay.RunExecution`; a step body sees ``None`` there (so
steps it calls are plain function calls) and its :class:`StepInfo` instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkfluss.errors import NotInRunError

if TYPE_CHECKING:
    from werkfluss.runtime.replay import RunExecution

_execution: ContextVar[RunExecution | None] = ContextVar("werkfluss_execution", default=None)
_step: ContextVar[StepInfo | None] = ContextVar("werkfluss_step", default=None)
_race_branch: ContextVar[RaceBranch | None] = ContextVar("werkfluss_race_branch", default=None)
# True inside a workflow called as a plain function (outside any run): its step
# calls are awaited like in a run, so sync steps return awaitables there too.
_plain_workflow: ContextVar[bool] = ContextVar("werkfluss_plain_workflow", default=False)


class RaceBranch:
    """Set in the task that runs one branch of a ``race()``: the durable call
    at ``seq`` does not record its own outcome (the race records the winner's)."""

    __slots__ = ("child_id", "consumes", "counted", "event_time", "release", "seq")

    def __init__(self, seq: int | None) -> None:
        self.seq = seq
        self.counted = False  # counts as activity (not blocked, or finished but not yet seen)
        self.consumes: int | None = None  # a hook payload taken by this branch
        self.release: Callable[[], None] | None = None  # gives the payload back if it loses
        self.child_id: str | None = None  # a child run to cancel if it loses
        self.event_time: dt.datetime | None = None  # when its outcome happened


def race_branch_for(seq: int) -> RaceBranch | None:
    """The race branch this durable call is, if it is one."""
    branch = _race_branch.get()
    return branch if branch is not None and branch.seq == seq else None


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
