"""A run's life on a worker, as one state machine.

Every change of a run's state goes through :meth:`Lifecycle.move`, which
knows the allowed transitions; anything else is a bug and raises
:class:`InvalidTransition` at once, never a silent release. The worker
learns of each transition through the one callback it registers.

::

    RUNNING ──► SUSPENDING ──► SUSPENDED ──(claimed again from the cache)──► RUNNING
       │  ▲          │
       │  └──────────┘ (an input arrived while suspending)
       ├──► FINISHING ──► FINISHED
       ├──► RELEASING ──► RELEASED
       └──► CANCELLED | LOST       (from any state in which the worker holds the run)
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from werkfluss.errors import InvalidTransition


class RunState(enum.Enum):
    RUNNING = "running"  # executing: replaying its log, or live; steps may be in flight
    SUSPENDING = "suspending"  # blocked on durable waits only; the suspension is being written
    FINISHING = "finishing"  # its outcome is being written
    RELEASING = "releasing"  # being handed back to the queue (the worker is stopping)
    SUSPENDED = "suspended"  # left this worker until a wake-up (kept in the cache)
    FINISHED = "finished"  # its outcome is committed
    RELEASED = "released"  # handed back: claimable at once by any worker
    CANCELLED = "cancelled"  # cancelled by someone else: nothing more is written
    LOST = "lost"  # this worker's lease is gone: nothing more is written

    @property
    def final(self) -> bool:
        return self in _FINAL

    @property
    def writing(self) -> bool:
        """Whether the worker may still write for the run in this state."""
        return self in (RunState.RUNNING, RunState.SUSPENDING, RunState.FINISHING, RunState.RELEASING)


_FINAL = frozenset({RunState.FINISHED, RunState.RELEASED, RunState.CANCELLED, RunState.LOST})

_ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.RUNNING: frozenset({
        RunState.SUSPENDING, RunState.FINISHING, RunState.RELEASING, RunState.CANCELLED, RunState.LOST,
    }),
    RunState.SUSPENDING: frozenset({
        RunState.SUSPENDED, RunState.RUNNING, RunState.FINISHING, RunState.CANCELLED, RunState.LOST,
    }),
    RunState.FINISHING: frozenset({RunState.FINISHED, RunState.CANCELLED, RunState.LOST}),
    RunState.RELEASING: frozenset({RunState.RELEASED, RunState.CANCELLED, RunState.LOST}),
    RunState.SUSPENDED: frozenset({RunState.RUNNING}),
    RunState.FINISHED: frozenset(),
    RunState.RELEASED: frozenset(),
    RunState.CANCELLED: frozenset(),
    RunState.LOST: frozenset(),
}

Listener = Callable[[RunState, RunState, str], None]


class Lifecycle:
    """The current state of one run and the single place that changes it."""

    __slots__ = ("_listener", "reason", "run_id", "state")

    def __init__(self, run_id: str, listener: Listener | None = None) -> None:
        self.run_id = run_id
        self.state = RunState.RUNNING
        self.reason = ""
        self._listener = listener

    def listen(self, listener: Listener | None) -> None:
        self._listener = listener

    def unlisten(self, listener: Listener) -> None:
        """Stop telling ``listener`` (if it is the one listening)."""
        if self._listener == listener:
            self._listener = None

    def can(self, to: RunState) -> bool:
        return to in _ALLOWED[self.state]

    def move(self, to: RunState, reason: str = "") -> None:
        """Change the state; raise :class:`InvalidTransition` if ``to`` is not allowed."""
        old = self.state
        if to not in _ALLOWED[old]:
            raise InvalidTransition(
                f"run {self.run_id}: no transition from {old.value} to {to.value} ({reason or 'no reason'})"
            )
        self.state = to
        self.reason = reason
        if self._listener is not None:
            self._listener(old, to, reason)
