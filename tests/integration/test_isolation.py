"""One run's bad data never touches another run, and never strands its own.

Each test puts a poisoned run next to healthy ones — in the same write batch
or the same claim — and checks that the poisoned run fails with a clear
recorded error while the healthy ones complete with no step body run twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

import pytest

from werkfluss import Engine, RunFailed, hook, step, workflow
from werkfluss.errors import RecordRefused
from werkfluss.records import LogRecord
from werkfluss.store.recorder import Recorder
from werkfluss.store.writes import AppendEvent, Lease
from werkfluss.worker import executor

from ..helpers import sql, sql_value, wait_until

BODIES: Counter[str] = Counter()


@step(name="tests.isolation.work")
async def work(tag: str) -> dict[str, str]:
    BODIES[tag] += 1
    return {"tag": tag}


@workflow(name="tests.isolation.two_steps")
async def two_steps(tag: str) -> list[Any]:
    return [await work(f"{tag}-1"), await work(f"{tag}-2")]


@workflow(name="tests.isolation.poisoned_result")
async def poisoned_result(tag: str) -> str:
    await work(f"{tag}-1")
    return "POISON"


@workflow(name="tests.isolation.takes")
async def takes(value: Any) -> str:
    await work(f"takes-{type(value).__name__}")
    return "loaded"


@workflow(name="tests.isolation.waits")
async def waits(token: str) -> Any:
    payload = await hook(token=token).wait()
    return {"got": payload}


@pytest.fixture(autouse=True)
def _clean() -> None:
    BODIES.clear()


async def _claimed(engine: Engine, run_ids: list[str], dsn: str) -> list[Lease]:
    """Lease runs to a fake worker, as a claim would."""
    rows = sql(dsn, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'test',
                              available_at = 'infinity'
                        WHERE run_id = ANY(%s) RETURNING run_id, lease_id::text""", [run_ids])
    by_id = dict(rows)
    return [Lease(run_id, by_id[run_id]) for run_id in run_ids]


async def test_a_refused_record_fails_only_its_own_write_in_a_batch(engine: Engine, dsn: str) -> None:
    handles = [await engine.start(two_steps, f"r{i}") for i in range(3)]
    leases = await _claimed(engine, [h.run_id for h in handles], dsn)
    now = dt.datetime.now(dt.UTC)
    recorder = Recorder(engine.connector)
    recorder.start()
    try:
        writes = [
            AppendEvent(lease, LogRecord(seq=1, kind="step", name="tests.isolation.work", status="completed",
                                         input=given, output='"ok"', started_at=now, finished_at=now))
            # events.input is jsonb, which refuses a NUL character even in a key.
            for lease, given in zip(
                leases, ['{"args": []}', '{"bad\\u0000key": 1}', '{"args": []}'], strict=True)
        ]
        for write in writes:  # all queued before the writer runs: one batch
            recorder.submit(write)
        outcomes = await asyncio.gather(*(w.future for w in writes), return_exceptions=True)
    finally:
        await recorder.stop()
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], RecordRefused)
    assert "refused" in str(outcomes[1])
    assert recorder.isolations == 1
    landed = sql(dsn, "SELECT run_id, seq FROM werkfluss.events ORDER BY run_id")
    assert sorted(landed) == sorted([(handles[0].run_id, 1), (handles[2].run_id, 1)])


async def test_a_value_the_driver_refuses_fails_only_its_own_write(engine: Engine, dsn: str) -> None:
    # psycopg refuses a NUL in text before PostgreSQL sees it (no SQLSTATE):
    # the batch is still split, and only that write fails.
    handles = [await engine.start(two_steps, f"d{i}") for i in range(3)]
    leases = await _claimed(engine, [h.run_id for h in handles], dsn)
    now = dt.datetime.now(dt.UTC)
    recorder = Recorder(engine.connector)
    recorder.start()
    try:
        writes = [
            AppendEvent(lease, LogRecord(seq=1, kind="step", name=name, status="completed",
                                         output='"ok"', started_at=now, finished_at=now))
            for lease, name in zip(leases, ["fine", "nul\x00name", "fine"], strict=True)
        ]
        for write in writes:
            recorder.submit(write)
        outcomes = await asyncio.gather(*(w.future for w in writes), return_exceptions=True)
    finally:
        await recorder.stop()
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], RecordRefused)
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.events") == 2


