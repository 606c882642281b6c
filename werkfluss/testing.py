"""Run workflows in memory, without a database: for tests of your own workflows.

:class:`Simulation` stands in for PostgreSQL and a worker. It drives the same
runtime a worker does, records the log the same way, and lets a test decide
when steps finish, when payloads arrive and when time passes — or just runs
everything to the end::

    from werkfluss.testing import Simulation

    async def test_onboarding_sends_one_email():
        sim = Simulation()
        run = sim.start(onboard, "user-123")
        await run.run_steps()                 # executes step bodies as they are called
        assert run.status == "sleeping"
        sim.clock.set(run.wake_at)            # a day passes, at once
        run.tick()                            # the run sees it: its sleep is over
        await run.run_steps()
        assert run.result() == "done"
        assert [r.name for r in run.steps()] == ["app.fetch_data", "app.send_email"]

``run.crash()`` drops the in-memory execution and resumes from the committed
log, as a worker taking over after a crash would, so a test can check that a
workflow replays without :class:`~werkfluss.errors.NonDeterminismError`;
``run.crash(keep=n)`` loses every record after the first ``n`` too (the worker
died before committing them). To decide the order in which things happen,
finish steps one by one — ``run.complete_step(seq, value)`` (or ``error=``),
or ``await run.run_step(seq)`` to execute that body — instead of
``run_steps()``; ``run.stop()`` is the worker stopping (the run is handed back
once its steps in flight are recorded; ``run.resume()`` claims it again).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkfluss import serializer
from werkfluss.clock import ManualClock
from werkfluss.errors import RunCancelled, RunFailed, WerkflussError
from werkfluss.records import ChildOutcome, LogRecord, Payload
from werkfluss.runtime import commands as cmd
from werkfluss.runtime.failures import error_record
from werkfluss.runtime.instance import WorkflowInstance
from werkfluss.runtime.state import RunState
from werkfluss.runtime.workflows import Workflow


@dataclass
class SimulatedRun:
    """One run inside a :class:`Simulation`."""

    sim: Simulation
    run_id: str
    workflow: Workflow[..., Any]
    args: str
    kwargs: str
    started_at: dt.datetime
    instance: WorkflowInstance | None = None
    log: list[LogRecord] = field(default_factory=list)  # committed records
    steps_in_flight: dict[int, cmd.ExecuteStep] = field(default_factory=dict)
    status: str = "pending"
    outcome: cmd.Finish | None = None
    suspension: cmd.Suspend | None = None
    children: set[str] = field(default_factory=set)
    commands: list[cmd.Command] = field(default_factory=list)  # every command, in order
    hooks: dict[str, int] = field(default_factory=dict)  # token -> seq
    multi: set[str] = field(default_factory=set)
    claims: int = 0

    # --- driving -------------------------------------------------------------------

    def resume(self) -> None:
        """Claim the run: a fresh instance replays the committed log."""
        if self.instance is not None and self.instance.state is RunState.SUSPENDED:
            self.instance.evict()
        self.claims += 1
        self.steps_in_flight.clear()
        self.suspension = None
        self.status = "running"
        consumed = {r.consumes for r in self.log if r.consumes is not None}
        payloads = [p for p in self.sim.payloads if p.token in self.hooks and p.id not in consumed]
        delivered = {json.loads(r.output or "{}").get("run_id") for r in self.log if r.kind == "child"}
        children = [o for cid, o in self.sim.child_outcomes.items()
                    if cid in self.children and cid not in delivered]
        self.instance = WorkflowInstance(
            run_id=self.run_id, workflow=self.workflow, args=self.args, kwargs=self.kwargs,
            log=list(self.log), clock=self.sim.clock, started_at=self.started_at,
            payloads=payloads, children=children,
        )
        self._apply(self.instance.start())

    def crash(self, *, keep: int | None = None) -> None:
        """Drop the execution (uncommitted work is lost) and resume from the log.

        ``keep``: the worker died after committing only the first ``keep``
        records of the log; the later ones are lost, with what they created
        (a hook whose record is lost no longer exists) and the run's outcome.
        """
        if self.instance is not None:
            if self.instance.state is RunState.SUSPENDED:
                self.instance.evict()
            elif not self.instance.state.final:
                self.instance.lost("crash")
        if keep is not None:
            if not 0 <= keep <= len(self.log):
                raise ValueError(f"keep must be from 0 to {len(self.log)}, got {keep}")
            lost, self.log[keep:] = self.log[keep:], []
            for record in lost:
                if record.kind == "hook" and self.hooks.get(record.name) == record.seq:
                    del self.hooks[record.name]
                    self.multi.discard(record.name)
                    if self.sim.hook_owners.get(record.name) == (self.run_id, record.seq):
                        del self.sim.hook_owners[record.name]
            if lost:
                self.outcome = None
        self.resume()

    def stop(self) -> None:
        """The worker is stopping: no step body starts any more. The run is handed
        back (status ``pending``; :meth:`resume` claims it again) once its steps in
        flight are recorded, or suspends if it only waits."""
        assert self.instance is not None
        self._apply(self.instance.stop())

    def complete_step(self, seq: int, value: Any = None, *, error: BaseException | None = None,
                      attempts: int = 1) -> None:
        """Finish the step in flight at ``seq`` with ``value`` (or ``error``)."""
        command = self.steps_in_flight.pop(seq)
        assert self.instance is not None
        if error is None:
            outcome = cmd.StepOutcome(True, serializer.dumps(value), None, attempts, self.sim.clock.now())
        else:
            outcome = cmd.StepOutcome(False, None, error_record(error), attempts, self.sim.clock.now(),
                                      exception=error)
        del command
        self._apply(self.instance.step_done(seq, outcome))

    async def run_step(self, seq: int | None = None) -> None:
        """Execute the body of one step in flight (the one at ``seq``, else the
        oldest), with its retries and timeout, as a worker does."""
        from werkfluss.worker.executor import run_attempts

        if seq is None:
            if not self.steps_in_flight:
                raise LookupError(f"run {self.run_id} has no step in flight")
            seq = next(iter(self.steps_in_flight))
        command = self.steps_in_flight[seq]
        outcome = await run_attempts(command.step, command.args, command.kwargs, command.info,
                                     None, self.sim.clock)
        if self.steps_in_flight.get(seq) is not command:
            return  # cancelled (or the run left) meanwhile: the outcome is not wanted
        del self.steps_in_flight[seq]
        assert self.instance is not None
        self._apply(self.instance.step_done(seq, outcome))

    async def run_steps(self, *, limit: int = 10_000) -> None:
        """Execute the bodies of steps in flight (and of steps they lead to) until none is left."""
        for _ in range(limit):
            if not self.steps_in_flight:
                return
            await self.run_step()
        if self.steps_in_flight:
            raise WerkflussError(f"run {self.run_id}: more than {limit} steps")

    @property
    def wake_at(self) -> dt.datetime | None:
        """When the suspended run's next timer fires (a sleep's end, a wait's
        timeout, its deadline); ``None`` if it is not suspended or waits on
        nothing timed. Records are stamped at least a microsecond apart, so a
        ``sleep("1 day")`` ends a little more than a day after the run started:
        ``sim.clock.set(run.wake_at)`` reaches it exactly."""
        return self.suspension.wake_at if self.suspension is not None else None

    def tick(self) -> None:
        """Let the run see the clock's current time (timers, deadline)."""
        if self.status in ("sleeping", "waiting") and self.suspension is not None:
            wake = self.suspension.wake_at
            if wake is not None and wake <= self.sim.clock.now():
                self.resume()
            return
        if self.instance is not None and self.status == "running":
            self._apply(self.instance.tick())

    # --- results -----------------------------------------------------------------------

    def result(self) -> Any:
        """The run's result; raises :class:`RunFailed` / :class:`RunCancelled`, or
        ``LookupError`` if it has not finished."""
        if self.status == "cancelled":
            raise RunCancelled(self.run_id)
        if self.outcome is None:
            raise LookupError(f"run {self.run_id} has not finished (status: {self.status})")
        if self.outcome.status == "completed":
            return serializer.loads(self.outcome.result)
        raise RunFailed.from_record(self.run_id, json.loads(self.outcome.error or "{}"))

    def steps(self) -> list[LogRecord]:
        return [r for r in self.log if r.kind == "step"]

    # --- carrying out commands ------------------------------------------------------------

    def _apply(self, commands: list[cmd.Command]) -> None:
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            self.commands.append(command)
            queue.extend(self._carry_out(command))

    def _carry_out(self, command: cmd.Command) -> list[cmd.Command]:
        instance = self.instance
        assert instance is not None
        if isinstance(command, cmd.ExecuteStep):
            self.steps_in_flight[command.seq] = command
        elif isinstance(command, cmd.CancelStep):
            self.steps_in_flight.pop(command.seq, None)
        elif isinstance(command, cmd.AppendRecord):
            self._append(command.record)
        elif isinstance(command, cmd.CreateHook):
            return self._create_hook(command)
        elif isinstance(command, cmd.MarkHookMulti):
            self.multi.add(command.token)
        elif isinstance(command, cmd.StartChild):
            self.children.add(command.child_id)
            self.sim.started_children.setdefault(command.child_id, (command.workflow, command.args))
            return instance.child_started(command.child_id, error=None)
        elif isinstance(command, cmd.CancelChild):
            self.sim.cancelled_children.add(command.child_id)
        elif isinstance(command, cmd.Suspend):
            self.suspension = command
            instance.suspended()
            self.status = command.status
            self.sim._suspended(self)
        elif isinstance(command, cmd.Finish):
            self.outcome = command
            self.status = command.status
            instance.finished()
        elif isinstance(command, cmd.Release):
            instance.released()
            self.status = "pending"
        return []

    def _append(self, record: LogRecord) -> None:
        if any(r.seq == record.seq for r in self.log):
            raise AssertionError(f"run {self.run_id}: seq {record.seq} recorded twice")
        self.log.append(record)

    def _create_hook(self, command: cmd.CreateHook) -> list[cmd.Command]:
        assert self.instance is not None
        owner = self.sim.hook_owners.get(command.token)
        error = None
        if owner is not None and owner != (self.run_id, command.seq):
            error = {"type": "werkfluss.errors.HookConflict",
                     "message": f"hook token {command.token} is taken"}
        else:
            self.sim.hook_owners[command.token] = (self.run_id, command.seq)
            self.hooks[command.token] = command.seq
        if command.multi:
            self.multi.add(command.token)
        self._append(LogRecord(
            seq=command.seq, kind="hook", name=command.token,
            status="completed" if error is None else "failed",
            output=None if error else json.dumps({"token": command.token, "multi": command.multi}),
            error=None if error is None else json.dumps(error), started_at=command.at, finished_at=command.at,
        ))
        consumed = {r.consumes for r in self.log if r.consumes is not None}
        early = [p for p in self.sim.payloads if p.token == command.token and p.id not in consumed]
        return self.instance.hook_created(command.token, error=error, early=early)


