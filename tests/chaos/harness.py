"""The moving parts of a chaos scenario: settings, worker processes, a database
observer that survives the faults, and the fault injectors.

Only the public surface is used: the worker command line, ``Engine`` (start,
cancel), the documented tables, the workers' JSON log events, and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from .app import EFFECTS_DSN_ENV
from .pg import OwnedPostgres
from .proxy import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
FAULT_KINDS = ("kill", "restart", "terminate", "proxy", "stop", "skew")


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass
class Settings:
    """A scenario's knobs; ``from_env`` reads the ``WERKFLUSS_CHAOS_*`` variables."""

    faults: frozenset[str]
    seconds: float = 8.0  # how long faults are injected
    runs: int = 500  # top-level runs (child runs come on top)
    workers: int = 4  # worker processes with a correct clock
    concurrency: int = 16
    lease: float = 2.0
    poll: float = 1.0
    seed: int = 0
    skews: tuple[str, ...] = ("+120s", "-120s")  # one skewed worker per entry
    pickup_margin: float = 2.0  # a claimable run is picked up within lease + this, once faults stop
    drain_timeout: float = 45.0  # every run must have ended this long after faults stop
    quiet: float = 6.0  # ... but the wait ends when nothing changed for this long

    @classmethod
    def from_env(cls, faults: frozenset[str]) -> Settings:
        seconds = _env_float("WERKFLUSS_CHAOS_SECONDS", 8.0)
        seed_text = os.environ.get("WERKFLUSS_CHAOS_SEED")
        skews = os.environ.get("WERKFLUSS_CHAOS_SKEW", "+120s,-120s")
        return cls(
            faults=faults,
            seconds=seconds,
            # 20 top-level runs a second is what 4 workers x 16 drain on 2 cores while
            # being hit (a 120 s soak: ~180 step bodies/s); at 45/s a long soak only
            # measures the backlog, not whether a run is ever stranded.
            runs=_env_int("WERKFLUSS_CHAOS_RUNS", max(500, round(20 * seconds))),
            workers=_env_int("WERKFLUSS_CHAOS_WORKERS", 4),
            concurrency=_env_int("WERKFLUSS_CHAOS_CONCURRENCY", 16),
            lease=_env_float("WERKFLUSS_CHAOS_LEASE", 2.0),
            poll=_env_float("WERKFLUSS_CHAOS_POLL", 1.0),
            seed=int(seed_text) if seed_text else random.SystemRandom().randrange(1, 1_000_000),
            skews=tuple(s.strip() for s in skews.split(",") if s.strip()),
            pickup_margin=_env_float("WERKFLUSS_CHAOS_PICKUP_MARGIN", 2.0),
            drain_timeout=_env_float("WERKFLUSS_CHAOS_DRAIN", 45.0),
            quiet=_env_float("WERKFLUSS_CHAOS_QUIET", 6.0),
        )

    @property
    def spread(self) -> float:
        """Runs are started over this many seconds from the beginning of the fault window
        (the last ones are still going when the final blow comes)."""
        return max(1.0, self.seconds * 0.85)


def cpu_sample() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine so far (Linux), to tell how loaded it was."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def busy_share(first: tuple[float, float] | None, second: tuple[float, float] | None) -> float | None:
    if first is None or second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1])


def faketime_library() -> str | None:
    configured = os.environ.get("WERKFLUSS_CHAOS_FAKETIME_LIB")
    if configured:
        return configured if Path(configured).is_file() else None
    for pattern in ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                    "/usr/local/lib/faketime/libfaketime.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


# -- a fault, as it happened -------------------------------------------------------------

@dataclass
class Fault:
    kind: str  # kill | restart | terminate | stall | blip | stop | cancel
    began: float  # Unix time (the machine's real clock)
    ended: float
    pid: int | None = None  # the worker it hit; None: every worker
    detail: str = ""
    run_id: str | None = None  # cancel: the run cancelled

    def hits(self, pid: int, run_id: str) -> bool:
        if self.kind == "cancel":
            return self.run_id is not None and (run_id == self.run_id or run_id.startswith(self.run_id + ":"))
        return self.pid is None or self.pid == pid


