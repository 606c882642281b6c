"""The one door to PostgreSQL: connections, pools, transactions, LISTEN.

Everything else in werkfluss speaks to a :class:`Connector` in query names
(``await connector.fetch_all("claim_runs", ...)``) and never imports psycopg.
psycopg's errors are translated here, once, into the :mod:`werkfluss.errors`
hierarchy. ``json``/``jsonb`` columns come back as text, so that
:mod:`werkfluss.serializer` decodes them (with its fast path for plain JSON).
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from werkfluss import telemetry
from werkfluss.errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgument,
    InvalidDsn,
    QueueNotFound,
    RecordRefused,
    RunIdConflict,
    RunNotFound,
    ScheduleNotFound,
    SchemaNotReady,
    ValueRefused,
)
from werkfluss.store.queries import QUERIES

Row = dict[str, Any]

RECONNECT_TIMEOUT = 1.5  # seconds a pool keeps retrying in the background before reconnecting on demand


def _quietly(pool: Any) -> None:
    """The pool gave up its background retries (it reconnects on demand)."""


# Queries that change nothing: safe to run again after a lost connection.
READ_ONLY = frozenset({
    "get_run", "run_blocked", "run_outcome", "list_runs", "list_events", "list_steps", "read_logs",
    "run_inputs", "queue_depth",
    "schema_state", "worker_held_runs", "list_workers", "migrations_applied", "migrations_table_exists",
    "run_lease", "count_prunable", "served_workflows",
    "due_schedules", "next_schedule_tick", "list_schedules", "get_schedule",
    "dashboard_list_runs", "dashboard_count_runs", "dashboard_run_children", "dashboard_run_hooks",
    "dashboard_run_holder", "dashboard_run_version", "dashboard_privileges", "audit_list",
    "list_queues",
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
    description = " ".join(parts) or "the default PostgreSQL server (libpq defaults)"
    return scrub(description, _passwords(dsn))


# A URL's scheme, and its password in the query string (…?password=…&…).
_URL_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
_URL_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
# key=value form: password=secret, password = 'quoted \'too\'' (or unterminated).
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)
# Everything from password= up to the next key= (or the end).
_KV_PASSWORD_RUN = re.compile(r"(?:^|\s)password\s*=\s*([^'\s].*?)(?=\s+\w+\s*=|\s*$)", re.IGNORECASE)
# The same, found in any text (an error message echoing part of a DSN).
_TEXT_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@\s]*@")
_TEXT_KV_PASSWORD = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&\"]*)", re.IGNORECASE
)


def redact_dsn(dsn: str) -> str:
    """``dsn`` as it may be shown: its password (and anything shaped like one) is ``***``.

        >>> redact_dsn("postgresql://app:s3cret@db.internal:5432/shop")
        'postgresql://app:***@db.internal:5432/shop'
    """
    return scrub(dsn, _passwords(dsn))


def without_password(dsn: str) -> str | None:
    """``dsn`` without its password, as key=value pairs (libpq then asks for
    the password or reads ``~/.pgpass``); ``None`` if it has none or cannot be parsed."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return None
    if not params.pop("password", None):
        return None
    return make_conninfo("", **params)


def _passwords(dsn: str) -> list[str]:
    """Every string in ``dsn`` that may be its password, longest first.

    Works on connection strings libpq cannot parse, too: the password is
    looked for where the URL form (``scheme://user:secret@host``, ``?password=``)
    and the key=value form (``password=secret``, quoted or not) put it.
    """
    found: set[str] = set()
    password = _password(dsn)
    if password:
        found.add(password)
    match = _URL_SCHEME.match(dsn)
    if match:
        rest = dsn[match.end():]
        query = rest.find("?")
        for end in {len(rest), query if query >= 0 else len(rest)}:
            at = rest.rfind("@", 0, end)
            userinfo = rest[:at] if at >= 0 else ""
            if ":" in userinfo:
                secret = userinfo.split(":", 1)[1]
                found.add(secret)
                # An unencoded '@' in the password: libpq takes what follows it
                # for the host ("host 'ssw0rd@db'"), so the parts are secrets too;
                # a short one only where it stands before an '@', so that a
                # password "p@ss" does not turn every "p" of a message into ***.
                first, *after = secret.split("@")
                found.update(part for part in [first, *after] if len(part) >= 4)
                found.update(f"{part}@" for part in after if part)
        found.update(m.group(1) for m in _URL_QUERY_PASSWORD.finditer(rest))
    for m in _KV_PASSWORD_RUN.finditer(dsn):
        # An unquoted password with a space: libpq then reads its second word
        # as a key ('missing "=" after "…"'), so each word is a secret too.
        found.update(m.group(1).split())
    for m in _KV_PASSWORD.finditer(dsn):
        value = m.group(1)
        if value.startswith("'"):
            found.add(value)
            if len(value) > 1 and value.endswith("'"):
                value = value[1:-1]
            else:  # unterminated: the password is probably its first word
                value = value[1:]
                found.update(value.split())
            found.add(re.sub(r"\\(.)", r"\1", value))
        found.add(value)
    found.update([urllib.parse.unquote(v) for v in found])
    return sorted((v for v in found if v), key=len, reverse=True)