class Simulation:
    """An in-memory stand-in for the database and a worker (see the module docs)."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.runs: dict[str, SimulatedRun] = {}
        self.payloads: list[Payload] = []
        self.hook_owners: dict[str, tuple[str, int]] = {}
        self.child_outcomes: dict[str, ChildOutcome] = {}
        self.started_children: dict[str, tuple[str, str]] = {}
        self.cancelled_children: set[str] = set()
        self._ids = itertools.count(1)
        self.on_suspend: Callable[[SimulatedRun], None] | None = None

    def start(self, workflow: Workflow[..., Any], *args: Any, run_id: str | None = None,
              **kwargs: Any) -> SimulatedRun:
        """Start a run and execute it up to its first wait (no step body runs yet)."""
        run_id = run_id or f"run-{next(self._ids)}"
        run = SimulatedRun(self, run_id, workflow, serializer.dumps(list(args)), serializer.dumps(kwargs),
                           self.clock.now())
        self.runs[run_id] = run
        run.resume()
        return run

    def send(self, token: str, payload: Any = None) -> None:
        """Deliver a hook payload (the run, if it waits, is resumed)."""
        self.payloads.append(Payload(next(self._ids), token, serializer.dumps(payload), self.clock.now()))
        owner = self.hook_owners.get(token)
        if owner is not None:
            self._wake(self.runs[owner[0]])

    def finish_child(self, child_id: str, value: Any = None, *, error: BaseException | None = None,
                     cancelled: bool = False) -> None:
        """End a child run (the parent, if it waits, is resumed)."""
        if cancelled:
            outcome = ChildOutcome(child_id, "cancelled", None,
                                   json.dumps(error_record(RunCancelled(child_id))), self.clock.now())
        elif error is not None:
            outcome = ChildOutcome(child_id, "failed", None, json.dumps(error_record(error)),
                                   self.clock.now())
        else:
            outcome = ChildOutcome(child_id, "completed", serializer.dumps(value), None, self.clock.now())
        self.child_outcomes[child_id] = outcome
        parent = self.runs.get(child_id.rsplit("::", 1)[0])
        if parent is not None:
            self._wake(parent)

    def _wake(self, run: SimulatedRun) -> None:
        if run.status in ("waiting", "sleeping") and run.instance is not None:
            run.resume()
        elif run.status == "running" and run.instance is not None:
            consumed = {r.consumes for r in run.log if r.consumes is not None}
            payloads = [p for p in self.payloads if p.token in run.hooks and p.id not in consumed]
            children = [o for cid, o in self.child_outcomes.items() if cid in run.children]
            run._apply(run.instance.add_inputs(payloads, children))

    def _suspended(self, run: SimulatedRun) -> None:
        if self.on_suspend is not None:
            self.on_suspend(run)


__all__ = ["RunState", "SimulatedRun", "Simulation"]
