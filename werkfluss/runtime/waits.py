"""Passive waits, and suspending a run that has nothing else to do.

A run waits *passively* for a timer (``sleep``, a hook wait's timeout), a hook
payload, or a child run. Each wait first checks whether what it waits for is
already there (the claim brought the run's unconsumed payloads and finished
children along); if not, it registers a :class:`Waiter`.

When the run has waiters and nothing active — no step body running, no
record being written — it is suspended: the recorder releases its lease with
the earliest timer as wake-up time (status ``sleeping``), or with no time
(``waiting``) if it waits for an event, and the coroutine is dropped. Events
(``send``, a child finishing) make a waiting run claimable again; a worker
that holds the run is told instead, and feeds the news in with
:meth:`WaitSet.add_inputs`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from werkfluss import telemetry
from werkfluss.errors import DatabaseError, LeaseLost
from werkfluss.runtime import context

if TYPE_CHECKING:
    from werkfluss.runtime.replay import RunExecution

T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(value: Any) -> dt.datetime:
    """A timestamp from JSON (ISO text) or from the driver (datetime)."""
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


@dataclass(eq=False)
class Waiter:
    kind: str  # "timer" | "hook" | "child"
    key: Any  # wake-up time | token | child run id
    future: asyncio.Future[None] = field(repr=False)


class WaitSet:
    """The passive waits of one execution, its inputs, and its suspension."""

    def __init__(
        self,
        execution: RunExecution,
        *,
        wakeups: int,
        inbox: list[dict[str, Any]],
        children: list[dict[str, Any]],
    ) -> None:
        self._execution = execution
        self.seen_wakeups = wakeups
        self._inbox: dict[int, dict[str, Any]] = {int(e["id"]): e for e in inbox}
        self._taken: set[int] = set()
        self.children: dict[str, dict[str, Any]] = {c["run_id"]: c for c in children}
        self._waiters: set[Waiter] = set()
        self._active = 0
        self._check_scheduled = False
        self._progress = 0
        self._seen_progress = 0
        self._quiet_turns = 0
        self.suspending = False
        self._suspend_task: asyncio.Task[None] | None = None

    # --- activity ------------------------------------------------------------------------

    @asynccontextmanager
    async def active(self) -> AsyncIterator[None]:
        """Mark work in progress (a step body, a write): no suspension meanwhile."""
        self._progress += 1
        self._active += 1
        try:
            yield
        finally:
            self.release_activity()

    @asynccontextmanager
    async def blocked(self) -> AsyncIterator[None]:
        """The current task waits passively. A race branch counts as activity
        except while blocked like this — so a branch that finished keeps the
        run from being suspended until its race has taken the outcome."""
        branch = context._race_branch.get()
        counted = branch is not None and branch.counted
        if counted:
            assert branch is not None
            branch.counted = False
            self.release_activity()
        try:
            yield
        finally:
            if counted:
                assert branch is not None
                branch.counted = True
                self._active += 1

    def add_activity(self, n: int = 1) -> None:
        self._active += n

    def release_activity(self, n: int = 1) -> None:
        self._progress += 1
        self._active -= n
        if self._active == 0 and self._waiters:
            self._schedule_check()

    # --- inputs --------------------------------------------------------------------------

    def add_inputs(self, wakeups: int, inbox: list[dict[str, Any]], children: list[dict[str, Any]]) -> None:
        """News from the database (a payload, a finished child): wake the waits it concerns."""
        self.seen_wakeups = max(self.seen_wakeups, wakeups)
        for entry in inbox:
            self._inbox.setdefault(int(entry["id"]), entry)
        for child in children:
            self.children[child["run_id"]] = child
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_result(None)  # each wait re-checks what it needs

    def take_payload(self, token: str) -> dict[str, Any] | None:
        """The oldest payload for ``token`` not yet taken by a wait in this execution."""
        for entry_id in sorted(self._inbox):
            entry = self._inbox[entry_id]
            if entry["token"] == token and entry_id not in self._taken:
                self._taken.add(entry_id)
                return entry
        return None

    def give_back(self, entry: dict[str, Any]) -> None:
        """A payload taken by a race branch that lost: available again."""
        self._taken.discard(int(entry["id"]))

    def consumed(self, entry: dict[str, Any]) -> None:
        self._inbox.pop(int(entry["id"]), None)

    # --- waiting -------------------------------------------------------------------------

    async def until(self, kind: str, key: Any, ready: Callable[[], T | None]) -> T:
        """Wait until ``ready()`` gives something (checked again after every wake-up)."""
        while True:
            value = ready()
            if value is not None:
                self._progress += 1
                return value
            await self._wait(kind, key)

    async def _wait(self, kind: str, key: Any) -> None:
        loop = asyncio.get_running_loop()
        waiter = Waiter(kind, key, loop.create_future())
        timer = None
        if kind == "timer":
            delay = max(0.0, (key - utcnow()).total_seconds())
            timer = loop.call_later(delay, _resolve, waiter.future)
        self._waiters.add(waiter)
        self._schedule_check()
        try:
            async with self.blocked():
                await waiter.future
        finally:
            self._progress += 1
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    # --- suspension ----------------------------------------------------------------------

    def note_progress(self) -> None:
        """Something happened in the run (a call, a write, a wait began or ended)."""
        self._progress += 1

    def poke(self) -> None:
        """Look again whether the run can be suspended (a periodic safety net)."""
        if self._waiters and not self._active and not self.suspending:
            self._schedule_check()

    def _schedule_check(self) -> None:
        self._progress += 1
        if not self._check_scheduled:
            self._check_scheduled = True
            self._quiet_turns = 0
            self._seen_progress = self._progress
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        execution = self._execution
        if self.suspending or execution.halted or execution.done or self._active or not self._waiters:
            self._check_scheduled = False
            return
        if any(w.future.done() for w in self._waiters):
            self._check_scheduled = False
            return  # a wait is about to continue; it schedules a new check when it blocks again
        # Only suspend once the run has been quiet for a few turns of the event
        # loop: an outcome that is on its way to the workflow (a failed step
        # that gather() is about to raise, say) must arrive first.
        if self._progress != self._seen_progress or self._quiet_turns < _QUIET_TURNS:
            if self._progress != self._seen_progress:
                self._seen_progress = self._progress
                self._quiet_turns = 0
            else:
                self._quiet_turns += 1
            asyncio.get_running_loop().call_soon(self._check)
            return
        self._check_scheduled = False
        self.suspending = True
        # Decide on what is known now: inputs that arrive while the suspension
        # is written raise the wake-up count above this one, so the database
        # makes the run claimable again at once instead of losing them.
        timers = [w.key for w in self._waiters if w.kind == "timer"]
        events = sorted({f"{'hook' if w.kind == 'hook' else 'run'}:{w.key}"
                         for w in self._waiters if w.kind != "timer"})
        self._suspend_task = asyncio.get_running_loop().create_task(
            self._suspend(min(timers) if timers else None, events, self.seen_wakeups)
        )

    async def _suspend(self, wake_at: dt.datetime | None, events: list[str], wakeups: int) -> None:
        execution = self._execution
        due_at = wake_at
        if execution.deadline is not None:
            due_at = execution.deadline if due_at is None else min(due_at, execution.deadline)
        status = "waiting" if events else "sleeping"
        waiting_on = ", ".join(events)[:1000] or None
        try:
            await execution.recorder.suspend(execution.lease, status, wake_at, due_at, waiting_on, wakeups)
        except LeaseLost:
            reason = "lease_lost"
        except DatabaseError:
            reason = "abandoned"
        else:
            reason = "suspended"
            telemetry.logger().debug("run.suspended", run_id=execution.run_id, status=status,
                                     wake_at=wake_at.isoformat() if wake_at else None,
                                     waiting_on=waiting_on)
        try:
            execution.halt(reason)
        except asyncio.CancelledError:
            pass  # halt() raises for the workflow's benefit; here only its effect matters


_QUIET_TURNS = 4


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
