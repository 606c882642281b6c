"""Schema migrations: idempotent, safe when many processes migrate at once."""

from __future__ import annotations

import asyncio

from werkfluss import Engine
from werkfluss.store.migrations import check_schema
from werkfluss.store.queries import load_migrations

from ..helpers import run_cli, sql, sql_value


async def test_migrate_creates_the_schema_then_does_nothing(fresh_dsn: str) -> None:
    expected = [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    async with Engine(fresh_dsn) as engine:
        assert await engine.migrate() == expected
        assert await engine.migrate() == []
        await check_schema(engine.connector)
    tables = {r[0] for r in sql(fresh_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'werkfluss'")}
    assert {"runs", "events", "queue", "migrations"} <= tables


async def test_concurrent_migrations_apply_each_migration_once(fresh_dsn: str) -> None:
    engines = [Engine(fresh_dsn, pool_size=1) for _ in range(6)]
    try:
        results = await asyncio.gather(*(e.migrate() for e in engines))
    finally:
        await asyncio.gather(*(e.close() for e in engines))
    applied = [names for names in results if names]
    assert len(applied) == 1
    assert len(applied[0]) == len(load_migrations())
    assert sql_value(fresh_dsn, "SELECT count(*) FROM werkfluss.migrations") == len(load_migrations())


def test_migrate_command_is_idempotent(fresh_dsn: str) -> None:
    first = run_cli("migrate", dsn=fresh_dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_initial")
    second = run_cli("migrate", dsn=fresh_dsn)
    assert second.returncode == 0
    assert second.stdout.strip() == "schema is up to date"


def test_everything_lives_in_the_werkfluss_schema(test_dsn: str) -> None:
    outside = sql(
        test_dsn,
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relname ILIKE '%werkfluss%' AND n.nspname <> 'werkfluss'""",
    )
    assert outside == []
    functions = {
        r[0] for r in sql(
            test_dsn,
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'werkfluss'",
        )
    }
    assert {"start_run", "cancel_run"} <= functions
