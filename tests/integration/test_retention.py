"""Workers prune finished runs on their retention setting, one at a time."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from werkfluss import Engine, hook, step, workflow
from werkfluss.errors import InvalidArgument
from werkfluss.worker.retention import Pruner

from ..helpers import sql, sql_value, wait_until

RELEASE: dict[str, asyncio.Event] = {}


@step(name="tests.retention.work")
async def work(tag: str) -> str:
    return tag


@step(name="tests.retention.blocked")
async def blocked(tag: str) -> str:
    await RELEASE[tag].wait()
    return tag


@workflow(name="tests.retention.done")
async def done(tag: str) -> str:
    return await work(tag)


@workflow(name="tests.retention.approved")
async def approved(token: str) -> object:
    decision = await hook(token=token).wait()
    await work(token)
    return decision


@workflow(name="tests.retention.holds")
async def holds(tag: str) -> str:
    return await blocked(tag)


def backdate(dsn: str, run_ids: list[str], age: str = "2 hours") -> None:
    sql(dsn, f"UPDATE werkfluss.runs SET finished_at = now() - interval '{age}' WHERE id = ANY(%s)",
        [run_ids])


def count(dsn: str, table: str, run_ids: list[str], column: str = "run_id") -> int:
    return int(sql_value(dsn, f"SELECT count(*) FROM werkfluss.{table} WHERE {column} = ANY(%s)", [run_ids]))


async def test_a_worker_prunes_old_finished_runs_with_their_log_hooks_and_payloads(
    engine: Engine, dsn: str
) -> None:
    RELEASE["held"] = asyncio.Event()
    old = [await engine.start(done, f"old-{i}") for i in range(3)]
    old_hooked = await engine.start(approved, "retention:old")
    recent = await engine.start(done, "recent")
    waiting = await engine.start(approved, "retention:waiting")
    running = await engine.start(holds, "held")
    async with engine.worker(workflows=[done, approved, holds], retention=None, shutdown_grace=0):
        await engine.send("retention:old", {"ok": True})
        await asyncio.gather(*(h.result(timeout=10) for h in [*old, old_hooked, recent]))
        await wait_until(lambda: _status_is(running, "running"), message="a held run")
        await wait_until(lambda: _status_is(waiting, "waiting"), message="a waiting run")
    gone = [h.run_id for h in [*old, old_hooked]]
    backdate(dsn, gone)
    assert count(dsn, "hooks", [old_hooked.run_id]) == 1
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads WHERE token = 'retention:old'") == 1

    # A worker that keeps runs for an hour, pruning every 20 ms, with batches of two.
    async with engine.worker(workflows=[done, approved, holds], retention="1h",
                             prune_interval="20ms") as worker:
        assert worker.pruner is not None
        worker.pruner.batch_size = 2
        await wait_until(lambda: _pruned(worker.pruner, 4), message="the old runs pruned")
        await wait_until(lambda: _status_is(running, "running"), message="the held run claimed again")
        RELEASE["held"].set()
        assert await running.result(timeout=10) == "held"

    assert count(dsn, "runs", gone, column="id") == 0
    assert count(dsn, "events", gone) == 0
    assert count(dsn, "hooks", gone) == 0
    assert count(dsn, "queue", gone) == 0
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.hook_payloads WHERE token = 'retention:old'") == 0
    kept = [recent.run_id, waiting.run_id, running.run_id]
    assert count(dsn, "runs", kept, column="id") == 3
    assert await waiting.status() == "waiting"
    assert count(dsn, "hooks", [waiting.run_id]) == 1
    assert [s.output for s in await recent.steps()] == ["recent"]


async def _status_is(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined, no-any-return]


async def _pruned(pruner: Pruner | None, runs: int) -> bool:
    return pruner is not None and pruner.deleted >= runs


async def test_only_one_pruner_at_a_time_the_turn_is_an_advisory_lock(engine: Engine, dsn: str) -> None:
    handles = [await engine.start(done, f"turn-{i}") for i in range(5)]
    async with engine.worker(workflows=[done], retention=None):
        await asyncio.gather(*(h.result(timeout=10) for h in handles))
    backdate(dsn, [h.run_id for h in handles])
    first = Pruner(engine.connector, retention=3600, interval=1, batch_size=2)
    second = Pruner(engine.connector, retention=3600, interval=1, batch_size=2)

    # Another pruner holds the turn (the lock prune_runs takes for its transaction).
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('werkfluss.prune', 0))")
        assert await first.run_once() is None
        assert await second.run_once() is None
        assert (first.skipped, second.skipped) == (1, 1)
        assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 5
        await holder.rollback()

    # Both at once: each batch is one pruner's, and every run is deleted once.
    results = await asyncio.gather(first.run_once(), second.run_once())
    assert sum(r or 0 for r in results) == first.deleted + second.deleted == 5
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


async def test_retention_off_keeps_everything(engine: Engine, dsn: str) -> None:
    handle = await engine.start(done, "kept")
    async with engine.worker(workflows=[done], retention="off") as worker:
        assert await handle.result(timeout=10) == "kept"
        assert worker.pruner is None
        backdate(dsn, [handle.run_id], "400 days")
        second = await engine.start(done, "after")
        assert await second.result(timeout=10) == "after"
    assert await handle.status() == "completed"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retention": "0s"}, "retention must be positive"),
        ({"retention": "two weeks"}, "retention 'two weeks' is not a duration"),
        ({"prune_interval": "1ms"}, "prune_interval must be from 10ms to 1 day"),
    ],
)
def test_bad_retention_settings_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Engine("postgresql://unused").worker(workflows=[done], **options)  # type: ignore[arg-type]
