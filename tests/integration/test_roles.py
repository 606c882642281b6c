"""Least privilege: the werkfluss_client role may start, send, cancel and read
status through the SQL functions, and nothing else.

Every test logs in as a LOGIN role of its own (``helpers.login_role``),
granted ``werkfluss_client``, as an application would.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from werkfluss import DatabaseError, Engine, RunIdConflict, hook, workflow
from werkfluss.store.queries import load_migrations, load_queries

from ..conftest import create_database, drop_database
from ..helpers import TABLES, login_role, sql, sql_value, wait_until

CLIENT = "werkfluss_client"
PUBLIC_FUNCTIONS = {"start_run", "send", "cancel_run", "run_status"}
INTERNAL_CALLS = [
    "SELECT werkfluss._send('roles:t', 'null')",
    "SELECT werkfluss._wake('victim')",
    "SELECT werkfluss._cancel_tree(ARRAY['victim'])",
    "SELECT * FROM werkfluss._run_inputs('victim')",
]


@workflow(name="tests.roles.approve")
async def approve(user: str) -> dict[str, Any]:
    decision = await hook(token=f"roles:{user}:approval").wait()
    return {"user": user, "decision": decision}


@pytest.fixture
def client(dsn: str) -> Iterator[str]:
    """A DSN that logs in as a fresh role granted werkfluss_client."""
    with login_role(dsn, CLIENT) as client_dsn:
        yield client_dsn


def as_client(client_dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return sql(client_dsn, query, params)


def _victim(dsn: str) -> tuple[Any, ...]:
    """A run started by someone else, with arguments the client must not see."""
    sql(dsn, """SELECT werkfluss.start_run('tests.roles.approve', '["card 4242"]', 'victim')""")
    return _row(dsn, "victim")


def _row(dsn: str, run_id: str) -> tuple[Any, ...]:
    return tuple(sql(
        dsn,
        "SELECT id, workflow, status, args::text, kwargs::text, result::text, error::text, deadline"
        " FROM werkfluss.runs WHERE id = %s",
        [run_id],
    )[0])


def _counts(dsn: str) -> dict[str, int]:
    return {t: sql_value(dsn, f"SELECT count(*) FROM {t}") for t in TABLES}


# --- the role and the grants ------------------------------------------------------------


def test_migrate_creates_a_nologin_client_role(test_dsn: str) -> None:
    assert sql(test_dsn, "SELECT rolcanlogin, rolsuper, rolcreaterole, rolinherit FROM pg_roles"
                         " WHERE rolname = %s", [CLIENT]) == [(False, False, False, True)]


def test_the_client_may_execute_exactly_the_four_public_functions(test_dsn: str) -> None:
    executable = {
        r[0] for r in sql(
            test_dsn,
            """SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'werkfluss' AND has_function_privilege(%s, p.oid, 'EXECUTE')""",
            [CLIENT],
        )
    }
    assert executable == PUBLIC_FUNCTIONS
    assert sql_value(test_dsn, "SELECT has_schema_privilege(%s, 'werkfluss', 'USAGE')", [CLIENT])
    assert not sql_value(test_dsn, "SELECT has_schema_privilege(%s, 'werkfluss', 'CREATE')", [CLIENT])


def test_no_werkfluss_function_is_executable_by_public(test_dsn: str) -> None:
    # A NULL proacl means PostgreSQL's default: EXECUTE for PUBLIC. A migration
    # that adds a function must REVOKE EXECUTE ... FROM PUBLIC (and grant it
    # to werkfluss_client if it is part of the client's API).
    open_to_public = sql(
        test_dsn,
        """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'werkfluss'
              AND (p.proacl IS NULL
                   OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a
                               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))""",
    )
    assert open_to_public == []
    with login_role(test_dsn) as nobody:
        user = psycopg.conninfo.conninfo_to_dict(nobody)["user"]
        sql(test_dsn, pgsql.SQL("GRANT USAGE ON SCHEMA werkfluss TO {}").format(pgsql.Identifier(str(user))))
        for call in [
            "SELECT werkfluss.start_run('tests.roles.approve', '[]')",
            "SELECT werkfluss.send('roles:t')",
            "SELECT werkfluss.cancel_run('victim')",
            "SELECT * FROM werkfluss.run_status('victim')",
            *INTERNAL_CALLS,
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                sql(nobody, call)


def test_public_functions_run_as_their_owner_with_a_fixed_search_path(test_dsn: str) -> None:
    rows = sql(
        test_dsn,
        """SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'werkfluss' AND p.proname = ANY(%s)""",
        [sorted(PUBLIC_FUNCTIONS)],
    )
    assert {r[0] for r in rows} == PUBLIC_FUNCTIONS
    for name, definer, config in rows:
        assert definer, name
        assert config == ["search_path=pg_catalog, pg_temp"], name


# --- what the client can do -------------------------------------------------------------


async def test_the_client_starts_sends_and_reads_the_status_of_its_runs(
    engine: Engine, dsn: str, client: str
) -> None:
    started = """SELECT werkfluss.start_run('tests.roles.approve', '["ada"]', 'roles:ada')"""
    assert as_client(client, started) == [("roles:ada",)]
    assert as_client(client, "SELECT * FROM werkfluss.run_status('roles:ada')") == [("pending", None, None)]

    async with engine.worker(workflows=[approve]):
        async def waiting() -> bool:
            return await engine.handle("roles:ada").status() == "waiting"

        await wait_until(waiting, message="the run to wait on its hook")
        delivered = as_client(client, """SELECT werkfluss.send('roles:ada:approval', '{"ok": true}')""")
        assert delivered == [(True,)]

        async def finished() -> tuple[Any, ...] | None:
            await asyncio.sleep(0)
            (row,) = as_client(client, "SELECT status, result, error FROM werkfluss.run_status('roles:ada')")
            return row if row[0] in ("completed", "failed", "cancelled") else None

        status, result, error = await wait_until(finished, message="the run to finish")
    assert (status, error) == ("completed", None)
    assert result == {"user": "ada", "decision": {"ok": True}}
    # A single-use hook refuses a second payload: false, nothing stored.
    assert as_client(client, "SELECT werkfluss.send('roles:ada:approval', '2')") == [(False,)]


def test_the_client_cancels_a_run_and_sees_it_cancelled(dsn: str, client: str) -> None:
    as_client(client, """SELECT werkfluss.start_run('tests.roles.approve', '["bob"]', 'roles:bob')""")
    assert as_client(client, "SELECT werkfluss.cancel_run('roles:bob')") == [(True,)]
    assert as_client(client, "SELECT status FROM werkfluss.run_status('roles:bob')") == [("cancelled",)]
    assert as_client(client, "SELECT werkfluss.cancel_run('roles:bob')") == [(False,)]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0


def test_the_client_gets_the_same_input_errors(dsn: str, client: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="reserved for child runs"):
        as_client(client, "SELECT werkfluss.start_run('tests.roles.approve', '[]', 'victim::1')")
    with pytest.raises(psycopg.errors.NoDataFound, match="no run with id nope"):
        as_client(client, "SELECT * FROM werkfluss.run_status('nope')")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


async def test_an_engine_logged_in_as_the_client_can_start_and_cancel(dsn: str, client: str) -> None:
    async with Engine(client, pool_size=1) as engine:
        handle = await engine.start(approve, "eve", run_id="roles:eve")
        assert await engine.cancel(handle.run_id) is True
        # Reading the tables is for workers and operators.
        with pytest.raises(DatabaseError, match="permission denied.*lacks a grant"):
            await handle.status()
    assert _row(dsn, "roles:eve")[2] == "cancelled"


# --- what the client cannot do ----------------------------------------------------------


def test_the_client_cannot_read_the_args_of_other_runs(dsn: str, client: str) -> None:
    _victim(dsn)
    for query in [
        "SELECT args FROM werkfluss.runs WHERE id = 'victim'",
        "SELECT input FROM werkfluss.events",
        "SELECT payload FROM werkfluss.hook_payloads",
        "SELECT token FROM werkfluss.hooks",
        "SELECT * FROM werkfluss.queue",
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_client(client, query)
    # run_status says how a run is doing, never what it was started with.
    (row,) = as_client(client, "SELECT * FROM werkfluss.run_status('victim')")
    assert row == ("pending", None, None)
    assert "card 4242" not in repr(row)


def test_the_client_cannot_write_any_table(dsn: str, client: str) -> None:
    before = _victim(dsn)
    counts = _counts(dsn)
    tables = [r[0] for r in sql(dsn, "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                                     " WHERE schemaname = 'werkfluss' ORDER BY 1")]
    assert len(tables) >= 6
    for table in tables:
        for statement in [
            f"SELECT 1 FROM {table} LIMIT 1",
            f"INSERT INTO {table} DEFAULT VALUES",
            f"UPDATE {table} SET {_first_column(dsn, table)} = {_first_column(dsn, table)}",
            f"DELETE FROM {table}",
            f"TRUNCATE {table}",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                as_client(client, statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_client(client, "SELECT nextval('werkfluss.hook_payloads_id_seq')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_client(client, "CREATE TABLE werkfluss.mine (x int)")
    assert _row(dsn, "victim") == before
    assert _counts(dsn) == counts


def _first_column(dsn: str, table: str) -> str:
    schema, name = table.split(".")
    return str(sql_value(
        dsn,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " ORDER BY ordinal_position LIMIT 1",
        [schema, name],
    ))


@pytest.mark.parametrize("call", INTERNAL_CALLS)
def test_the_client_cannot_call_the_internal_functions(dsn: str, client: str, call: str) -> None:
    before = _victim(dsn)
    counts = _counts(dsn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
        as_client(client, call)
    assert _row(dsn, "victim") == before
    assert _counts(dsn) == counts


async def test_the_client_cannot_forge_a_run_at_someone_elses_key(
    engine: Engine, dsn: str, client: str
) -> None:
    handle = await engine.start(approve, "carol", run_id="orders:42")
    async with engine.worker(workflows=[approve]):
        async def waiting() -> bool:
            return await handle.status() == "waiting"

        await wait_until(waiting, message="the run to wait on its hook")
        await engine.send("roles:carol:approval", {"ok": True})
        assert await handle.result(timeout=10) == {"user": "carol", "decision": {"ok": True}}
    before = _row(dsn, "orders:42")
    counts = _counts(dsn)

    # Starting at the same key returns the existing run, unchanged.
    assert as_client(
        client, """SELECT werkfluss.start_run('tests.roles.approve', '["mallory"]', 'orders:42')"""
    ) == [("orders:42",)]
    # Another workflow at that key is refused; so is the child namespace under it.
    with pytest.raises(psycopg.errors.UniqueViolation, match="already belongs to workflow"):
        as_client(client, """SELECT werkfluss.start_run('tests.roles.refund', '["mallory"]', 'orders:42')""")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="reserved for child runs"):
        as_client(client, """SELECT werkfluss.start_run('tests.roles.approve', '[]', 'orders:42::1')""")
    # No way to set a status or a result, nor to plant a finished run at a key.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_client(client, """UPDATE werkfluss.runs SET result = '"forged"' WHERE id = 'orders:42'""")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_client(client, """INSERT INTO werkfluss.runs (id, workflow, status, result)
                             VALUES ('orders:43', 'tests.roles.approve', 'completed', '"forged"')""")
    # The hook's run has ended: a late payload is refused and stores nothing.
    assert as_client(client, "SELECT werkfluss.send('roles:carol:approval', '\"forged\"')") == [(False,)]

    assert _row(dsn, "orders:42") == before
    assert _counts(dsn) == counts
    assert await handle.result(timeout=1) == {"user": "carol", "decision": {"ok": True}}
    with pytest.raises(RunIdConflict):
        await engine.start("tests.roles.refund", run_id="orders:42")


def test_the_client_cannot_redirect_the_functions_with_its_own_objects(dsn: str, client: str) -> None:
    # As on PostgreSQL 14 and older, where everyone may create objects in public.
    user = psycopg.conninfo.conninfo_to_dict(client)["user"]
    sql(dsn, pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(pgsql.Identifier(str(user))))
    with psycopg.connect(client, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.length(text) RETURNS integer LANGUAGE sql AS 'SELECT 1'")
        conn.execute("CREATE FUNCTION public.strpos(text, text) RETURNS integer"
                     " LANGUAGE sql AS 'SELECT 0'")
        conn.execute("CREATE TEMP TABLE runs (id text, workflow text)")
        conn.execute("SET search_path = public, pg_temp, pg_catalog")
        assert conn.execute("SELECT length('abc')").fetchone() == (1,)  # shadowed for the caller...
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="reserved for child runs"):
            conn.execute("SELECT werkfluss.start_run('tests.roles.approve', '[]', 'a::b')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="256 characters long"):
            conn.execute("SELECT werkfluss.start_run('tests.roles.approve', '[]', repeat('r', 256))")
        conn.execute("SELECT werkfluss.start_run('tests.roles.approve', '[]', 'roles:real')")
        assert conn.execute("SELECT count(*) FROM pg_temp.runs").fetchone() == (0,)
    assert _row(dsn, "roles:real")[:3] == ("roles:real", "tests.roles.approve", "pending")


# --- migrating ----------------------------------------------------------------------------


@pytest.fixture
def owned_database(pg_server: str) -> Iterator[tuple[str, str]]:
    """A fresh database owned by a plain role (no superuser, no CREATEROLE).

    Yields (the database as that owner, the database as the server's superuser).
    """
    with login_role(pg_server, prefix="werkfluss_test_owner") as owner_server:
        owner = psycopg.conninfo.conninfo_to_dict(owner_server)["user"]
        admin_dsn = create_database(pg_server, prefix="werkfluss_owned")
        dbname = psycopg.conninfo.conninfo_to_dict(admin_dsn)["dbname"]
        sql(pg_server, pgsql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            pgsql.Identifier(str(dbname)), pgsql.Identifier(str(owner))))
        params = psycopg.conninfo.conninfo_to_dict(owner_server)
        params["dbname"] = dbname
        try:
            yield psycopg.conninfo.make_conninfo(**params), admin_dsn
        finally:
            drop_database(pg_server, admin_dsn)


async def test_a_plain_owner_role_migrates_and_its_functions_serve_the_client(
    owned_database: tuple[str, str],
) -> None:
    owner_dsn, admin_dsn = owned_database
    async with Engine(owner_dsn, pool_size=1) as engine:
        assert len(await engine.migrate()) == len(load_migrations())
    owner = psycopg.conninfo.conninfo_to_dict(owner_dsn)["user"]
    start_run = ("'werkfluss.start_run(text,jsonb,text,jsonb,interval,text,text,integer,timestamptz,"
                 "interval,interval,text)'::regprocedure")
    query = f"SELECT proowner::regrole::text FROM pg_proc WHERE oid = {start_run}"
    assert sql_value(owner_dsn, query) == owner
    with login_role(admin_dsn, CLIENT) as client:
        assert as_client(client, "SELECT werkfluss.start_run('tests.roles.approve', '[]', 'owned:1')") == [
            ("owned:1",)
        ]
        assert as_client(client, "SELECT status FROM werkfluss.run_status('owned:1')") == [("pending",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_client(client, "SELECT args FROM werkfluss.runs")


async def test_a_worker_role_granted_the_tables_keeps_working_after_the_upgrade(fresh_dsn: str) -> None:
    # A database at 0004 with the worker grants the docs gave for it.
    queries = load_queries()
    before = [m for m in load_migrations() if m.version <= 4]
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(queries["migrations_bootstrap"])
        for m in before:
            conn.execute(m.sql)
            conn.execute(queries["migrations_record"], {"version": m.version, "name": m.name})
    with login_role(fresh_dsn, prefix="werkfluss_test_worker") as worker:
        role = psycopg.conninfo.conninfo_to_dict(worker)["user"]
        ident = pgsql.Identifier(str(role))
        for grant in [
            "GRANT USAGE ON SCHEMA werkfluss TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON werkfluss.runs, werkfluss.events, werkfluss.queue,"
            " werkfluss.hooks, werkfluss.hook_payloads TO {}",
            "GRANT USAGE ON SEQUENCE werkfluss.hook_payloads_id_seq TO {}",
            "GRANT SELECT ON werkfluss.migrations TO {}",
        ]:
            sql(fresh_dsn, pgsql.SQL(grant).format(ident))
        async with Engine(fresh_dsn, pool_size=1) as engine:
            assert await engine.migrate() == [
                f"{m.version:04d}_{m.name}" for m in load_migrations() if m.version > 4
            ]
        for call in [
            "SELECT werkfluss.start_run('tests.roles.approve', '[]', 'w:1')",
            "SELECT werkfluss._send('w:token', 'null')",
            "SELECT * FROM werkfluss._run_inputs('w:1')",
            "SELECT werkfluss._cancel_tree(ARRAY['w:1'])",
        ]:
            sql(worker, call)
    assert sql_value(fresh_dsn, "SELECT status FROM werkfluss.runs WHERE id = 'w:1'") == "cancelled"


def _role_block(role: str) -> str:
    """The migration's role-creating block, for a role of the test's own."""
    text = next(m.sql for m in load_migrations() if m.version == 5)
    block = re.search(r"-- begin: create werkfluss_client\n(.*?)-- end: create werkfluss_client",
                      text, re.S)
    assert block is not None
    return block.group(1).replace("werkfluss_client", role)


def test_creating_the_role_tolerates_a_concurrent_creation(fresh_dsn: str) -> None:
    role = f"werkfluss_test_race_{secrets.token_hex(4)}"
    block = _role_block(role)
    other = create_database(fresh_dsn, prefix="werkfluss_race")
    errors: list[BaseException] = []
    try:
        with psycopg.connect(fresh_dsn) as first, psycopg.connect(other) as second:
            first.execute(block)  # created, not yet committed
            second_pid = second.info.backend_pid

            def run_second() -> None:
                try:
                    second.execute(block)  # waits for the first transaction
                    second.commit()
                except BaseException as err:  # pragma: no cover - reported below
                    errors.append(err)

            thread = threading.Thread(target=run_second)
            thread.start()
            asyncio.run(wait_until(
                lambda: _blocked(fresh_dsn, second_pid), message="the second creation to wait"
            ))
            first.commit()
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert errors == []
        assert sql_value(fresh_dsn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", [role]) == 1
        sql(fresh_dsn, block)  # and once more, now that it exists
    finally:
        drop_database(fresh_dsn, other)
        sql(fresh_dsn, pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(role)))


async def _blocked(dsn: str, pid: int) -> bool:
    return bool(sql_value(dsn, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid]))


def test_without_createrole_migrate_skips_the_role_with_a_notice(fresh_dsn: str) -> None:
    role = f"werkfluss_test_absent_{secrets.token_hex(4)}"
    notices: list[str] = []
    with login_role(fresh_dsn) as plain, psycopg.connect(plain, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(f"{diag.message_primary} {diag.message_hint}"))
        conn.execute(_role_block(role))
    assert sql_value(fresh_dsn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", [role]) == 0
    assert len(notices) == 1
    assert "lacks CREATEROLE" in notices[0]
    assert "docs/operations.md" in notices[0]


def test_the_client_dsn_logs_in_as_its_own_role(dsn: str, client: str) -> None:
    # The fixture itself: a role of its own, a member of werkfluss_client.
    user = psycopg.conninfo.conninfo_to_dict(client)["user"]
    assert sql_value(client, "SELECT current_user") == user
    assert sql_value(dsn, "SELECT pg_has_role(%s, %s, 'MEMBER')", [user, CLIENT])
