"""The worker suite's core scenarios through PgBouncer in transaction mode.

A session fixture starts the Debian ``pgbouncer`` (``/usr/sbin/pgbouncer``)
on a free port in front of the test server, with ``pool_mode = transaction``
and a few server connections per database, so that consecutive transactions
of one client really run on different server connections. Here ``dsn`` and
``engine`` go through it; ``LISTEN`` goes to the server directly
(``WERKFLUSS_LISTEN_URL``, ``listen_dsn``), as docs/operations.md says to.
Without pgbouncer installed these tests are skipped (CI installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from werkfluss import Engine

from ...helpers import TABLES, sql

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.path.exists(p)), None)
SERVER_CONNECTIONS = 4  # per database and user: far fewer than the clients of a worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class PgBouncer:
    """A running pgbouncer; ``through(dsn)`` is ``dsn`` with pgbouncer's address."""

    def __init__(self, server_dsn: str, workdir: Path) -> None:
        if PGBOUNCER is None:
            pytest.skip("pgbouncer is not installed (Debian package pgbouncer)")
        server = conninfo_to_dict(server_dsn)
        host, port = server.get("host") or "/var/run/postgresql", server.get("port") or "5432"
        user, password = server.get("user") or "postgres", server.get("password") or ""
        workdir.chmod(0o755)  # pgbouncer drops root for the postgres user and reads its files again
        (workdir / "users.txt").write_text(f'"{user}" "{password}"\n')
        self.log_path = workdir / "pgbouncer.log"
        # A free port may be taken by someone else before pgbouncer binds it:
        # then pgbouncer exits, and we try another one.
        for _attempt in range(5):
            self.port = _free_port()
            ini = workdir / "pgbouncer.ini"
            ini.write_text(f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
server_lifetime = 3600
""")
            for path in workdir.iterdir():
                path.chmod(0o644)
            command = [PGBOUNCER, str(ini)]
            if os.geteuid() == 0:  # pgbouncer refuses to run as root
                command[1:1] = ["-u", _unprivileged_user(host)]
            self.log = self.log_path.open("wb")
            self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
            if self._listening():
                return
            self.stop()
        raise RuntimeError(f"pgbouncer did not start:\n{self.log_path.read_text()}")

    def _listening(self) -> bool:
        """Wait until pgbouncer itself says it listens on our port (False if it exited)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            self.log.flush()
            if f"listening on 127.0.0.1:{self.port}" in self.log_path.read_text(errors="replace") \
                    and _accepts(self.port):
                return True
            time.sleep(0.05)
        return False

    def check(self) -> None:
        """Fail with pgbouncer's log if it is not running."""
        if self.proc.poll() is not None:
            self.log.flush()
            raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}):\n{self.log_path.read_text()}")

    def through(self, dsn: str) -> str:
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo(**params)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _unprivileged_user(host: str) -> str:
    """Whom pgbouncer runs as: the owner of the server's socket directory (an
    embedded server's is private to it), else postgres, else nobody."""
    if host.startswith("/") and os.path.isdir(host):
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
        if owner != "root":
            return owner
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


@pytest.fixture(scope="session")
def pgbouncer(pg_server: str) -> Iterator[PgBouncer]:
    with tempfile.TemporaryDirectory(prefix="werkfluss-pgbouncer-") as tmp:
        bouncer = PgBouncer(pg_server, Path(tmp))
        try:
            yield bouncer
        finally:
            bouncer.stop()


@pytest.fixture
def direct_dsn(test_dsn: str) -> str:
    """The session's database, reached directly (for LISTEN)."""
    return test_dsn


@pytest.fixture
def dsn(test_dsn: str, pgbouncer: PgBouncer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's database through PgBouncer, tables emptied; LISTEN goes direct."""
    pgbouncer.check()
    sql(test_dsn, f"TRUNCATE {', '.join(TABLES)}")
    monkeypatch.setenv("WERKFLUSS_LISTEN_URL", test_dsn)  # Engine(), the CLI and worker processes
    return pgbouncer.through(test_dsn)


@pytest.fixture
async def engine(dsn: str, direct_dsn: str) -> AsyncIterator[Engine]:
    async with Engine(dsn, listen_dsn=direct_dsn) as eng:
        yield eng