def _password(dsn: str) -> str | None:
    """The password of a connection string libpq can parse (else ``None``)."""
    try:
        value = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(value) if value else None


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without any of ``secrets`` and without anything shaped like a password.

    ``scheme://user:secret@`` becomes ``scheme://user:***@`` and
    ``password=secret`` becomes ``password=***``, whatever the DSN was.
    """
    for secret in secrets:
        if secret.endswith("@"):  # a piece of a password with an unencoded '@'
            text = text.replace(secret, "***@")
        elif len(secret) < 4:  # short: only where it stands alone, not inside words
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
        else:
            text = text.replace(secret, "***")
    text = _TEXT_URL_USERINFO.sub(r"\1***@", text)
    return _TEXT_KV_PASSWORD.sub(r"\1***", text)


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
        acquire_timeout: float | None = None,
        prepare: bool | None = None,
    ) -> None:
        self.dsn = dsn
        self.description = describe_dsn(dsn)
        self._secrets = _passwords(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._application_name = application_name
        self._connect_timeout = connect_timeout
        # How long a query waits for a free (or new) connection from the pool.
        self._acquire_timeout = connect_timeout if acquire_timeout is None else acquire_timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._healing: asyncio.Task[None] | None = None
        self.heals = 0  # times the pool was checked after a lost connection
        self.queries: Counter[str] = Counter()  # named queries run, by name (tests, telemetry)
        # A write transaction whose client stops in the middle (SIGSTOP, a cut
        # network) is ended by the server after this long, so that its row locks
        # do not keep other workers from taking its runs over. Workers set it to
        # their lease.
        self.write_idle_timeout: float = 60.0
        # Whether psycopg may prepare statements on these connections. None: find
        # out when opening. Behind a pooler in transaction mode (PgBouncer before
        # 1.21) a prepared statement is bound to a server connection that the
        # next transaction may not get: it is missing there, or another client's
        # statement has its name. So werkfluss prepares nothing behind a pooler.
        self.prepare = prepare

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect; raise :class:`DatabaseUnavailable` with a clear message if we can't."""
        if self._pool is not None:
            return
        # One direct attempt first: the pool would retry silently until its
        # timeout, while this gives the user the server's own reason at once.
        conn = await self._connect()
        try:
            if self.prepare is None:
                self.prepare = not await _behind_a_pooler(conn)
                if not self.prepare:
                    telemetry.logger().info("connector.pooler_detected", database=self.description,
                                            prepared_statements=False)
        except psycopg.Error as err:
            self._raise(err, {})
        finally:
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
            # The pool retries a lost connection with a doubling backoff (1, 2, 4 s
            # ...); giving that up after a moment makes it connect again as soon as
            # a query needs one, so work resumes within a second of the server
            # coming back instead of at the next step of the backoff.
            reconnect_timeout=RECONNECT_TIMEOUT,
            reconnect_failed=_quietly,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout as err:
            await pool.close()
            raise self._unavailable(err) from None
        self._pool = pool

    def sibling(self, *, max_size: int, application_name: str,
                acquire_timeout: float | None = None) -> Connector:
        """A separate, small pool to the same database: a short path that
        slow work on this pool cannot block (a worker's heartbeat, its writes)."""
        return Connector(self.dsn, min_size=1, max_size=max_size, application_name=application_name,
                         connect_timeout=self._connect_timeout, acquire_timeout=acquire_timeout,
                         prepare=self.prepare)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": self._application_name,
            "connect_timeout": max(1, int(self._connect_timeout)),
        }
        if self.prepare is False:
            kwargs["prepare_threshold"] = None
        return kwargs

    async def _connect(self, dsn: str | None = None) -> psycopg.AsyncConnection[Row]:
        dsn = dsn or self.dsn
        secrets = [*self._secrets, *_passwords(dsn)] if dsn != self.dsn else self._secrets
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as err:
            raise _malformed(err, secrets, dsn) from None
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, **self._connect_kwargs())
        except psycopg.Error as err:
            if _MALFORMED_OPTION.search(str(err)):  # libpq refused an option before connecting
                raise _malformed(err, secrets, dsn) from None
            raise self._unavailable(err, secrets) from None
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
            async with self._pool.connection(timeout=self._acquire_timeout) as conn:
                yield conn
        except PoolTimeout as err:
            raise self._unavailable(err) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            if _connection_failed(err):
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
        self.queries[query] += 1
        for attempt in (0, 1):
            try:
                async with self._connection() as conn:
                    cur = await conn.execute(QUERIES[query], params or None)
                    return await cur.fetchall() if cur.description else []
            except psycopg.Error as err:
                if attempt == 0 and query in READ_ONLY and _connection_failed(err):
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
                    timeout_ms = max(1000, int(self.write_idle_timeout * 1000))
                    await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}")
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
        """Writes need to know: retry (busy or unreachable), or isolate a refused value."""
        state = err.sqlstate or ""
        if state in _BUSY_STATES:
            return DatabaseBusy(f"PostgreSQL asked to retry: {self._scrub(str(err).strip())}")
        if _connection_failed(err):
            return self._unavailable(err)
        if state[:2] in ("22", "54") or state in ("23502", "23514") or (
            not state and isinstance(err, psycopg.DataError)  # refused by the driver itself (NUL in text)
        ):
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
        return scrub(text, self._secrets)

    def _unavailable(self, err: BaseException, secrets: Sequence[str] = ()) -> DatabaseUnavailable:
        reason = scrub(str(err).strip(), [*self._secrets, *secrets]) or type(err).__name__
        return DatabaseUnavailable(
            f"cannot reach PostgreSQL at {self.description}: {reason}. {_what_to_check(reason, self.dsn)}"
        )

    def _raise(self, err: psycopg.Error, params: Params) -> NoReturn:
        """Translate a psycopg error into the werkfluss hierarchy."""
        raise translate_error(err, params, self) from err


