"""The one door to PostgreSQL: connections, pools, transactions, LISTEN.

Everything else in werkfluss speaks to a :class:`Connector` in query names
(``await connector.fetch_all("claim_runs", ...)``) and never imports psycopg.
psycopg's errors are translated here, once, into the :mod:`werkfluss.errors`
hierarchy. ``json``/``jsonb`` columns come back as text, so that
:mod:`werkfluss.serializer` decodes them (with its fast path for plain JSON).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from werkfluss.errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgument,
    RecordRefused,
    RunIdConflict,
    RunNotFound,
    SchemaNotReady,
)
from werkfluss.store.queries import QUERIES

Row = dict[str, Any]

# Queries that change nothing: safe to run again after a lost connection.
READ_ONLY = frozenset({
    "get_run", "list_runs", "list_events", "list_steps", "read_logs", "run_inputs", "next_due",
    "schema_state", "worker_held_runs", "list_workers", "migrations_applied", "migrations_table_exists",
})

# SQLSTATEs after which the same transaction is expected to succeed when run again.
_BUSY_STATES = frozenset({"40001", "40P01", "55P03", "57014"})
Params = Mapping[str, Any]


@dataclass(frozen=True)
class Notification:
    channel: str
    payload: str


def describe_dsn(dsn: str) -> str:
    """``host=… port=… database=… user=…`` for messages; never the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparseable connection string"
    parts = []
    for key, label in (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user")):
        if info.get(key):
            parts.append(f"{label}={info[key]}")
    return " ".join(parts) or "the default PostgreSQL server (libpq defaults)"


def _password(dsn: str) -> str | None:
    try:
        value = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(value) if value else None


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # jsonb as text: the serializer decodes it (and skips the walk for plain JSON).
    for type_name in ("json", "jsonb"):
        conn.adapters.register_loader(type_name, TextLoader)


class Connector:
    """A pool of connections to one database.

    Example::

        connector = Connector("postgresql://localhost/app")
        await connector.open()
        row = await connector.fetch_one("get_run", run_id="r1")
        await connector.close()
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "werkfluss",
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.description = describe_dsn(dsn)
        self._secret = _password(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._application_name = application_name
        self._connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._healing: asyncio.Task[None] | None = None
        self.heals = 0  # times the pool was checked after a lost connection

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect; raise :class:`DatabaseUnavailable` with a clear message if we can't."""
        if self._pool is not None:
            return
        # One direct attempt first: the pool would retry silently until its
        # timeout, while this gives the user the server's own reason at once.
        conn = await self._connect()
        await conn.close()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            self.dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs=self._connect_kwargs(),
            configure=_configure,
            open=False,
            timeout=self._connect_timeout,
            name=self._application_name,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout as err:
            await pool.close()
            raise self._unavailable(err) from None
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": self._application_name,
            "connect_timeout": max(1, int(self._connect_timeout)),
        }

    async def _connect(self, dsn: str | None = None) -> psycopg.AsyncConnection[Row]:
        try:
            conn = await psycopg.AsyncConnection.connect(dsn or self.dsn, **self._connect_kwargs())
        except psycopg.Error as err:
            raise self._unavailable(err) from None
        await _configure(conn)
        return conn

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        if self._pool is None:
            raise DatabaseUnavailable(
                f"the connection to {self.description} is not open; use `async with Engine(...)`"
                " or `await engine.open()` first"
            )
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as err:
            raise self._unavailable(err) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            if _connection_lost(err):
                self._heal()
            raise

    def _heal(self) -> asyncio.Task[None] | None:
        """A connection was lost: check every idle connection of the pool at once
        (dropping the dead ones), instead of handing them out one by one."""
        pool = self._pool
        if pool is None:
            return None
        if self._healing is None or self._healing.done():
            self.heals += 1
            self._healing = asyncio.get_running_loop().create_task(_check_pool(pool))
        return self._healing

    async def _healed(self, timeout: float = 2.0) -> None:
        task = self._heal()
        if task is not None:
            await asyncio.wait([task], timeout=timeout)

    # --- queries -----------------------------------------------------------------------

    async def fetch_all(self, query: str, /, **params: Any) -> list[Row]:
        """Run the named query and return all rows as dicts.

        A read-only query that meets a lost connection is run once more on a
        checked one (the pool is healed first).
        """
        for attempt in (0, 1):
            try:
                async with self._connection() as conn:
                    cur = await conn.execute(QUERIES[query], params or None)
                    return await cur.fetchall() if cur.description else []
            except psycopg.Error as err:
                if attempt == 0 and query in READ_ONLY and _connection_lost(err):
                    await self._healed()
                    continue
                self._raise(err, params)
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch_one(self, query: str, /, **params: Any) -> Row | None:
        """Run the named query and return its first row (or ``None``); retried like :meth:`fetch_all`."""
        rows = await self.fetch_all(query, **params)
        return rows[0] if rows else None

    async def execute(self, query: str, /, **params: Any) -> None:
        """Run the named query, discarding any rows."""
        await self.fetch_all(query, **params)

    async def run_batch(self, statements: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        """Run named queries in one transaction, pipelined: one round trip, one commit.

        Returns the rows of each statement, in order. If any statement fails,
        nothing is committed.
        """
        try:
            async with self._connection() as conn:
                cursors = []
                async with conn.pipeline(), conn.transaction():
                    for name, params in statements:
                        cur = conn.cursor()
                        await cur.execute(QUERIES[name], params or None)
                        cursors.append(cur)
                return [await cur.fetchall() if cur.description else [] for cur in cursors]
        except psycopg.Error as err:
            raise self._classify_write_error(err) from err
        except (UnicodeEncodeError, ValueError, OverflowError) as err:
            # A value the driver cannot send (e.g. text that is not valid UTF-8).
            raise RecordRefused(f"the database driver cannot send a value: {err}") from err

    def _classify_write_error(self, err: psycopg.Error) -> Exception:
        """Writes need to know: retry (busy or unreachable), or isolate the refused value."""
        state = err.sqlstate or ""
        if state in _BUSY_STATES:
            return DatabaseBusy(f"PostgreSQL asked to retry: {self._scrub(str(err).strip())}")
        if state[:2] in ("22", "54") or state in ("23502", "23514", "2200N"):
            message = self._scrub(err.diag.message_primary or str(err).strip())
            return RecordRefused(f"PostgreSQL refused a value: {message}")
        return translate_error(err, {}, self)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction for multi-step work (migrations): commit on success."""
        try:
            async with self._connection() as conn, conn.transaction():
                yield Transaction(conn, self)
        except psycopg.Error as err:
            self._raise(err, {})

    # --- LISTEN ----------------------------------------------------------------------

    @asynccontextmanager
    async def listening(
        self, channels: Sequence[str], *, keepalive: float = 30.0, dsn: str | None = None
    ) -> AsyncIterator[AsyncIterator[Notification]]:
        """A dedicated connection (never pooled) that LISTENs on ``channels``.

        Yields an async iterator of :class:`Notification`. The iterator raises
        :class:`DatabaseUnavailable` when the connection is lost; it checks the
        connection every ``keepalive`` seconds while nothing arrives.
        LISTEN needs a direct connection: it does not work through PgBouncer in
        transaction mode: pass ``dsn`` for a direct connection then.
        """
        conn = await self._connect(dsn)
        try:
            try:
                for channel in channels:
                    await conn.execute(f'LISTEN "{channel}"')
            except psycopg.Error as err:
                self._raise(err, {})
            yield self._notifications(conn, keepalive)
        finally:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def _notifications(
        self, conn: psycopg.AsyncConnection[Row], keepalive: float
    ) -> AsyncIterator[Notification]:
        try:
            while True:
                async for notify in conn.notifies(timeout=keepalive):
                    yield Notification(notify.channel, notify.payload)
                await conn.execute("SELECT 1")  # quiet for a while: is it still alive?
        except psycopg.Error as err:
            self._raise(err, {})

    # --- errors ----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _unavailable(self, err: BaseException) -> DatabaseUnavailable:
        reason = self._scrub(str(err).strip()) or type(err).__name__
        return DatabaseUnavailable(
            f"cannot reach PostgreSQL at {self.description}: {reason}. Check that the server "
            "is running and that --dsn / WERKFLUSS_DATABASE_URL point to it"
        )

    def _raise(self, err: psycopg.Error, params: Params) -> NoReturn:
        """Translate a psycopg error into the werkfluss hierarchy."""
        raise translate_error(err, params, self) from err


def translate_error(err: psycopg.Error, params: Params, connector: Connector) -> Exception:
    diag = err.diag
    message = connector._scrub(diag.message_primary or str(err).strip())
    hint = f" ({diag.message_hint})" if diag.message_hint else ""
    if isinstance(err, (psycopg.OperationalError, psycopg.InterfaceError)) and not isinstance(
        err, psycopg.errors.QueryCanceled
    ):
        return connector._unavailable(err)
    if isinstance(err, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction,
                        psycopg.errors.InvalidSchemaName)) and "werkfluss" in message:
        return SchemaNotReady(message)
    if isinstance(err, psycopg.errors.NoDataFound) and "run_id" in params:
        return RunNotFound(str(params["run_id"]))
    if isinstance(err, psycopg.errors.UniqueViolation) and message.startswith("werkfluss."):
        return RunIdConflict(message + hint)
    if isinstance(err, (psycopg.errors.InvalidParameterValue, psycopg.errors.RaiseException)):
        return InvalidArgument(message + hint)
    return DatabaseError(f"PostgreSQL error: {message}{hint}")


def _connection_lost(err: BaseException) -> bool:
    """Whether ``err`` means the connection is gone (not a query that failed on a live one)."""
    if isinstance(err, psycopg.errors.QueryCanceled):
        return False
    if isinstance(err, psycopg.InterfaceError):
        return True
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = getattr(err, "sqlstate", None) or ""
    return state == "" or state.startswith("08") or state in ("57P01", "57P02", "57P03")


async def _check_pool(pool: AsyncConnectionPool[Any]) -> None:
    try:
        await pool.check()
    except Exception:  # the next query reports the problem; healing is best effort
        return


class Transaction:
    """Named queries inside one open transaction (see :meth:`Connector.transaction`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Row], connector: Connector) -> None:
        self._conn = conn
        self._connector = connector

    async def fetch_all(self, query: str, /, **params: Any) -> list[Row]:
        cur = await self._conn.execute(QUERIES[query], params or None)
        return await cur.fetchall() if cur.description else []

    async def execute_script(self, sql: str) -> None:
        """Run a multi-statement script (no parameters), e.g. a migration file."""
        await self._conn.execute(sql)


async def sleep_backoff(attempt: int, *, base: float = 0.1, cap: float = 1.0) -> None:
    """Wait before retrying a database operation (exponential, capped)."""
    await asyncio.sleep(min(cap, base * (2 ** min(attempt, 10))))
