"""The schema kept honest: the migrations produce exactly ``sql/schema.sql``.

``sql/schema.sql`` is the whole ``werkfluss`` schema as the migrations leave
it (tables, indexes, functions, privileges): what to read to know the schema,
without replaying six migrations in your head. The test builds one database
from the migrations and one from the snapshot and compares their catalogs.

After changing a migration or adding one, rewrite the snapshot with::

    WERKFLUSS_WRITE_SCHEMA=1 pytest tests/integration/test_schema.py
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from werkfluss import Engine

from ..conftest import create_database, drop_database

SNAPSHOT = Path(__file__).resolve().parents[2] / "sql" / "schema.sql"

# Everything PostgreSQL knows about the schema's objects, one line each.
CATALOG = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = 'werkfluss' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' '
       || coalesce(array_to_string(c.reloptions, ','), '') || ' acl='
       || coalesce(array_to_string(array(SELECT x::text FROM unnest(c.relacl) x ORDER BY 1), ','), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'werkfluss' AND c.relkind IN ('r', 'p', 'S', 'v')
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'werkfluss'
UNION ALL
SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'werkfluss'
UNION ALL
SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl='
       || coalesce(array_to_string(array(SELECT x::text FROM unnest(p.proacl) x ORDER BY 1), ','), '')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'werkfluss'
UNION ALL
SELECT 'schema acl='
       || coalesce(array_to_string(array(SELECT x::text FROM unnest(n.nspacl) x ORDER BY 1), ','), '')
  FROM pg_namespace n WHERE n.nspname = 'werkfluss'
"""


def describe(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        owner = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
        lines = [row[0] for row in conn.execute(CATALOG).fetchall()]
    # The owner's own entries depend on who ran it, not on the schema.
    return sorted(re.sub(rf"\b{re.escape(owner)}=", "OWNER=", line).replace(f"/{owner}", "/OWNER")
                  for line in lines)


def _dump(dsn: str) -> str:
    dump = subprocess.run(
        ["pg_dump", "--schema-only", "--schema=werkfluss", "--no-owner", dsn],
        check=True, capture_output=True, text=True,
    ).stdout
    body = [line for line in dump.splitlines()
            if not line.startswith(("--", "\\"))]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()
    return (
        "-- The werkfluss schema as the migrations in sql/migrations leave it (a snapshot:\n"
        "-- tests/integration/test_schema.py checks they agree; that file says how to rewrite it).\n"
        "-- Install with `werkfluss migrate`, never from this file: migrate records what it applied.\n\n"
        + text + "\n"
    )


@pytest.fixture
def migrated(pg_server: str) -> str:
    dsn = create_database(pg_server, prefix="werkfluss_schema_a")

    async def migrate() -> None:
        async with Engine(dsn) as engine:
            await engine.migrate()

    import asyncio

    asyncio.run(migrate())
    yield dsn  # type: ignore[misc]
    drop_database(pg_server, dsn)


def test_the_migrations_produce_exactly_the_schema_snapshot(migrated: str, pg_server: str) -> None:
    if os.environ.get("WERKFLUSS_WRITE_SCHEMA"):
        SNAPSHOT.write_text(_dump(migrated))
    from_snapshot = create_database(pg_server, prefix="werkfluss_schema_b")
    try:
        with psycopg.connect(from_snapshot, autocommit=True) as conn:
            conn.execute(SNAPSHOT.read_text())
        expected, actual = describe(from_snapshot), describe(migrated)
    finally:
        drop_database(pg_server, from_snapshot)
    assert len(actual) > 50  # the catalog query really saw the schema
    missing = [line for line in actual if line not in expected]
    extra = [line for line in expected if line not in actual]
    assert (missing, extra) == ([], []), (
        "sql/schema.sql and the migrations disagree; rewrite the snapshot with "
        "WERKFLUSS_WRITE_SCHEMA=1 pytest tests/integration/test_schema.py"
    )