# libpq's own refusals of a connection string's options (fe-connect.c), made
# before any server is contacted: the string is wrong, not the server.
_MALFORMED_OPTION = re.compile(
    r"invalid (integer value|port number|connection option|URI|\w+ value)"
    r"|could not match \d+ (host names|port numbers)"
)
_DSN_SETTINGS = "--dsn / WERKFLUSS_DATABASE_URL"


def _malformed(err: psycopg.Error, secrets: Sequence[str], dsn: str) -> InvalidDsn:
    reason = scrub(str(err).strip(), secrets).removeprefix("connection is bad: ")
    scheme = _URL_SCHEME.match(dsn)
    if scheme and scheme.group().strip().lower() not in ("postgresql://", "postgres://"):
        reason += f"; a URL must start with postgresql://, not {scheme.group().strip()}"
    return InvalidDsn(
        f"the connection string is malformed: {reason}. Write it as a URL, "
        "postgresql://user@host:5432/dbname, or as key=value pairs, "
        f"'host=… port=5432 dbname=… user=…' ({_DSN_SETTINGS})"
    )


def _what_to_check(reason: str, dsn: str) -> str:
    """The advice that fits why a connection failed (the reason is libpq's)."""
    if re.search(r"password authentication failed|no password supplied|role \".*\" does not exist"
                 r"|no pg_hba\.conf entry|authentication failed", reason):
        return (f"Check the user and password in {_DSN_SETTINGS} (and that pg_hba.conf lets "
                "this user in from here)")
    if re.search(r"database \".*\" does not exist", reason):
        return f"Create the database (createdb NAME) or correct its name in {_DSN_SETTINGS}"
    if re.search(r"failed to resolve host|could not translate host name", reason):
        advice = f"Check the host name in {_DSN_SETTINGS}"
        if _unencoded_at(dsn):
            advice += "; an '@' in the password must be written %40"
        return advice
    return f"Check that the server is running and that {_DSN_SETTINGS} point to it"