@dataclass
class StopRecord:
    """One SIGSTOP: the worker, when it was frozen and thawed, the runs it held, and
    when (and by whom) each was observed taken over."""

    pid: int
    worker_id: str
    stopped: float
    resumed: float = 0.0
    held: list[str] = field(default_factory=list)
    taken_over: dict[str, tuple[float, str]] = field(default_factory=dict)  # run -> (seen at, by)
    gone: dict[str, float] = field(default_factory=dict)  # left the queue without a takeover seen
    never: list[str] = field(default_factory=list)  # still held by the frozen worker when it was thawed
    open_transactions: list[str] = field(default_factory=list)  # seen while runs were not taken over


def lock_faults(stops: list[StopRecord]) -> list[Fault]:
    """A worker frozen inside a transaction holds row locks that the others wait on: their
    writes stall too, so that freeze hits every worker."""
    return [Fault("locks", s.stopped, s.resumed, None, f"locks held by frozen pid {s.pid}")
            for s in stops if s.open_transactions not in ([], ["none"])]


# -- worker processes --------------------------------------------------------------------

class ChaosWorker:
    """``python -m werkfluss.worker --app tests.chaos.app`` as a child process."""

    def __init__(self, name: str, *, dsn: str, effects_dsn: str, log_dir: Path, settings: Settings,
                 skew: str | None = None) -> None:
        self.name = name
        self.skew = skew
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env[EFFECTS_DSN_ENV] = effects_dsn
        for var in ("WERKFLUSS_DATABASE_URL", "WERKFLUSS_LISTEN_URL", "LD_PRELOAD", "FAKETIME"):
            env.pop(var, None)
        if skew is not None:
            library = faketime_library()
            assert library is not None
            # A wrong wall clock, a right monotonic one: what a machine whose NTP is off has.
            env.update(LD_PRELOAD=library, FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1")
        self._log = self.log_path.open("wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "werkfluss.worker", "--app", "tests.chaos.app",
             "--dsn", dsn, "--listen-dsn", dsn,
             "--lease", f"{settings.lease}s", "--poll", f"{settings.poll}s",
             "--concurrency", str(settings.concurrency), "--shutdown-grace", "1s",
             "--log-format", "json", "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        self.frozen = False
        self.ended: float | None = None
        self.killed = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.killed = True
        self.proc.wait(timeout=30)
        self.ended = self.ended or time.time()

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def close(self) -> None:
        if self.frozen:
            self.thaw()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.ended = self.ended or time.time()
        self._log.close()

    def started_line(self) -> dict[str, Any] | None:
        """The worker's ``worker.started`` event, once it has logged it (among its first lines)."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            for line in f.read(65536).decode(errors="replace").splitlines():
                if '"worker.started"' in line:
                    with contextlib.suppress(ValueError):
                        return dict(json.loads(line))
        return None


@functools.lru_cache(maxsize=64)
def _read_log(path: Path, size: int) -> tuple[dict[str, Any], ...]:
    events = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
    return tuple(events)


def read_log(path: Path) -> tuple[dict[str, Any], ...]:
    """A worker's JSON log events (parsed once per file size: logs are read many times)."""
    try:
        size = path.stat().st_size
    except OSError:
        return ()
    return _read_log(path, size)


def log_time(event: dict[str, Any]) -> float | None:
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


def skew_seconds(skew: str | None) -> float:
    """``"+120s"`` -> 120.0: how far a skewed worker's clock (and its log's timestamps) is ahead."""
    if not skew:
        return 0.0
    return float(skew.strip().rstrip("s"))


def pid_of(worker_id: str | None) -> int | None:
    """Worker ids read ``host:pid:random``."""
    if not worker_id:
        return None
    parts = worker_id.split(":")
    with contextlib.suppress(ValueError, IndexError):
        return int(parts[-2])
    return None


class Fleet:
    """The worker processes of a scenario (including every one ever started)."""

    def __init__(self, *, dsn: str, effects_dsn: str, log_dir: Path, settings: Settings) -> None:
        self._args = dict(dsn=dsn, effects_dsn=effects_dsn, log_dir=log_dir, settings=settings)
        self.everyone: list[ChaosWorker] = []
        self.live: list[ChaosWorker] = []
        self.exits: list[str] = []  # workers that exited on their own (and were started again)
        self._count = 0

    def spawn(self, skew: str | None = None) -> ChaosWorker:
        self._count += 1
        label = f"w{self._count:02d}" + (f"-skew{skew}" if skew else "")
        worker = ChaosWorker(label, skew=skew, **self._args)  # type: ignore[arg-type]
        self.everyone.append(worker)
        self.live.append(worker)
        return worker

    def replace(self, worker: ChaosWorker) -> ChaosWorker:
        worker.kill()
        self.live.remove(worker)
        return self.spawn(worker.skew)

    def by_pid(self) -> dict[int, ChaosWorker]:
        return {w.pid: w for w in self.everyone}

    async def supervise(self, stopping: asyncio.Event) -> None:
        """What a supervisor (systemd, Kubernetes) does: a worker that exits on its own —
        at start-up it exits with status 1 when it cannot reach the database — is started
        again half a second later."""
        while not stopping.is_set():
            for worker in list(self.live):
                code = worker.proc.poll()
                if code is None or worker.killed or worker not in self.live:  # (replaced meanwhile)
                    continue
                first = ""
                with contextlib.suppress(OSError):
                    first = worker.log_path.read_text(errors="replace").strip().splitlines()[0][:160]
                self.exits.append(f"{worker.name} exited with status {code}: {first}")
                self.live.remove(worker)
                worker.ended = time.time()
                await asyncio.sleep(0.5)  # like RestartSec
                try:
                    self.spawn(worker.skew)
                except OSError as err:
                    self.exits.append(f"could not start a worker again: {err}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.2)

    def close(self) -> None:
        for worker in self.everyone:
            worker.close()


# -- the observer: the test's own direct connection ----------------------------------------

class Observer:
    """Queries from the test process, straight to the database (not through the proxy,
    and never a target of the terminate rounds); retried across server restarts."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def rows(self, query: str, params: Sequence[Any] | None = None,
                   timeout: float = 120.0) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        async with self._lock:
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            self.dsn, autocommit=True, connect_timeout=3, application_name="chaos-observer")
                    cur = await asyncio.wait_for(self._conn.execute(query, params), 30)
                    return await cur.fetchall() if cur.description else []
                except (psycopg.OperationalError, TimeoutError, OSError):
                    await self._drop()
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)

    async def value(self, query: str, params: Sequence[Any] | None = None) -> Any:
        rows = await self.rows(query, params)
        return rows[0][0] if rows else None

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


async def retrying(call: Callable[[], Any], *, timeout: float = 120.0,
                   errors: list[str] | None = None) -> Any:
    """Call ``call()`` (a coroutine function) until it returns; every failure is noted."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except Exception as err:
            if errors is not None:
                errors.append(f"{type(err).__name__}: {err}"[:300])
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# -- the fault injectors -------------------------------------------------------------------

class Injectors:
    """One asyncio task per selected fault kind, each on its own random schedule,
    until ``stop()``; every fault is appended to ``faults``."""

    def __init__(self, settings: Settings, rng: random.Random, *, fleet: Fleet, pg: OwnedPostgres,
                 proxy: ProxyProcess, observer: Observer) -> None:
        self.settings = settings
        self.rng = rng
        self.fleet = fleet
        self.pg = pg
        self.proxy = proxy
        self.observer = observer
        self.faults: list[Fault] = []
        self.stops: list[StopRecord] = []
        self.notes: list[str] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_in_progress: ChaosWorker | None = None

    def start(self) -> None:
        kinds = self.settings.faults
        loops = {"kill": self._kills, "restart": self._restarts, "terminate": self._terminations,
                 "proxy": self._proxy_cuts, "stop": self._stops}
        for kind, loop in loops.items():
            if kind in kinds:
                self._tasks.append(asyncio.create_task(loop(), name=f"chaos-{kind}"))

    async def stop(self) -> None:
        """Stop injecting: let a fault in progress finish (a frozen worker is thawed,
        a stalled proxy reset and resumed, a restarting server up again), then deal
        one last fault of every selected kind at once, so that what happens after
        the faults stop starts from a fresh blow."""
        self._stopping.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        last = {"kill": self._kill_one, "restart": self._restart_once, "terminate": self._terminate_once,
                "proxy": lambda: self._cut_once(self.settings.lease + 0.5), "stop": self._one_stop}
        finals = [last[kind]() for kind in self.settings.faults if kind in last]
        results += await asyncio.gather(*finals, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.notes.append(f"an injector crashed: {result!r}")
        for worker in self.fleet.live:
            if worker.frozen:
                worker.thaw()
        self.proxy.resume()

    async def abort(self) -> None:
        """After an error: stop injecting at once, leave nothing frozen or stalled."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.fleet.live:
            if worker.frozen:
                worker.thaw()
        with contextlib.suppress(Exception):
            self.proxy.resume()

    async def _pause(self, low: float, high: float) -> bool:
        """Wait a random time (the schedule, not a wait for a state); False once stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.rng.uniform(low, high))
        return not self._stopping.is_set()

    async def _kills(self) -> None:
        while await self._pause(1.0, 2.0):
            await self._kill_one()

    async def _kill_one(self) -> None:
        """SIGKILL a random worker that is serving (one still starting up if none is)."""
        candidates = [w for w in self.fleet.live
                      if w is not self._stop_in_progress and not w.frozen and w.alive()]
        serving = [w for w in candidates if w.started_line() is not None]
        candidates = serving or candidates
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        now = time.time()
        replacement = self.fleet.replace(victim)
        self.faults.append(Fault("kill", now, now, victim.pid,
                                 f"{victim.name} killed, {replacement.name} started"))

    async def _restarts(self) -> None:
        while await self._pause(3.0, 5.0):
            await self._restart_once()

    async def _restart_once(self) -> None:
        mode = ["immediate", "fast"][len([f for f in self.faults if f.kind == "restart"]) % 2]
        try:
            began, up = await asyncio.to_thread(self.pg.restart, mode)
        except RuntimeError as err:
            self.notes.append(f"restart failed: {err}")
            return
        self.faults.append(Fault("restart", began, up, None, f"pg_ctl restart -m {mode}"))

    async def _terminations(self) -> None:
        while await self._pause(2.0, 4.0):
            await self._terminate_once()

    async def _terminate_once(self) -> None:
        began = time.time()
        count = await self.observer.value(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name IN ('werkfluss', 'chaos-sender')")
        self.faults.append(Fault("terminate", began, time.time(), None, f"{count} backends"))

    async def _proxy_cuts(self) -> None:
        lease = self.settings.lease
        while await self._pause(3.0, 6.0):
            if self.rng.random() < 0.25:
                # A blip: silence shorter than a lease, then everything flows again.
                began = time.time()
                held = await asyncio.to_thread(self.proxy.stall)
                await asyncio.sleep(self.rng.uniform(0.2, 0.6 * lease))
                await asyncio.to_thread(self.proxy.resume)
                self.faults.append(Fault("blip", began, time.time(), None, f"{held} connections stalled"))
            else:
                await self._cut_once()

    async def _cut_once(self, silence: float | None = None) -> None:
        """Silence past a lease (nothing forwarded, nothing closed), then an RST to everyone."""
        lease = self.settings.lease
        began = time.time()
        held = await asyncio.to_thread(self.proxy.stall)
        await asyncio.sleep(silence or self.rng.uniform(lease + 0.5, lease + 2.5))  # the fault's length
        reset = await asyncio.to_thread(self.proxy.reset)
        await asyncio.to_thread(self.proxy.resume)
        self.faults.append(Fault("stall", began, time.time(), None,
                                 f"{held} connections stalled, then {reset} reset"))

    async def _stops(self) -> None:
        while await self._pause(3.0, 6.0):
            await self._one_stop()

    async def _one_stop(self) -> None:
        if self._stop_in_progress is not None:
            return
        rows = await self.observer.rows(
            "SELECT worker_id, count(*) FROM werkfluss.queue"
            " WHERE lease_id IS NOT NULL AND available_at > now() GROUP BY worker_id")
        holding = {pid_of(wid): (wid, n) for wid, n in rows}
        candidates = [w for w in self.fleet.live
                      if w.skew is None and not w.frozen and w.alive() and w.pid in holding]
        if not candidates:
            self.notes.append("stop: no worker held a run; skipped a round")
            return
        victim = self.rng.choice(candidates)
        worker_id = holding[victim.pid][0]
        if self._stop_in_progress is not None:
            return
        self._stop_in_progress = victim
        try:
            victim.freeze()
            record = StopRecord(victim.pid, worker_id, time.time())
            self.stops.append(record)
            record.held = [r for (r,) in await self.observer.rows(
                "SELECT run_id FROM werkfluss.queue WHERE worker_id = %s AND lease_id IS NOT NULL",
                [worker_id])]
            # Frozen until every run it held is seen held by another worker (or gone), at
            # most two leases and the margin (a takeover takes one lease, two when the
            # other workers' slots are busy).
            deadline = time.monotonic() + 2 * self.settings.lease + self.settings.pickup_margin
            overdue = time.monotonic() + self.settings.lease + self.settings.pickup_margin
            pending = set(record.held)
            while pending and time.monotonic() < deadline:
                if time.monotonic() > overdue and not record.open_transactions:
                    # Why is nobody taking them over? A transaction the frozen worker left open
                    # keeps its queue rows locked, and SKIP LOCKED skips them.
                    record.open_transactions = [
                        f"backend {pid} {state} ({wait}) in a transaction for {age:.1f}s, locks on {rels}: "
                        f"{query}"
                        for pid, state, wait, age, rels, query in await self.observer.rows(
                            "SELECT a.pid, a.state, coalesce(a.wait_event_type || ':' || a.wait_event, '-'),"
                            "       extract(epoch FROM now() - a.xact_start)::float8,"
                            "       (SELECT string_agg(DISTINCT c.relname, ',') FROM pg_locks l"
                            "          JOIN pg_class c ON c.oid = l.relation"
                            "         WHERE l.pid = a.pid AND c.relname NOT LIKE 'pg_%%'),"
                            "       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120)"
                            "  FROM pg_stat_activity a"
                            " WHERE a.datname = current_database() AND a.application_name = 'werkfluss'"
                            "   AND a.xact_start < now() - interval '1 second'")] or ["none"]
                now_rows = await self.observer.rows(
                    "SELECT run_id, worker_id, lease_id IS NOT NULL FROM werkfluss.queue"
                    " WHERE run_id = ANY(%s)", [list(pending)])
                seen = time.time()
                present = {r: (wid, leased) for r, wid, leased in now_rows}
                for run in list(pending):
                    if run not in present:
                        record.gone[run] = seen
                        pending.discard(run)
                    elif present[run][0] != worker_id and present[run][1]:
                        record.taken_over[run] = (seen, present[run][0])
                        pending.discard(run)
                await asyncio.sleep(0.05)
            victim.thaw()
            record.resumed = time.time()
            record.never = sorted(pending)
            self.faults.append(Fault(
                "stop", record.stopped, record.resumed, victim.pid,
                f"{victim.name} frozen {record.resumed - record.stopped:.1f}s holding "
                f"{len(record.held)} runs, {len(record.taken_over)} taken over, {len(record.gone)} gone, "
                f"{len(pending)} never"))
        finally:
            if victim.frozen:
                victim.thaw()
            self._stop_in_progress = None
