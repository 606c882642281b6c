"""Helpers shared by the tests: waiting for states (never fixed sleeps), SQL,
and worker processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent

# Every werkfluss table a test may leave rows in (emptied before each test).
TABLES = (
    "werkfluss.runs", "werkfluss.events", "werkfluss.queue", "werkfluss.hooks", "werkfluss.hook_payloads",
    "werkfluss.workers", "werkfluss.schedules", "werkfluss.audit", "werkfluss.queues",
    "werkfluss.workflow_queues", "werkfluss.rate_limits",
)


async def wait_until(
    predicate: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement in its own autocommit connection; return its rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def sql_value(dsn: str, query: str, params: Any = None) -> Any:
    rows = sql(dsn, query, params)
    return rows[0][0] if rows else None


class WorkerProcess:
    """``python -m werkfluss.worker`` as a child process, output kept in a file."""

    def __init__(self, dsn: str, app: str, *args: str, log_dir: Path, name: str = "worker",
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), WERKFLUSS_TEST_DSN=dsn, **(env or {}))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "werkfluss.worker", "--app", app, "--dsn", dsn,
             "--log-format", "json", *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        self.kill()
        self._log.close()

    async def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        async def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output():
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.output()}")
            return text in self.output()

        await wait_until(seen, timeout=timeout, interval=0.02, message=f"worker output {text!r}")


def run_cli(*args: str, dsn: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m werkfluss ARGS`` (with ``--dsn`` appended when given)."""
    cmd = [sys.executable, "-m", "werkfluss", *args]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """``dsn`` with another user (and password)."""
    params = conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    if password is not None:
        params["password"] = password
    return make_conninfo(**params)


@contextmanager
def login_role(dsn: str, *member_of: str, prefix: str = "werkfluss_test_login") -> Iterator[str]:
    """A LOGIN role with a unique name, granted ``member_of``; yields a DSN that logs in as it.

    Roles are cluster-wide: the role is dropped again at the end, with
    whatever it owns or was granted in this database.
    """
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    sql(dsn, f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
    try:
        for role in member_of:
            sql(dsn, f'GRANT "{role}" TO "{name}"')
        yield with_user(dsn, name, password)
    finally:
        sql(dsn, f'DROP OWNED BY "{name}"')
        sql(dsn, f'DROP ROLE "{name}"')


class HeldSampler:
    """A thread that reads, over and over, how many runs hold a worker per
    queue, per (queue, key) and per (queue, worker), and keeps the most seen.

        with HeldSampler(dsn) as sampler:
            ...
        assert sampler.max_queue["exports"] <= 20
    """

    QUERY = """SELECT queue_name, concurrency_key, worker_id, count(*) FROM werkfluss.queue
                WHERE lease_id IS NOT NULL AND queue_name IS NOT NULL
                GROUP BY queue_name, concurrency_key, worker_id"""

    def __init__(self, dsn: str, interval: float = 0.002) -> None:
        import threading

        self.dsn = dsn
        self.interval = interval
        self.max_queue: dict[str, int] = {}
        self.max_key: dict[tuple[str, str], int] = {}
        self.max_worker: dict[tuple[str, str], int] = {}
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="held-sampler", daemon=True)

    def __enter__(self) -> HeldSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"the sampler failed: {self.error!r}")

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    queues: dict[str, int] = {}
                    keys: dict[tuple[str, str], int] = {}
                    workers: dict[tuple[str, str], int] = {}
                    for queue, key, worker, held in conn.execute(self.QUERY).fetchall():
                        queues[queue] = queues.get(queue, 0) + held
                        if key is not None:
                            keys[(queue, key)] = keys.get((queue, key), 0) + held
                        workers[(queue, worker)] = workers.get((queue, worker), 0) + held
                    for seen, most in ((queues, self.max_queue), (keys, self.max_key),
                                       (workers, self.max_worker)):
                        for name, held in seen.items():
                            most[name] = max(most.get(name, 0), held)  # type: ignore[index]
                    self.samples += 1
                    self._stop.wait(self.interval)
        except BaseException as err:  # reported by __exit__
            self.error = err