def _unencoded_at(dsn: str) -> bool:
    """A URL whose user:password part holds an '@' that is not percent-encoded."""
    match = _URL_SCHEME.match(dsn)
    if not match:
        return False
    authority = re.split(r"[/?#]", dsn[match.end():], maxsplit=1)[0]
    return authority.count("@") > 1


# SQLSTATEs that mean the connection itself failed: class 08 (connection
# exception) and the server going away (admin_shutdown, crash_shutdown,
# cannot_connect_now).
_CONNECTION_LOST = ("57P01", "57P02", "57P03")


def _connection_failed(err: psycopg.Error) -> bool:
    state = err.sqlstate
    if state:
        return state.startswith("08") or state in _CONNECTION_LOST
    # No SQLSTATE: raised by the client. It is about the connection when the
    # connection is closed or broken; psycopg raises those as OperationalError
    # (or InterfaceError once it knows the connection is closed).
    if isinstance(err, psycopg.errors.PipelineAborted):
        return False
    if isinstance(err, psycopg.InterfaceError):
        return True
    if isinstance(err, psycopg.OperationalError):
        pgconn = err.pgconn
        return pgconn is None or pgconn.status != psycopg.pq.ConnStatus.OK
    return False


def translate_error(err: psycopg.Error, params: Params, connector: Connector) -> Exception:
    """The :mod:`werkfluss.errors` exception for a psycopg error; never a password in it.

    - the connection failed or was lost: :class:`DatabaseUnavailable`;
    - a werkfluss function refused its input (``22023``, raised by our checks):
      :class:`InvalidArgument`; any other value PostgreSQL refused (class ``22``
      data exceptions, class ``54`` limits such as an index row too large):
      :class:`ValueRefused`, an ``InvalidArgument`` that is also a ``DatabaseError``;
    - the schema is missing or old: :class:`SchemaNotReady`;
    - ``P0002`` for a run id: :class:`RunNotFound`; for a schedule name:
      :class:`ScheduleNotFound`; a run id taken by another
      workflow: :class:`RunIdConflict`; ``42704`` for a queue: :class:`QueueNotFound`;
    - anything else: :class:`DatabaseError`, quoting PostgreSQL's message.
    """
    if _connection_failed(err):
        return connector._unavailable(err)
    diag = err.diag
    message = connector._scrub(diag.message_primary or str(err).strip())
    hint = f" ({connector._scrub(diag.message_hint)})" if diag.message_hint else ""
    state = err.sqlstate or ""
    if isinstance(err, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction,
                        psycopg.errors.InvalidSchemaName)) and "werkfluss" in message:
        return SchemaNotReady(message)
    if isinstance(err, psycopg.errors.UndefinedObject) and message.startswith("werkfluss.") \
            and "no queue named" in message:
        return QueueNotFound(message + hint)
    if isinstance(err, psycopg.errors.NoDataFound) and "run_id" in params:
        return RunNotFound(str(params["run_id"]))
    if isinstance(err, psycopg.errors.NoDataFound) and "schedule_name" in params:
        return ScheduleNotFound(str(params["schedule_name"]))
    if isinstance(err, psycopg.errors.UniqueViolation) and message.startswith("werkfluss."):
        return RunIdConflict(message + hint)
    if isinstance(err, psycopg.errors.RaiseException) or (
        isinstance(err, psycopg.errors.InvalidParameterValue) and message.startswith("werkfluss.")
    ):
        return InvalidArgument(message + hint)
    if state.startswith(("22", "54")) or (not state and isinstance(err, psycopg.DataError)):
        what = "too large" if state.startswith("54") else "not acceptable"
        return ValueRefused(f"PostgreSQL refused a value as {what}: {message}{hint}")
    if isinstance(err, psycopg.errors.InsufficientPrivilege):
        return DatabaseError(
            f"PostgreSQL error: {message}{hint}. The role in the connection string lacks a "
            "grant; see the roles section of docs/operations.md"
        )
    return DatabaseError(f"PostgreSQL error: {message}{hint}")


async def _behind_a_pooler(conn: psycopg.AsyncConnection[Row]) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a connection pooler.

    A pooler (PgBouncer, pgcat, Odyssey, RDS Proxy, ...) answers the start-up
    itself and gives the client a cancel key of its own, so the backend pid
    the client was told is not the pid of the server process that runs its
    queries. Connected directly, the two are the same.
    """
    cur = await conn.execute(QUERIES["backend_pid"])
    row = await cur.fetchone()
    return row is None or row["pid"] != conn.info.backend_pid


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
