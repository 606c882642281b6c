"""Executing a page's examples against a database of its own.

:func:`run_page` runs every block of a :class:`~tests.docs.pages.Page` in
order, in a fresh working directory and a fresh database on the test server,
and returns what it did (or raises :class:`ExampleFailed` naming the block).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlparse
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .expect import compare
from .pages import CONFIG, PYTHON, SHELL, SQL, Block, Page

# Commands that do not end by themselves: started in the background for the
# rest of the page (as in a second terminal), stopped with SIGTERM at its end.
BACKGROUND = re.compile(r"(?:^|\s)(?:python -m werkfluss\.worker|(?:python -m werkfluss|werkfluss) "
                        r"(?:worker|dashboard))(?:\s|$)")
BLOCK_TIMEOUT = 60.0  # seconds for one block or command
BACKGROUND_OUTPUT_TIMEOUT = 20.0
_SESSION_RUNNER = Path(__file__).with_name("session_runner.py")
_PSQL_RULE = re.compile(r"^--\s*(?:-{3,}|ERROR:)")  # a psql result (or error) shown in comments
_LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
              "dbname": "PGDATABASE"}
_AS_ROLE = re.compile(r"^--\s*as\s+(\w+)\s*$")


class ExampleFailed(AssertionError):
    pass


@dataclass
class Outcome:
    """What running a page did, for the summary."""

    run: list[str] = field(default_factory=list)  # "python", "console", "sql", "file", "setup"
    compared: int = 0  # outputs compared
    no_run: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    seconds: list[tuple[float, str]] = field(default_factory=list)  # (took, where) per block


# --- the page's database ---------------------------------------------------------------


def _with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


@contextmanager
def page_database(server_dsn: str, page: Page) -> Iterator[str]:
    """A new, empty database (no werkfluss schema) for one page; dropped afterwards."""
    slug = re.sub(r"\W+", "_", str(page.path.with_suffix(""))).strip("_").lower()[:30]
    name = f"werkfluss_docs_{slug}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_dbname(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- python blocks: one subprocess per page --------------------------------------------


class Session:
    """The page's python namespace, in a subprocess (see ``session_runner.py``)."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, str(_SESSION_RUNNER), str(write_fd)],
            cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=[write_fd], text=True,
        )
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")

    def run(self, code: str, where: str, *, close: bool = False) -> dict[str, Any]:
        assert self.proc.stdin is not None
        request = {"close": True} if close else {"code": code, "where": where}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.replies], [], [], BLOCK_TIMEOUT)
        if not ready:
            self.proc.kill()
            raise ExampleFailed(f"{where}: still running after {BLOCK_TIMEOUT:.0f}s")
        line = self.replies.readline()
        if not line:
            raise ExampleFailed(f"{where}: the python session exited ({self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.run("", "close", close=True)
            except (ExampleFailed, OSError, ValueError):
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.replies.close()


# --- shell commands ----------------------------------------------------------------------


@dataclass
class Command:
    line: int
    text: str
    expected: str  # the lines shown after it ("" if none)


def commands(block: Block) -> list[Command]:
    """``$ command`` lines (continued by a trailing backslash), each with the output shown after it."""
    found: list[Command] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if not found:
                raise ExampleFailed(f"{block.where}: a shell block whose first line is not a `$ ` command;"
                                    " write commands as `$ command`, or mark the block <!-- no-run: … -->")
            found[-1].expected += line + "\n"
            i += 1
            continue
        text, start = line[2:], block.line + 1 + i
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + "\n" + lines[i]
        found.append(Command(start, text, ""))
        i += 1
    return found


class Background:
    """A command that keeps running (a worker): its output is collected as it comes."""

    def __init__(self, text: str, cwd: Path, env: dict[str, str], where: str) -> None:
        self.where = where
        self.text = text
        self.proc = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.chunks: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.chunks.append(line)

    def output(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, expected: str) -> None:
        deadline = time.monotonic() + BACKGROUND_OUTPUT_TIMEOUT
        while True:
            diff = compare(expected, self.output(), prefix=True)
            if diff is None:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited with status {self.proc.returncode}" if self.proc.poll() is not None \
                    else f"printed this within {BACKGROUND_OUTPUT_TIMEOUT:.0f}s"
                raise ExampleFailed(f"{self.where}: `{self.text}` {state}, not what the page shows:\n{diff}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- SQL -----------------------------------------------------------------------------------


def _psql_table(cur: psycopg.Cursor[Any]) -> str:
    """A statement's result as psql prints it (aligned, without the row count)."""
    assert cur.description is not None
    assert cur.pgresult is not None
    headers = [c.name for c in cur.description]
    result = cur.pgresult
    rows = [
        [("" if (v := result.get_value(r, c)) is None else bytes(v).decode()) for c in range(result.nfields)]
        for r in range(result.ntuples)
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = [" " + " | ".join(h.center(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-" + "-+-".join("-" * w for w in widths) + "-")
    lines += [" " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _sql_statements(code: str) -> list[tuple[str, str]]:
    """(statement, the psql output or error shown in ``--`` comments right after it, or "")."""
    statements: list[tuple[str, list[str]]] = []
    for piece in sqlparse.split(code):
        lines = piece.strip().splitlines()
        # comment lines before the statement (sqlparse gives them to the next piece) and after it
        lead = 0
        while lead < len(lines) and lines[lead].lstrip().startswith("--"):
            lead += 1
        trail = len(lines)
        while trail > lead and lines[trail - 1].lstrip().startswith("--"):
            trail -= 1
        if statements:
            statements[-1][1].extend(lines[:lead])
        if trail > lead:
            statements.append(("\n".join(lines[lead:trail]), lines[trail:]))
    result = []
    for statement, comments in statements:
        shown = ""
        if comments and (_PSQL_RULE.match(comments[min(1, len(comments) - 1)].strip())
                         or comments[0].lstrip().startswith("-- ERROR:")):
            shown = "\n".join(re.sub(r"^\s*--", "", line) for line in comments)
        result.append((statement, shown))
    return result


# --- the page ------------------------------------------------------------------------------


class PageRun:
    def __init__(self, page: Page, dsn: str, admin_dsn: str, workdir: Path) -> None:
        self.page = page
        self.dsn = dsn
        self.admin_dsn = admin_dsn
        self.workdir = workdir
        self.outcome = Outcome()
        self.background: list[Background] = []
        self.session: Session | None = None
        suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.roles = {role: f"{role}_{suffix}" for role in page.roles}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("WERKFLUSS_", "PYTEST_", "PG"))
               and k not in ("PYTHONPATH", "VIRTUAL_ENV")},
            "WERKFLUSS_DATABASE_URL": dsn,
            # libpq's own variables, so that psql, pg_dump & co. on a page reach its database too
            **{_LIBPQ_ENV[key]: str(value) for key, value in conninfo_to_dict(dsn).items()
               if key in _LIBPQ_ENV and value is not None},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        self.files: list[tuple[Block, str]] = []  # written files, and their path

    # the page's private roles: renamed in everything the page runs
    def _rename(self, text: str) -> str:
        for role, private in self.roles.items():
            text = re.sub(rf"\b{re.escape(role)}\b", private, text)
        return text

    def run(self) -> Outcome:
        try:
            for block in self.page.blocks:
                started = time.monotonic()
                self._block(block)
                self.outcome.seconds.append((time.monotonic() - started, block.where))
            self._check_files_used()
        finally:
            for proc in self.background:
                proc.stop()
            if self.session is not None:
                self.session.close()
        return self.outcome

    def _block(self, block: Block) -> None:
        if block.no_run is not None:
            self.outcome.no_run.append((block.where, block.no_run))
            return
        if block.lang in CONFIG:
            self._write_file(block)
        elif block.lang in PYTHON:
            if block.file is not None:
                self._write_file(block)
            else:
                self._python(block)
        elif block.lang in SHELL:
            for command in commands(block):
                self._command(block, command)
        elif block.lang in SQL:
            self._sql(block)

    def _write_file(self, block: Block) -> None:
        path = block.file
        assert path is not None
        target = self.workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(self.workdir).parents:
            if str(parent) != "." and not (self.workdir / parent / "__init__.py").exists():
                (self.workdir / parent / "__init__.py").write_text("")
        target.write_text(block.code)
        if block.lang in PYTHON:
            self.files.append((block, path))  # a python file must be run or imported later on
        self.outcome.run.append("file")

    def _check_files_used(self) -> None:
        for block, path in self.files:
            module = path.removesuffix(".py").replace("/", ".")
            later = [b.code for b in self.page.blocks if b.line > block.line and b.no_run is None]
            used_by = [code for code in later if path in code or re.search(rf"\b{re.escape(module)}\b", code)
                       or (Path(path).name == "conftest.py" and re.search(r"(?m)^\$ .*\bpytest\b", code))]
            if not used_by:
                raise ExampleFailed(
                    f"{block.where}: the file {path} is written but nothing later on the page runs or"
                    f" imports it (e.g. `$ python {path}`), so it is never executed"
                )

    def _python(self, block: Block) -> None:
        if self.session is None:
            self.session = Session(self.workdir, self.env)
        reply = self.session.run(self._rename(block.code), block.where)
        self.outcome.run.append("setup" if block.setup else "python")
        if reply["error"]:
            raise ExampleFailed(f"{block.where}: the example raised\n{reply['error']}\n"
                                f"--- it printed:\n{reply['output']}")
        if block.output is not None:
            self._compare(block.where, block.output, reply["output"], unordered=block.unordered)

    def _compare(self, where: str, expected: str, actual: str, *, unordered: bool = False) -> None:
        self.outcome.compared += 1
        diff = compare(expected, actual, unordered=unordered)
        if diff is not None:
            raise ExampleFailed(f"{where}: the output differs from what the page shows\n{diff}")

    def _command(self, block: Block, command: Command) -> None:
        where = f"{block.page}:{command.line}"
        text = self._rename(command.text)
        if BACKGROUND.search(text):
            proc = Background(text, self.workdir, self.env, where)
            self.background.append(proc)
            self.outcome.run.append("console")
            if command.expected.strip():
                self.outcome.compared += 1
                proc.wait_for(command.expected)
            return
        try:
            done = subprocess.run(["bash", "-c", text], cwd=self.workdir, env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise ExampleFailed(f"{where}: `{command.text}` still running after {BLOCK_TIMEOUT:.0f}s;"
                                f" if it is a server, add it to BACKGROUND in {__name__}") from exc
        self.outcome.run.append("console")
        shown = command.expected.strip() != ""
        if shown:
            self._compare(where, command.expected, done.stdout, unordered=block.unordered)
        elif done.returncode != 0:
            # A command may fail on a page only where the page shows what it prints.
            raise ExampleFailed(f"{where}: `{command.text}` exited with status {done.returncode}:\n"
                                f"{done.stdout}")

    def _sql(self, block: Block) -> None:
        code = self._rename(block.code)
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        as_role = _AS_ROLE.match(first)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if as_role:
                conn.execute(f'SET ROLE "{as_role.group(1)}"')
            for statement, shown in _sql_statements(code):
                try:
                    cur = conn.execute(statement)  # type: ignore[call-overload]
                except psycopg.Error as exc:
                    if shown.strip().startswith("ERROR:"):
                        self._compare(block.where, shown, f"ERROR:  {exc.diag.message_primary}")
                        continue
                    raise ExampleFailed(f"{block.where}: PostgreSQL refused\n{statement}\n--- {exc}") from exc
                if shown.strip().startswith("ERROR:"):
                    raise ExampleFailed(f"{block.where}: the page shows an error, but PostgreSQL ran"
                                        f"\n{statement}")
                if shown:
                    if cur.description is None:
                        raise ExampleFailed(f"{block.where}: a result is shown for a statement that"
                                            f" returns none:\n{statement}")
                    self._compare(block.where, shown, _psql_table(cur))
        self.outcome.run.append("sql")


def run_page(page: Page, server_dsn: str, workdir: Path) -> Outcome:
    pagerun: PageRun | None = None
    try:
        with page_database(server_dsn, page) as dsn:
            pagerun = PageRun(page, dsn, server_dsn, workdir)
            try:
                return pagerun.run()
            finally:
                _drop_owned(dsn, pagerun.roles.values())
    finally:
        if pagerun is not None:
            _drop_roles(server_dsn, pagerun.roles.values())


def _existing(conn: psycopg.Connection[Any], roles: Iterable[str]) -> list[str]:
    return [r for r in roles if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [r]).fetchone()]


def _drop_owned(dsn: str, roles: Iterable[str]) -> None:
    """What the page's roles own or were granted in its database goes with them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in _existing(conn, roles):
            conn.execute(f'DROP OWNED BY "{role}"')


def _drop_roles(server_dsn: str, roles: Iterable[str]) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for role in _existing(conn, roles):
            conn.execute(f'DROP ROLE "{role}"')
