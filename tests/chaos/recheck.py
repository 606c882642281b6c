"""Check a past scenario again, from the ``collected.json`` it left in its pytest
tmp dir (with the worker logs beside it):

    python -m tests.chaos.recheck /tmp/pytest-of-$USER/pytest-N/test_chaos_stop_0/collected.json

prints the closing note, as the invariants see it now.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from . import plan
from .harness import Fault, Settings, StopRecord, lock_faults
from .invariants import check_all
from .report import render
from .scenario import Collected, Pickup


def load(path: Path) -> Collected:
    raw = json.loads(path.read_text())
    settings = Settings(**(raw["settings"] | {"faults": frozenset(raw["settings"]["faults"]),
                                               "skews": tuple(raw["settings"]["skews"])}))
    workload = plan.make_workload(settings.runs, settings.spread, random.Random(settings.seed))
    data = Collected(settings, workload, raw.get("database", "?"), path.parent)
    data.t0, data.ended, data.offsets = raw["t0"], raw["ended"], tuple(raw["offsets"])  # type: ignore[assignment]
    data.began = raw.get("began", data.t0)
    data.faults = [Fault(**f) for f in raw["faults"]]
    data.stops = [StopRecord(**(s | {"taken_over": {k: tuple(v) for k, v in s["taken_over"].items()}}))
                  for s in raw["stops"]]
    if not any(f.kind == "locks" for f in data.faults):  # collected before they were recorded
        data.faults += lock_faults(data.stops)
    data.workers, data.cancels, data.sender, data.notes = (raw["workers"], raw["cancels"], raw["sender"],
                                                           raw["notes"])
    data.runs, data.events = raw["runs"], raw["events"]
    data.hooks, data.payloads = raw["hooks"], raw["payloads"]
    data.effects = {(key.rsplit(" ", 1)[0], int(key.rsplit(" ", 1)[1])): rows
                    for key, rows in raw["effects"].items()}
    data.pickup = Pickup(calm=raw["calm"], drained=raw.get("drained"), gave_up=raw.get("gave_up"),
                         worst_idle=raw["pickup"]["worst_idle"], worst=raw["pickup"].get("worst", {}),
                         unfinished=[tuple(row) for row in raw["pickup"]["unfinished"]])
    data.cpu = {k: tuple(v) if v else None for k, v in raw.get("cpu", {}).items()}  # type: ignore[misc]
    return data


def main() -> None:
    path = Path(sys.argv[1])
    data = load(path)
    checks = check_all(data)
    from .test_chaos import violations

    print(render(path.parent.name, data, checks))
    broken = violations(checks)
    print(f"{len(broken)} violations")
    for line in broken[:30]:
        print("  " + line)


if __name__ == "__main__":
    main()
