"""What the chaos workload consists of, and what each run must end with.

Pure functions of a run's inputs, used by the workflows in ``app.py`` (to
compute the values their steps return) and by the test (to compute what each
run must end with). Nothing here touches the engine or the database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

SHAPES = ("chain", "fanout", "flaky", "sleeper", "approval", "parent", "doomed")

# Share of each shape in the workload (the rest of the runs are chains).
MIX = {"fanout": 0.03, "flaky": 0.16, "sleeper": 0.12, "approval": 0.14, "parent": 0.09, "doomed": 0.06}

CHAIN_LENGTH = 10
FAN_WIDTH = 50
FLAKY_STEPS = 3
FLAKY_RETRIES = 3  # @step(retries=...) of the flaky steps
HOPELESS_RETRIES = 1
KIDS = 3
APPROVAL_TIMEOUT = 1.5  # seconds a "timeout" approval waits for a payload that never comes


def run_id(shape: str, n: int) -> str:
    return f"chaos-{shape}-{n}"


# -- chain: ten steps in a row, each feeding the next ---------------------------------------

def chain_next(n: int, i: int, acc: int) -> int:
    return (acc * 31 + n * 7 + i) % 1_000_003


def chain_value(n: int) -> int:
    acc = n
    for i in range(1, CHAIN_LENGTH + 1):
        acc = chain_next(n, i, acc)
    return acc


# -- fanout: fifty steps gathered at once ---------------------------------------------------

def fan_value(n: int, i: int) -> int:
    return n * 1000 + i


def fanout_value(n: int) -> int:
    return sum(fan_value(n, i) for i in range(FAN_WIDTH))


# -- flaky: steps that fail on their first attempts, and a step that never succeeds ----------

def flaky_failures(n: int, i: int) -> int:
    """How many attempts of flaky step ``i`` of run ``n`` fail before one succeeds."""
    return (n + i) % 3


def flaky_mode(n: int) -> str:
    """'clean': all steps succeed after retries; 'recovers': the hopeless step fails and the
    workflow catches it; 'fails': the hopeless step fails and the run fails with it."""
    return {1: "recovers", 3: "fails"}.get(n % 4, "clean")


def flaky_step_value(n: int, i: int) -> int:
    return n * 10 + i


def hopeless_message(n: int) -> str:
    return f"hopeless {n} gives up"


def flaky_value(n: int) -> dict[str, Any]:
    total = sum(flaky_step_value(n, i) for i in range(1, FLAKY_STEPS + 1))
    mode = flaky_mode(n)
    return {"total": total, "recovered": mode == "recovers"}


# -- sleeper: step, durable sleep, step, durable sleep, step --------------------------------

def sleeper_naps(n: int) -> tuple[float, float]:
    return (0.2 + (n % 5) * 0.3, 0.3 + (n % 3) * 0.4)


def sleeper_value(n: int) -> list[int]:
    return [n, n + 1, n + 2]


# -- approval: a hook with a chosen token, answered by the sender process -------------------

def approval_mode(n: int) -> str:
    """'early': the payload is sent before the run starts; 'late': some time after it started
    (before or after the hook exists); 'timeout': nothing is sent, the wait times out."""
    return {0: "timeout", 1: "early"}.get(n % 5, "late")


def approval_token(n: int) -> str:
    return f"chaos:{n}:approval"


def approval_payload(n: int) -> dict[str, Any]:
    return {"n": n, "approved": n % 2 == 0, "note": f"payload for run {n}"}


def approval_value(n: int) -> dict[str, Any]:
    if approval_mode(n) == "timeout":
        return {"payload": None, "timed_out": True, "after": n * 3}
    return {"payload": approval_payload(n), "timed_out": False, "after": n * 3}


# -- parent: child runs, one of which fails for every third parent ---------------------------

def kid_fails(n: int, j: int) -> bool:
    return j == KIDS - 1 and n % 3 == 0


def kid_value(n: int, j: int) -> int:
    return n * 100 + j


def kid_message(n: int, j: int) -> str:
    return f"kid {n}/{j} refuses"


def parent_value(n: int) -> dict[str, Any]:
    values = [kid_value(n, j) for j in range(KIDS) if not kid_fails(n, j)]
    return {"kids": values, "failed_kid": n % 3 == 0, "total": sum(values)}


# -- doomed: runs that would wait for an hour; the test cancels every one of them ------------

def doomed_waits_on_child(n: int) -> bool:
    return n % 2 == 1


def doomed_token(n: int) -> str:
    return f"chaos:{n}:never"


# -- the workload ---------------------------------------------------------------------------

@dataclass
class PlannedRun:
    shape: str
    n: int
    start_at: float  # seconds after the workload starts
    cancel_after: float | None = None  # doomed runs: seconds after their start
    send_after: float | None = None  # late approvals: seconds after their start
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return run_id(self.shape, self.n)


def make_workload(runs: int, spread: float, rng: random.Random) -> list[PlannedRun]:
    """``runs`` top-level runs of every shape, started at random over ``spread`` seconds."""
    counts = {shape: max(1, round(runs * share)) for shape, share in MIX.items()}
    counts["chain"] = max(1, runs - sum(counts.values()))
    planned: list[PlannedRun] = []
    for shape in SHAPES:
        for n in range(counts[shape]):
            run = PlannedRun(shape, n, rng.uniform(0, spread))
            if shape == "doomed":
                # Some are cancelled at once (pending or running their first step),
                # most while they sleep or wait.
                run.cancel_after = rng.choice([0.0, 0.1, 0.3]) if n % 4 == 0 else rng.uniform(0.5, 3.0)
            if shape == "approval" and approval_mode(n) == "late":
                run.send_after = rng.uniform(0.0, 3.0)
            planned.append(run)
    planned.sort(key=lambda r: r.start_at)
    return planned
