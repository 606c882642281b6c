"""The chaos suite: at least four worker processes serve 500+ mixed runs — ten-step
chains, fifty-way fan-outs, steps that fail and retry, durable sleeps, hook waits
answered by a sender process, child runs, cancels — while faults are injected:

``kill``       SIGKILL a random worker every 1-2 s and start a new one;
``restart``    restart the suite's own PostgreSQL (``-m immediate`` and ``fast``);
``terminate``  ``pg_terminate_backend`` every werkfluss connection, every 2-4 s;
``proxy``      the TCP proxy between workers and PostgreSQL goes silent past a lease
               (packets dropped, no RST), then resets every connection; sometimes
               only a short blip;
``stop``       SIGSTOP a worker that holds runs until others took them over, then SIGCONT;
``skew``       two more workers whose wall clocks are off by +120 s and -120 s (faketime).

Then, from the database and the side effects the step bodies wrote, it checks
the invariants in ``invariants.py`` and prints a closing note per scenario.

Default: each fault kind alone, then all of them together, each for a fault
window of ``WERKFLUSS_CHAOS_SECONDS`` (8). Environment:

``WERKFLUSS_CHAOS_FAULTS=kill,proxy``  one scenario with exactly these kinds
                                       (``all``: every kind; ``none``: no faults)
``WERKFLUSS_CHAOS_SECONDS``            fault window per scenario (default 8)
``WERKFLUSS_CHAOS_RUNS``               top-level runs (default max(500, 45 x seconds))
``WERKFLUSS_CHAOS_SEED``               replay a scenario's randomness (printed in its note)
``WERKFLUSS_CHAOS_WORKERS``, ``_CONCURRENCY``, ``_LEASE``, ``_POLL``, ``_SKEW``, ``_DRAIN``,
``_PICKUP_MARGIN``                     the knobs in ``harness.Settings``
``WERKFLUSS_CHAOS_QUIET``              stop waiting for runs to end after this many seconds
                                       without any change (default 6)

Every broken invariant fails its scenario: there is no list of expected
failures. (The engine bugs this suite found are fixed, and each has a
focused test of its own in ``tests/integration`` or ``tests/unit``.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import FAULT_KINDS, Settings, faketime_library
from .invariants import Check, check_all
from .pg import OwnedPostgres
from .report import render, summary
from .scenario import dump, run_scenario


def violations(checks: list[Check]) -> list[str]:
    """Every broken invariant, one line each."""
    return [f"{check.name}: {message}" for check in checks for message in check.violations]


def _kinds(spec: str) -> frozenset[str]:
    names = {name.strip() for name in spec.split(",") if name.strip()}
    if names == {"all"}:
        return frozenset(FAULT_KINDS)
    if names == {"none"}:
        return frozenset()
    unknown = names - set(FAULT_KINDS)
    if unknown:
        raise pytest.UsageError(f"WERKFLUSS_CHAOS_FAULTS: unknown fault kinds {sorted(unknown)}; "
                                f"choose from {', '.join(FAULT_KINDS)}, all, none")
    return frozenset(names)


def _scenarios() -> list[object]:
    chosen = os.environ.get("WERKFLUSS_CHAOS_FAULTS")
    specs = [chosen] if chosen else [*FAULT_KINDS, "all"]
    return [pytest.param(_kinds(spec), id=spec.replace(",", "+")) for spec in specs]


_DEFAULTS = Settings.from_env(frozenset())


@pytest.mark.chaos
@pytest.mark.timeout(_DEFAULTS.seconds + _DEFAULTS.drain_timeout + 240)
@pytest.mark.parametrize("faults", _scenarios())
async def test_chaos(faults: frozenset[str], owned_pg: OwnedPostgres, tmp_path: Path,
                     request: pytest.FixtureRequest, chaos_report: Callable[[str, str, Path], None]) -> None:
    if "skew" in faults and faketime_library() is None:
        pytest.skip("chaos: libfaketime is not installed (apt-get install faketime), needed for 'skew'")
    settings = Settings.from_env(faults)
    label = request.node.callspec.id
    data = await run_scenario(settings, owned_pg, tmp_path)
    dump(data, tmp_path / "collected.json")
    checks = check_all(data)
    text = render(label, data, checks)
    path = tmp_path / "chaos-report.txt"
    path.write_text(text)
    chaos_report(label, text, path)
    broken = summary(checks)
    assert not broken, (f"invariants broken under [{label}]: {broken}:\n  "
                        + "\n  ".join(violations(checks)[:20]) + f"\n\n{text}")
