"""The Engine's Python API: starting runs, handles, listing, bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from decimal import Decimal

import pytest

from werkfluss import (
    DatabaseUnavailable,
    Engine,
    InvalidArgument,
    NotAWorkflowError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    SchemaNotReady,
    SerializationError,
    step,
    workflow,
)

from ..helpers import sql_value, wait_until


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    amount: Decimal
    placed: dt.datetime
    tags: tuple[str, ...]


@step
async def total(order: Order) -> Decimal:
    return order.amount * 2


@workflow(name="tests.engine.checkout")
async def checkout(order: Order, *, currency: str = "EUR") -> dict:
    amount = await total(order)
    return {"order": order, "total": amount, "currency": currency}


@workflow(name="tests.engine.boom")
async def boom() -> None:
    raise ValueError("the workflow broke")


async def plain_function() -> None:
    """Not decorated."""


async def test_typed_arguments_and_results_round_trip(engine: Engine) -> None:
    order = Order(uuid.uuid4(), Decimal("9.99"), dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC), ("a", "b"))
    handle = await engine.start(checkout, order, currency="CHF")
    async with engine.worker(workflows=[checkout]):
        result = await handle.result(timeout=10)
    assert result == {"order": order, "total": Decimal("19.98"), "currency": "CHF"}
    (record,) = await handle.steps()
    assert record.input == {"args": [order], "kwargs": {}}


async def test_start_by_name_and_by_object_are_the_same(engine: Engine) -> None:
    by_name = await engine.start("tests.engine.boom")
    by_object = await engine.start(boom)
    assert (await by_name.info()).workflow == (await by_object.info()).workflow == "tests.engine.boom"


async def test_run_id_makes_start_idempotent(engine: Engine) -> None:
    first = await engine.start(boom, run_id="boom:1")
    again = await engine.start(boom, run_id="boom:1")
    assert first == again
    assert first.run_id == "boom:1"
    assert len(await engine.runs()) == 1


async def test_an_undecorated_function_is_refused_and_nothing_is_stored(engine: Engine, dsn: str) -> None:
    with pytest.raises(NotAWorkflowError, match="decorate it with @workflow"):
        await engine.start(plain_function)  # type: ignore[arg-type]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


async def test_unserializable_arguments_are_refused_and_nothing_is_stored(engine: Engine, dsn: str) -> None:
    with pytest.raises(SerializationError, match=r"arguments of tests.engine.boom.*object.*at \[0\]"):
        await engine.start(boom, object())
    with pytest.raises(SerializationError, match=r"keyword arguments.*\['when'\]"):
        await engine.start(boom, when={1, object()})
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


@pytest.mark.parametrize("bad", ["", 42])
async def test_a_bad_run_id_is_refused(engine: Engine, bad: object) -> None:
    with pytest.raises(InvalidArgument, match="run_id"):
        await engine.start(boom, run_id=bad)  # type: ignore[arg-type]


async def test_a_failed_run_raises_run_failed_with_the_recorded_error(engine: Engine) -> None:
    handle = await engine.start(boom)
    async with engine.worker(workflows=[boom]):
        with pytest.raises(RunFailed) as caught:
            await handle.result(timeout=10)
    failure = caught.value
    assert failure.error_type == "ValueError"
    assert failure.message == "the workflow broke"
    assert 'raise ValueError("the workflow broke")' in (failure.traceback or "")
    assert str(failure) == f"run {handle.run_id} failed: ValueError: the workflow broke"
    assert await handle.status() == "failed"


async def test_result_times_out_with_the_builtin_timeout_error(engine: Engine) -> None:
    handle = await engine.start(boom)  # no worker serves it
    with pytest.raises(TimeoutError, match="did not finish within 0.2s"):
        await handle.result(timeout=0.2)


async def test_a_workflow_nobody_serves_waits_visibly_pending(engine: Engine) -> None:
    handle = await engine.start("tests.engine.nobody_serves_this", 1)
    async with engine.worker(workflows=[boom]) as worker:
        # The worker has claimed (and answered) since it started; give it a
        # round trip of its own to prove it skips the unknown workflow.
        other = await engine.start(boom)
        with pytest.raises(RunFailed):
            await other.result(timeout=10)
        assert worker.workflow_names == ["tests.engine.boom"]
    assert await handle.status() == "pending"
    (listed,) = await engine.runs(workflow="tests.engine.nobody_serves_this")
    assert listed.status == "pending"
    assert listed.args == [1]


async def test_runs_lists_newest_first_with_filters(engine: Engine) -> None:
    a = await engine.start(boom)
    b = await engine.start("tests.engine.other")
    assert [r.run_id for r in await engine.runs()] == [b.run_id, a.run_id]
    assert [r.run_id for r in await engine.runs(workflow=boom)] == [a.run_id]
    assert [r.run_id for r in await engine.runs(status="pending", limit=1)] == [b.run_id]
    assert await engine.runs(status="completed") == []
    with pytest.raises(InvalidArgument, match="unknown status 'done'"):
        await engine.runs(status="done")


async def test_unknown_run_ids_raise_run_not_found(engine: Engine) -> None:
    handle = engine.handle("no-such-run")
    with pytest.raises(RunNotFound, match="no run with id 'no-such-run'"):
        await handle.status()
    with pytest.raises(RunNotFound):
        await handle.steps()
    with pytest.raises(RunNotFound):
        await engine.cancel("no-such-run")


async def test_cancel_a_pending_run(engine: Engine) -> None:
    handle = await engine.start(boom)
    assert await handle.cancel() is True
    assert await handle.status() == "cancelled"
    with pytest.raises(RunCancelled, match=f"run {handle.run_id} was cancelled"):
        await handle.result(timeout=5)
    assert await engine.cancel(handle.run_id) is False


async def test_result_wakes_on_notification_not_on_the_poll(dsn: str) -> None:
    async with Engine(dsn, result_poll_interval=60) as engine:
        handle = await engine.start(boom)
        async with engine.worker(workflows=[boom]):
            with pytest.raises(RunFailed):
                await handle.result(timeout=10)  # would hang for 60 s without NOTIFY


async def test_an_unreachable_database_names_host_and_database_not_the_password() -> None:
    engine = Engine("postgresql://alice:s3cret-pw@127.0.0.1:1/inventory", pool_size=1)
    with pytest.raises(DatabaseUnavailable) as caught:
        await engine.open()
    message = str(caught.value)
    assert "host=127.0.0.1" in message
    assert "port=1" in message
    assert "database=inventory" in message
    assert "s3cret-pw" not in message
    assert "WERKFLUSS_DATABASE_URL" in message


async def test_a_database_without_the_schema_says_to_migrate(fresh_dsn: str) -> None:
    async with Engine(fresh_dsn) as engine:
        with pytest.raises(SchemaNotReady, match="python -m werkfluss migrate"):
            await engine.start(boom)
        with pytest.raises(SchemaNotReady, match="missing"):
            async with engine.worker(workflows=[boom]):
                pass


async def test_steps_lists_one_record_per_call_with_times(engine: Engine) -> None:
    order = Order(uuid.uuid4(), Decimal(1), dt.datetime(2026, 1, 1), ())
    handle = await engine.start(checkout, order)
    async with engine.worker(workflows=[checkout]):
        await handle.result(timeout=10)
    (record,) = await handle.steps()
    assert (record.seq, record.name, record.status, record.attempts) == (1, total.name, "completed", 1)
    assert record.output == Decimal(2)
    assert record.error is None
    assert record.started_at is not None
    assert record.started_at <= record.finished_at


async def test_engine_is_reusable_across_open_and_close(dsn: str) -> None:
    engine = Engine(dsn)
    await engine.open()
    await engine.open()  # idempotent
    handle = await engine.start(boom)
    await engine.close()
    await engine.open()
    await wait_until(lambda: handle.status(), message="status readable after reopen")
    await engine.close()