async def test_a_poisoned_step_result_fails_its_run_and_spares_the_others(
    engine: Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A result that passes the serializer but that PostgreSQL refuses (a NUL in
    # a key, which jsonb cannot hold): the serializer refuses such values, so
    # a faulty one stands in for the case it would miss.
    real = executor.serializer.dumps

    def dumps(value: Any, *, what: str = "value") -> str:
        if value == "POISON":
            return '{"tag\\u0000": "poison"}'
        return real(value, what=what)

    monkeypatch.setattr(executor.serializer, "dumps", dumps)
    healthy = [await engine.start(two_steps, f"ok{i}") for i in range(6)]
    poisoned = await engine.start(poisoned_result, "poison")
    async with engine.worker(workflows=[two_steps, poisoned_result], concurrency=16):
        results = await asyncio.gather(*(h.result(timeout=20) for h in healthy))
        with pytest.raises(RunFailed) as failed:
            await poisoned.result(timeout=20)
    assert results == [[{"tag": f"ok{i}-1"}, {"tag": f"ok{i}-2"}] for i in range(6)]
    assert failed.value.error_type == "werkfluss.errors.RecordRefused"
    assert "refused" in failed.value.message
    assert await poisoned.status() == "failed"
    assert all(count == 1 for tag, count in BODIES.items() if tag.startswith("ok")), BODIES
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0


@pytest.mark.parametrize(
    ("label", "args"),
    [
        ("a tagged value of the wrong shape", '[{"__werkfluss__": "timedelta", "v": "x"}]'),
        ("a datetime tag holding garbage", '[{"__werkfluss__": "datetime", "v": "not a time"}]'),
        ("an unknown tag", '[{"__werkfluss__": "pickle", "v": "gASV"}]'),
        ("a class in a module nobody imported",
         '[{"__werkfluss__": "dataclass", "cls": "this:X", "v": {}}]'),
        ("an array 3,000 levels deep", "[" * 3000 + "]" * 3000),
    ],
)
async def test_arguments_a_worker_cannot_load_fail_that_run_only(
    engine: Engine, dsn: str, label: str, args: str
) -> None:
    bad = sql_value(dsn, "SELECT werkfluss.start_run('tests.isolation.takes', %s::jsonb)", [args])
    healthy = [await engine.start(takes, i) for i in range(3)]
    async with engine.worker(workflows=[takes], concurrency=8):
        assert await asyncio.gather(*(h.result(timeout=20) for h in healthy)) == ["loaded"] * 3
        with pytest.raises(RunFailed) as failed:
            await engine.handle(bad).result(timeout=20)
    assert failed.value.error_type == "werkfluss.errors.SerializationError", label
    assert "cannot load the arguments" in failed.value.message
    assert BODIES["takes-int"] == 3
    # The inspection commands show such a run instead of crashing.
    listed = {r.run_id: r for r in await engine.runs()}
    assert listed[bad].status == "failed"
    assert (await engine.handle(bad).info()).error is not None


@pytest.mark.parametrize(
    "payload",
    [
        '{"__werkfluss__": "datetime", "v": 12}',
        '{"__werkfluss__": "set", "v": [{"a": 1}]}',
        "[" * 3000 + "]" * 3000,
    ],
)
async def test_a_payload_a_worker_cannot_load_fails_that_run_only(
    engine: Engine, dsn: str, payload: str
) -> None:
    bad = await engine.start(waits, "iso:bad")
    good = [await engine.start(waits, f"iso:good-{i}") for i in range(3)]
    async with engine.worker(workflows=[waits], concurrency=8):
        await wait_until(lambda: _status_all(engine, [bad, *good], "waiting"), message="all waiting")
        assert sql_value(dsn, "SELECT werkfluss.send('iso:bad', %s::jsonb)", [payload]) is True
        for i in range(3):
            await engine.send(f"iso:good-{i}", {"n": i})
        assert await asyncio.gather(*(h.result(timeout=20) for h in good)) == [
            {"got": {"n": i}} for i in range(3)
        ]
        with pytest.raises(RunFailed) as failed:
            await bad.result(timeout=20)
    assert failed.value.error_type == "werkfluss.errors.SerializationError"
    assert "cannot load" in failed.value.message


async def _status_all(engine: Engine, handles: list[Any], status: str) -> bool:
    return all([await h.status() == status for h in handles])

