"""Property: whatever the workflow's shape and wherever the worker crashes, the
replay reaches the same commands and the same outcome.

Hypothesis generates a small program — chains, gathers, races, hook waits,
sleeps, child runs, ``wait_for`` timeouts, ``now()`` — that one interpreter
workflow walks with the real primitives (``PROGRAM``). A schedule chosen as
the run goes (which step in flight finishes next, when a payload is sent, when
a child ends, when time passes) drives an uncrashed run to its end; the
realized actions and the committed log are kept.

Then for every crash point — each prefix of the committed log — the same
actions are replayed in a fresh simulation up to the one during which the
first lost record was written, the worker crashes keeping only the prefix
(``run.crash(keep=k)``), and the rest of the schedule is applied at the same
clock times: step completions whose records were lost, time moves, payload
sends and child outcomes. The continuation must write exactly the records the
original wrote after the prefix (same seq, kind, name, input, output, status,
attempts and stamps), end with the same outcome, never see a
NonDeterminismError, issue again exactly once every step that was in flight
when the crashed worker last finished handling an event (never a step whose
outcome is recorded, never one already in flight), and give no suspension,
child start or child cancel the uncrashed run did not give.

Size: 150 examples by default (about 10 s), each a chain or gather of 2-4
subtrees of up to 5 leaves, driven by up to 40 chosen actions, every crash
point checked (typically 5-20 per example). A soak:
``WERKFLUSS_PROPERTY_EXAMPLES=5000 pytest --timeout=0 tests/unit/test_replay_properties.py
--hypothesis-show-statistics`` (the statistics list the shapes covered).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from werkfluss import hook, now, race, sleep, step
from werkfluss.errors import RunFailed
from werkfluss.runtime import commands as cmd
from werkfluss.testing import SimulatedRun, Simulation

from .simkit import outcome_key, same_log, wf

RETRIES = 1  # a step whose first `fails` attempts fail: fails <= RETRIES succeeds, else it fails for good
MAX_ACTIONS = 40
# More examples for a soak (see the module docs).
EXAMPLES = int(os.environ.get("WERKFLUSS_PROPERTY_EXAMPLES", "150"))


# --- the programs ------------------------------------------------------------------------------
#
# A program is JSON (it is the run's argument):
#   ["step", label, fails]         await pstep(label, fails)        -> "v:<label>" or ValueError(label)
#   ["sleep", label, seconds, aio] await sleep(seconds) / asyncio.sleep(seconds)
#   ["hook", token]                await hook(token).wait()         -> the payload sent to token
#   ["child", label, fails]        await CHILD(label, fails)         -> "c:<label>" or RunFailed
#   ["now"]                        now().isoformat()
#   ["seq", [...]]                 one after another (an error ends the chain)
#   ["gather", [...]]              asyncio.gather(..., return_exceptions=True)
#   ["race", [...]]                race(...): [index, value], or ["raised", type, message]
#   ["wait_for", op, timeout]      asyncio.wait_for(op, timeout), or "timeout"


@step(retries=RETRIES, name="prop.step")
async def pstep(label: str, fails: int) -> str:  # executed by the test's schedule, never by a body
    return f"v:{label}"


async def child(label: str, fails: bool) -> str:  # ended by the test's schedule
    return f"c:{label}"


CHILD = wf(child, "prop.child")


def _describe(value: Any) -> Any:
    if isinstance(value, BaseException):
        return ["raised", type(value).__name__, str(value)]
    return value


async def interpret(node: list[Any]) -> Any:
    kind = node[0]
    if kind == "step":
        return await pstep(node[1], node[2])
    if kind == "sleep":
        if node[3]:
            await asyncio.sleep(node[2])
        else:
            await sleep(node[2])
        return f"slept:{node[1]}"
    if kind == "hook":
        return await hook(node[1]).wait()
    if kind == "child":
        return await CHILD(node[1], node[2])
    if kind == "now":
        return now().isoformat()
    if kind == "seq":
        return [await interpret(item) for item in node[1]]
    if kind == "gather":
        results = await asyncio.gather(*(interpret(item) for item in node[1]), return_exceptions=True)
        return [_describe(r) for r in results]
    if kind == "race":
        try:
            index, value = await race(*(interpret(item) for item in node[1]))
        except (ValueError, RunFailed) as exc:
            return _describe(exc)
        return [index, value]
    if kind == "wait_for":
        try:
            return await asyncio.wait_for(interpret(node[1]), node[2])
        except TimeoutError:
            return "timeout"
    raise AssertionError(f"unknown node {node!r}")


async def program(tree: list[Any]) -> Any:
    return await interpret(tree)


PROGRAM = wf(program, "prop.program")


def _leaves() -> st.SearchStrategy[list[Any]]:
    return st.one_of(
        st.builds(lambda fails: ["step", "", fails], st.sampled_from([0, 0, 0, 1, 2])),
        st.builds(lambda s, aio: ["sleep", "", s, aio], st.sampled_from([0, 1, 2, 5]), st.booleans()),
        st.just(["hook", ""]),
        st.builds(lambda fails: ["child", "", fails], st.sampled_from([False, False, True])),
        st.just(["now"]),
    )


def _composite(children: st.SearchStrategy[list[Any]]) -> st.SearchStrategy[list[Any]]:
    items = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda xs: ["seq", xs], items),
        st.builds(lambda xs: ["gather", xs], items),
        st.builds(lambda xs: ["race", xs], items),
        st.builds(lambda op, t: ["wait_for", op, t], children, st.sampled_from([1, 3])),
    )


def _label(tree: list[Any]) -> list[Any]:
    """Give every leaf a unique label (hook tokens and step inputs differ)."""
    counter = iter(range(1, 1000))

    def walk(node: list[Any]) -> list[Any]:
        kind = node[0]
        if kind in ("step", "sleep", "child"):
            return [kind, f"{kind[0]}{next(counter)}", *node[2:]]
        if kind == "hook":
            return ["hook", f"h{next(counter)}"]
        if kind in ("seq", "gather", "race"):
            return [kind, [walk(item) for item in node[1]]]
        if kind == "wait_for":
            return ["wait_for", walk(node[1]), node[2]]
        return node

    return walk(tree)


# A chain or a gather of a few subtrees, so that most programs have several
# things going on at once.
programs = st.builds(
    lambda top, items: [top, items],
    st.sampled_from(["seq", "gather"]),
    st.lists(st.recursive(_leaves(), _composite, max_leaves=5), min_size=2, max_size=4),
).map(_label)


def _tokens(tree: list[Any]) -> list[str]:
    if tree[0] == "hook":
        return [tree[1]]
    if tree[0] in ("seq", "gather", "race"):
        return [t for item in tree[1] for t in _tokens(item)]
    if tree[0] == "wait_for":
        return _tokens(tree[1])
    return []


def _shape(tree: list[Any]) -> set[str]:
    kinds = {tree[0]}
    if tree[0] in ("seq", "gather", "race"):
        for item in tree[1]:
            kinds |= _shape(item)
    elif tree[0] == "wait_for":
        kinds |= _shape(tree[1])
    return kinds


# --- the schedule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: str  # "start" | "step" | "send" | "child" | "advance"
    target: Any = None  # seq | token | child id | the time the clock is set to
    at: dt.datetime | None = None  # the clock when it happened


@dataclass
class Trace:
    tree: list[Any]
    actions: list[Action] = field(default_factory=list)
    log_after: list[int] = field(default_factory=list)  # len(run.log) after each action
    flying_after: list[set[int]] = field(default_factory=list)  # steps in flight after each action
    run: SimulatedRun | None = None


def _apply(sim: Simulation, run: SimulatedRun, action: Action) -> None:
    if action.kind == "advance":
        sim.clock.set(action.target)
        run.tick()
        return
    assert sim.clock.now() == action.at, (sim.clock.now(), action)
    if action.kind == "step":
        command = run.steps_in_flight[action.target]
        label, fails = command.args
        if fails <= RETRIES:
            run.complete_step(action.target, f"v:{label}", attempts=fails + 1)
        else:
            run.complete_step(action.target, error=ValueError(label), attempts=RETRIES + 1)
    elif action.kind == "send":
        sim.send(action.target, {"payload": action.target})
    elif action.kind == "child":
        _, args = sim.started_children[action.target]
        label, fails = json.loads(args)
        if fails:
            sim.finish_child(action.target, error=KeyError(label))
        else:
            sim.finish_child(action.target, f"c:{label}")
    else:
        raise AssertionError(action)
    _no_nondeterminism(run)


def _no_nondeterminism(run: SimulatedRun) -> None:
    assert run.instance is not None
    assert run.instance.nondeterminism is None, run.instance.nondeterminism
    if run.outcome is not None:
        assert run.outcome.error_type != "werkfluss.errors.NonDeterminismError", run.outcome


def _choices(sim: Simulation, run: SimulatedRun, tokens: list[str], sent: set[str],
             ended: set[str]) -> list[Action]:
    t = sim.clock.now()
    choices = [Action("step", seq, t) for seq in sorted(run.steps_in_flight)]
    choices += [Action("send", token, t) for token in tokens if token not in sent]
    choices += [Action("child", cid, t) for cid in sorted(sim.started_children) if cid not in ended]
    wake = _next_wake(run)
    if wake is not None and wake > t:
        choices.append(Action("advance", wake, t))  # exactly to the next wake-up
    choices.append(Action("advance", t + dt.timedelta(seconds=1), t))
    return choices


def _next_wake(run: SimulatedRun) -> dt.datetime | None:
    if run.suspension is not None and run.status in ("sleeping", "waiting"):
        return run.suspension.wake_at
    return run.instance.next_wake() if run.instance is not None else None


def _forced(sim: Simulation, run: SimulatedRun, tokens: list[str], sent: set[str],
            ended: set[str]) -> Action:
    """Past MAX_ACTIONS: the next action that surely makes progress."""
    t = sim.clock.now()
    if run.steps_in_flight:
        return Action("step", min(run.steps_in_flight), t)
    unsent = [token for token in tokens if token not in sent]
    if unsent:
        return Action("send", unsent[0], t)
    unended = sorted(cid for cid in sim.started_children if cid not in ended)
    if unended:
        return Action("child", unended[0], t)
    wake = _next_wake(run)
    assert wake is not None, f"run stuck: {run.status} {run.suspension}"
    return Action("advance", max(wake, t + dt.timedelta(microseconds=1)), t)


def drive(data: st.DataObject, tree: list[Any]) -> Trace:
    """Run the program to its end without a crash, on a schedule drawn as it goes."""
    sim = Simulation()
    trace = Trace(tree)
    run = sim.start(PROGRAM, tree)
    _no_nondeterminism(run)
    trace.run = run
    trace.actions.append(Action("start", None, sim.clock.now()))
    trace.log_after.append(len(run.log))
    trace.flying_after.append(set(run.steps_in_flight))
    tokens = _tokens(tree)
    sent: set[str] = set()
    ended: set[str] = set()
    for turn in range(10 * MAX_ACTIONS):
        if run.outcome is not None:
            break
        if turn < MAX_ACTIONS:
            action = data.draw(st.sampled_from(_choices(sim, run, tokens, sent, ended)))
        else:
            action = _forced(sim, run, tokens, sent, ended)
        if action.kind == "send":
            sent.add(action.target)
        elif action.kind == "child":
            ended.add(action.target)
        if action.kind == "step" and run.suspension is not None:
            raise AssertionError("a run with a step in flight suspended")
        _apply(sim, run, action)
        trace.actions.append(action)
        trace.log_after.append(len(run.log))
        trace.flying_after.append(set(run.steps_in_flight))
    assert run.outcome is not None, f"the run did not end: {run.status}"
    # Outcomes are stamped in strictly increasing order, in the order they were committed.
    stamps = [r.finished_at for r in run.log if r.kind in ("step", "receive", "child")]
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(stamps))
    return trace


# --- crashing ------------------------------------------------------------------------------------


def _check_issues(commands: list[cmd.Command], recorded: set[int]) -> None:
    """No step is issued while it is in flight already, nor once its outcome is recorded."""
    recorded = set(recorded)
    flying: set[int] = set()
    for command in commands:
        if isinstance(command, cmd.AppendRecord):
            recorded.add(command.record.seq)
            flying.discard(command.record.seq)
        elif isinstance(command, cmd.ExecuteStep):
            assert command.seq not in recorded, f"step at seq {command.seq} issued again after its record"
            assert command.seq not in flying, f"step at seq {command.seq} issued twice"
            flying.add(command.seq)
        elif isinstance(command, cmd.CancelStep):
            flying.discard(command.seq)
        elif isinstance(command, (cmd.Suspend, cmd.Finish, cmd.Release)):
            flying.clear()


def crash_and_continue(trace: Trace, keep: int) -> None:
    original = trace.run
    assert original is not None
    assert original.outcome is not None
    full_log = original.log
    # The action during which record `keep` (0-based) was written; the crash
    # happens there, after what it did in the database, before that record.
    if keep == len(full_log):
        crash_at = len(trace.actions) - 1
    else:
        crash_at = next(i for i, n in enumerate(trace.log_after) if n > keep)

    sim = Simulation()
    run = sim.start(PROGRAM, trace.tree)
    for action in trace.actions[1:crash_at + 1]:
        _apply(sim, run, action)
    assert same_log(run.log[:keep], full_log[:keep])

    mark = len(run.commands)
    run.crash(keep=keep)
    _no_nondeterminism(run)
    # Every step that was in flight when the crashed worker last finished
    # handling an event, and whose outcome is not in the kept log, is issued
    # again by the new worker, once (it may be cancelled in the same batch,
    # when the replay reaches what cancelled it).
    recorded = {r.seq for r in run.log}
    expected = trace.flying_after[crash_at - 1] - recorded if crash_at > 0 else set()
    issued = Counter(c.seq for c in run.commands[mark:] if isinstance(c, cmd.ExecuteStep))
    assert all(issued[seq] == 1 for seq in expected), (keep, dict(issued), expected)

    for index, action in enumerate(trace.actions[crash_at:], start=crash_at):
        if index == crash_at:
            # Its effect in the database survived the crash; only a step's
            # outcome whose record was lost has to come again.
            recorded = {r.seq for r in run.log}
            if action.kind != "step" or action.target in recorded:
                continue
        if action.kind == "step":
            assert action.target in run.steps_in_flight, (keep, action, run.steps_in_flight)
        _apply(sim, run, action)

    continuation = run.commands[mark:]
    _check_issues(continuation, {r.seq for r in full_log[:keep]})
    # The other commands are ones the uncrashed run gave too: the same
    # suspensions, the same child runs started and cancelled.
    for kind in (cmd.Suspend, cmd.StartChild, cmd.CancelChild):
        new = {c for c in continuation if isinstance(c, kind)}
        assert new <= {c for c in original.commands if isinstance(c, kind)}, (keep, new)
    assert same_log(run.log, full_log), keep
    assert outcome_key(run.outcome) == outcome_key(original.outcome), keep


def _bucket(n: int) -> str:
    return "1-5" if n <= 5 else "6-10" if n <= 10 else "11-20" if n <= 20 else "more than 20"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=programs, data=st.data())
def test_every_crash_point_replays_to_the_same_log_and_outcome(tree: list[Any], data: st.DataObject) -> None:
    trace = drive(data, tree)
    assert trace.run is not None
    for kind in sorted(_shape(tree)):
        event(f"shape: {kind}")
    event(f"crash points: {_bucket(len(trace.run.log) + 1)}")
    event(f"outcome: {trace.run.status}")
    if trace.run.claims > 1:
        event("resumed after a suspension")
    for keep in range(len(trace.run.log) + 1):
        crash_and_continue(trace, keep)
