"""The recorder's ordering rule: a run's writes commit in order, or not at all.

A write that was not committed (the worker lost the database, PostgreSQL
refused a value) bars every later write of the same run — otherwise a run
could finish with records missing from its log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from werkfluss.errors import DatabaseUnavailable, LeaseLost, RecordRefused
from werkfluss.records import LogRecord
from werkfluss.store.recorder import Recorder
from werkfluss.store.writes import AppendEvent, FinishRun, Lease

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeConnector:
    """Fails the first ``failures`` batches with ``error``; records what it commits."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.committed: list[tuple[str, Any]] = []
        self.gate = asyncio.Event()

    async def run_batch(self, statements: list[tuple[str, Any]]) -> list[list[dict[str, Any]]]:
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise self.error
        results: list[list[dict[str, Any]]] = []
        for name, params in statements:
            self.committed.append((name, params))
            if name == "append_events":
                results.append([{"run_id": r, "seq": s} for r, s in zip(params["run_ids"], params["seqs"],
                                                                        strict=True)])
            elif name == "finish_runs":
                results.append([{"run_ids": list(params["run_ids"])}])
            else:
                results.append([])
        return results


def _record(seq: int) -> LogRecord:
    return LogRecord(seq=seq, kind="step", name="s", status="completed", output="1", started_at=NOW,
                     finished_at=NOW)


async def test_a_write_after_a_dropped_one_of_the_same_run_is_not_committed() -> None:
    alive = {"ok": True}
    connector = FakeConnector(failures=1, error=DatabaseUnavailable("cut"))
    recorder = Recorder(connector, alive=lambda: alive["ok"])  # type: ignore[arg-type]
    recorder.start()
    run, other = Lease("r1", "l1"), Lease("r2", "l2")
    first = recorder.submit(AppendEvent(run, _record(1)))
    await asyncio.sleep(0)  # the writer takes the first batch (it waits at the gate)
    later = [recorder.submit(AppendEvent(run, _record(2))),
             recorder.submit(FinishRun(run, "completed", "1", None)),
             recorder.submit(AppendEvent(other, _record(1)))]
    alive["ok"] = False  # the worker's heartbeat gave up: the first batch is dropped
    connector.gate.set()
    with pytest.raises(LeaseLost):
        await first
    alive["ok"] = True  # the database is back before the next batch
    outcomes = await asyncio.gather(*later, return_exceptions=True)
    await recorder.stop()
    assert isinstance(outcomes[0], LeaseLost)
    assert isinstance(outcomes[1], LeaseLost)  # the run's outcome would have hidden the missing record
    assert outcomes[2] is None  # another run is not affected
    committed_runs = {r for name, params in connector.committed for r in params.get("run_ids", [])}
    assert committed_runs == {"r2"}


async def test_after_a_refused_value_only_a_new_outcome_of_the_run_commits() -> None:
    connector = FakeConnector(failures=0, error=RecordRefused("x"))
    connector.gate.set()
    recorder = Recorder(connector)  # type: ignore[arg-type]
    recorder.start()
    run = Lease("r1", "l1")
    # Simulate the refusal the way isolation records it.
    refused = recorder.submit(AppendEvent(run, _record(1)))
    recorder._broken[run.lease_id] = (RecordRefused("bad value"), recorder._last_order)
    queued_before = recorder.submit(AppendEvent(run, _record(2)))
    # (refused was submitted before the mark: it is written; what matters is what follows)
    failed_outcome = recorder.submit(FinishRun(run, "failed", None, '{"type": "RecordRefused"}'))
    outcomes = await asyncio.gather(refused, queued_before, failed_outcome, return_exceptions=True)
    await recorder.stop()
    assert isinstance(outcomes[1], RecordRefused)
    assert outcomes[2] is None
