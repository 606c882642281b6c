"""werkfluss.start_run / werkfluss.cancel_run / werkfluss.run_status, called as any
other service would. (As the werkfluss_client role: test_roles.py; bad input:
test_bad_input.py.)"""

from __future__ import annotations

import psycopg
import pytest

from werkfluss import Engine, RunFailed, step, workflow

from ..helpers import sql, sql_value


@step
async def greet(name: str) -> str:
    return f"hello {name}"


@workflow(name="tests.sql.hello")
async def hello(name: str) -> str:
    return await greet(name)


@step
async def refuse(reason: str) -> None:
    raise ValueError(reason)


@workflow(name="tests.sql.refusing")
async def refusing(reason: str) -> None:
    await refuse(reason)


def test_start_run_returns_the_id_and_enqueues(dsn: str) -> None:
    run_id = sql_value(dsn, """SELECT werkfluss.start_run('tests.sql.hello', '["ada"]'::jsonb)""")
    assert isinstance(run_id, str)
    assert len(run_id) == 36
    assert sql(dsn, "SELECT workflow, status, args::text FROM werkfluss.runs WHERE id = %s", [run_id]) == [
        ("tests.sql.hello", "pending", '["ada"]')
    ]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE run_id = %s", [run_id]) == 1


def test_start_run_with_run_id_is_idempotent(dsn: str) -> None:
    query = """SELECT werkfluss.start_run('tests.sql.hello', %s::jsonb, 'hello:ada')"""
    assert sql_value(dsn, query, ['["ada"]']) == "hello:ada"
    assert sql_value(dsn, query, ['["someone else"]']) == "hello:ada"
    assert sql(dsn, "SELECT args::text FROM werkfluss.runs") == [('["ada"]',)]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 1


def test_start_run_refuses_a_run_id_of_another_workflow(dsn: str) -> None:
    sql(dsn, """SELECT werkfluss.start_run('tests.sql.hello', '[]', 'shared-id')""")
    with pytest.raises(psycopg.errors.UniqueViolation, match="already belongs to workflow tests.sql.hello"):
        sql(dsn, """SELECT werkfluss.start_run('tests.sql.other', '[]', 'shared-id')""")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("""SELECT werkfluss.start_run('tests.sql.hello', '{"a": 1}'::jsonb)""",
         "args must be a JSON array, got object"),
        ("""SELECT werkfluss.start_run('tests.sql.hello', '"ada"'::jsonb)""",
         "args must be a JSON array, got string"),
        ("""SELECT werkfluss.start_run('tests.sql.hello', NULL)""", "args must be a JSON array, got NULL"),
        ("""SELECT werkfluss.start_run('', '[]')""", "the workflow name is empty"),
        ("""SELECT werkfluss.start_run('tests.sql.hello', '[]', kwargs => '[1]')""",
         "kwargs must be a JSON object, got array"),
        ("""SELECT werkfluss.start_run('tests.sql.hello', '[]', timeout => '-1 hour')""",
         "timeout must be positive"),
    ],
)
def test_malformed_start_run_calls_fail_clearly_and_store_nothing(dsn: str, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message) as caught:
        sql(dsn, call)
    if "array" in message:
        assert "''[\"user-123\"]''::jsonb" not in str(caught.value)  # the hint is quoted once
        assert caught.value.diag.message_hint
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0


def test_a_start_in_a_rolled_back_transaction_leaves_nothing(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("""SELECT werkfluss.start_run('tests.sql.hello', '["ghost"]')""")
        conn.rollback()
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0


def test_start_run_notifies_only_on_commit(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN werkfluss_queue")
        with psycopg.connect(dsn) as conn:
            conn.execute("""SELECT werkfluss.start_run('tests.sql.hello', '["a"]')""")
            conn.execute("""SELECT werkfluss.start_run('tests.sql.hello', '["b"]')""")
            assert list(listener.notifies(timeout=0.2)) == []
            conn.commit()
        notes = list(listener.notifies(timeout=2, stop_after=1))
        # Two starts of one workflow in one transaction: one notification.
        assert [(n.channel, n.payload) for n in notes] == [("werkfluss_queue", "tests.sql.hello")]
        assert list(listener.notifies(timeout=0.2)) == []


def test_cancel_run_cancels_a_pending_run_once(dsn: str) -> None:
    run_id = sql_value(dsn, """SELECT werkfluss.start_run('tests.sql.hello', '["x"]')""")
    assert sql_value(dsn, "SELECT werkfluss.cancel_run(%s)", [run_id]) is True
    assert sql_value(dsn, "SELECT status FROM werkfluss.runs WHERE id = %s", [run_id]) == "cancelled"
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0
    assert sql_value(dsn, "SELECT werkfluss.cancel_run(%s)", [run_id]) is False


def test_cancel_run_of_an_unknown_id_is_an_error(dsn: str) -> None:
    with pytest.raises(psycopg.errors.NoDataFound, match="no run with id nope"):
        sql(dsn, "SELECT werkfluss.cancel_run('nope')")


async def test_a_run_started_from_sql_is_executed_by_a_worker(engine: Engine, dsn: str) -> None:
    async with engine.worker(workflows=[hello]):
        run_id = sql_value(dsn, """SELECT werkfluss.start_run('tests.sql.hello', '["sql"]')""")
        assert await engine.handle(run_id).result(timeout=10) == "hello sql"


async def test_a_run_started_from_sql_with_kwargs_and_timeout(engine: Engine, dsn: str) -> None:
    run_id = sql_value(
        dsn,
        """SELECT werkfluss.start_run('tests.sql.hello', '[]', kwargs => '{"name": "kw"}',
                                      timeout => '1 hour')""",
    )
    info = await engine.handle(run_id).info()
    assert info.kwargs == {"name": "kw"}
    assert info.deadline is not None
    assert 3590 < (info.deadline - info.created_at).total_seconds() <= 3600
    async with engine.worker(workflows=[hello]):
        assert await engine.handle(run_id).result(timeout=10) == "hello kw"


async def test_run_status_reports_the_status_then_the_result_or_the_error(engine: Engine, dsn: str) -> None:
    sql(dsn, """SELECT werkfluss.start_run('tests.sql.hello', '["status"]', 'status:ok')""")
    sql(dsn, """SELECT werkfluss.start_run('tests.sql.refusing', '["no way"]', 'status:failed')""")
    assert sql(dsn, "SELECT * FROM werkfluss.run_status('status:ok')") == [("pending", None, None)]
    async with engine.worker(workflows=[hello, refusing]):
        assert await engine.handle("status:ok").result(timeout=10) == "hello status"
        with pytest.raises(RunFailed):
            await engine.handle("status:failed").result(timeout=10)
    assert sql(dsn, "SELECT status, result, error FROM werkfluss.run_status('status:ok')") == [
        ("completed", "hello status", None)
    ]
    ((status, result, error),) = sql(dsn, "SELECT * FROM werkfluss.run_status('status:failed')")
    assert (status, result) == ("failed", None)
    assert (error["type"], error["message"]) == ("ValueError", "no way")


def test_run_status_of_an_unknown_id_is_an_error(dsn: str) -> None:
    with pytest.raises(psycopg.errors.NoDataFound, match="werkfluss.run_status: no run with id nope"):
        sql(dsn, "SELECT * FROM werkfluss.run_status('nope')")


def test_a_chosen_run_id_may_not_take_the_child_namespace(dsn: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="reserved for child runs") as caught:
        sql(dsn, "SELECT werkfluss.start_run('tests.sql.hello', '[]', 'P::2')")
    assert "order:42" in str(caught.value.diag.message_hint)
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0
