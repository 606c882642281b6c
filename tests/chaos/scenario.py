"""One chaos scenario from start to end: a fresh database on the owned server,
the proxy, the workers, the sender, the workload, the faults, the drain — and
everything the invariants need, collected from the database and the logs."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from werkfluss import Engine

from . import plan
from .app import EFFECTS_DDL
from .harness import (
    ROOT,
    Fault,
    Fleet,
    Injectors,
    Observer,
    Settings,
    StopRecord,
    cpu_sample,
    lock_faults,
    pid_of,
    retrying,
)
from .pg import OwnedPostgres
from .proxy import ProxyProcess

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Pickup:
    """What the observer saw once faults had stopped."""

    calm: float = 0.0  # when the faults stopped (Unix time)
    drained: float | None = None  # when the last run ended
    samples: int = 0
    worst: dict[str, float] = field(default_factory=dict)  # run -> longest time claimable and not claimed
    worst_idle: dict[str, float] = field(default_factory=dict)  # the same, counted only while slots were free
    unfinished: list[tuple[Any, ...]] = field(default_factory=list)  # runs (with queue rows) left at the end
    gave_up: str | None = None  # why the drain ended before its deadline with runs left


@dataclass
class Collected:
    settings: Settings
    workload: list[plan.PlannedRun]
    database: str
    log_dir: Path
    began: float = 0.0  # the scenario's setup began
    t0: float = 0.0  # the workload and the faults began
    ended: float = 0.0  # the runs had ended (or the wait for them had)
    offsets: tuple[float, float] = (0.0, 0.0)  # time.time() - time.monotonic(), at start and end
    faults: list[Fault] = field(default_factory=list)
    stops: list[StopRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cancels: dict[str, dict[str, Any]] = field(default_factory=dict)
    start_errors: dict[str, list[str]] = field(default_factory=dict)
    sender: dict[str, Any] = field(default_factory=dict)
    pickup: Pickup = field(default_factory=Pickup)
    workers: list[dict[str, Any]] = field(default_factory=list)  # name, pid, skew, log, started, ended
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    effects: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    payloads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    restarts: int = 0
    cpu: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # /proc/stat at t0, calm, end

    def mono_to_wall(self, mono: float) -> float:
        return mono + (self.offsets[0] + self.offsets[1]) / 2

    @property
    def clock_tolerance(self) -> float:
        """How far apart the monotonic-to-wall conversions may be, plus 2 ms."""
        return abs(self.offsets[0] - self.offsets[1]) + 0.002


def dump(data: Collected, path: Path) -> None:
    """Everything the invariants were checked on, as JSON, for a post-mortem."""
    path.write_text(json.dumps({
        "settings": data.settings.__dict__ | {"faults": sorted(data.settings.faults)},
        "database": data.database, "began": data.began, "t0": data.t0, "ended": data.ended,
        "calm": data.pickup.calm, "drained": data.pickup.drained, "gave_up": data.pickup.gave_up,
        "offsets": data.offsets, "cpu": data.cpu,
        "faults": [f.__dict__ for f in data.faults], "stops": [s.__dict__ for s in data.stops],
        "workers": data.workers, "cancels": data.cancels, "sender": data.sender, "notes": data.notes,
        "runs": data.runs, "events": data.events,
        "effects": {f"{run_id} {seq}": rows for (run_id, seq), rows in data.effects.items()},
        "hooks": data.hooks, "payloads": data.payloads,
        "pickup": {"worst_idle": data.pickup.worst_idle, "worst": data.pickup.worst,
                   "unfinished": data.pickup.unfinished},
    }, default=str))


def _offset() -> float:
    return time.time() - time.monotonic()


class SenderProcess:
    def __init__(self, dsn: str, workload: list[plan.PlannedRun], directory: Path) -> None:
        early, late = [], []
        for run in workload:
            if run.shape != "approval":
                continue
            mode = plan.approval_mode(run.n)
            token, payload = plan.approval_token(run.n), plan.approval_payload(run.n)
            if mode == "early":
                early.append([token, payload])
            elif mode == "late":
                late.append([token, payload, run.start_at + (run.send_after or 0.0)])
        self.plan_path = directory / "sender-plan.json"
        self.out_path = directory / "sender-result.json"
        self.plan_path.write_text(json.dumps({"early": early, "late": late}))
        self._log = (directory / "sender.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.sender", "--dsn", dsn, "--plan", str(self.plan_path),
             "--out", str(self.out_path)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
        )
        self._stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]

    async def line(self, timeout: float) -> str:
        return (await asyncio.wait_for(asyncio.to_thread(self._stdout.readline), timeout)).strip()

    def go(self, t0: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {t0}\n")
        self.proc.stdin.flush()

    def results(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.out_path.read_text()))
        except (OSError, ValueError):
            return {}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


async def run_scenario(settings: Settings, pg: OwnedPostgres, log_dir: Path) -> Collected:
    began = time.time()
    rng = random.Random(settings.seed)
    workload = plan.make_workload(settings.runs, settings.spread, rng)
    database = f"chaos_{'_'.join(sorted(settings.faults)) or 'none'}_{secrets.token_hex(3)}"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    direct = pg.dsn(database)
    out = Collected(settings, workload, database, log_dir, began=began)
    restarts_before = pg.restarts

    async with Engine(direct) as engine:
        await engine.migrate()
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(EFFECTS_DDL)

    proxy = ProxyProcess(pg.port, log_dir / "proxy.log")
    proxied = f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"
    fleet = Fleet(dsn=proxied, effects_dsn=direct, log_dir=log_dir, settings=settings)
    observer = Observer(direct)
    sender: SenderProcess | None = None
    injectors: Injectors | None = None
    supervising = asyncio.Event()
    supervisor: asyncio.Task[None] | None = None
    driver: asyncio.Task[None] | None = None
    calm = False
    try:
        for _ in range(settings.workers):
            fleet.spawn()
        if "skew" in settings.faults:
            for skew in settings.skews:
                fleet.spawn(skew)
        await _wait_started(fleet)
        supervisor = asyncio.create_task(fleet.supervise(supervising))
        sender = SenderProcess(proxied, workload, log_dir)
        early = await sender.line(120)
        if early != "early-done":
            raise RuntimeError(f"sender: {early!r} (see {log_dir / 'sender.log'})")

        out.offsets = (_offset(), 0.0)
        async with Engine(direct) as engine:
            out.t0 = time.time()
            out.cpu["t0"] = cpu_sample()
            sender.go(out.t0)
            injectors = Injectors(settings, rng, fleet=fleet, pg=pg, proxy=proxy, observer=observer)
            injectors.start()
            driver = asyncio.create_task(_drive(engine, workload, out))
            await asyncio.sleep(max(0.0, out.t0 + settings.seconds - time.time()))  # the fault window
            await injectors.stop()
            calm = True
            out.pickup.calm = time.time()
            out.cpu["calm"] = cpu_sample()
            await driver
        await _drain(observer, fleet, settings, out)
        out.cpu["drained"] = cpu_sample()
        try:
            done = await sender.line(60)
        except TimeoutError:
            done = "timeout"
        if done != "done":
            out.notes.append(f"sender did not finish: {done!r}")
        out.sender = sender.results()
        out.offsets = (out.offsets[0], _offset())
        out.ended = time.time()
    finally:
        alive_at_end: set[int] = set()
        try:
            if injectors is not None and not calm:
                await injectors.abort()
            if driver is not None and not driver.done():
                driver.cancel()
                await asyncio.gather(driver, return_exceptions=True)
            supervising.set()
            if supervisor is not None:
                for result in await asyncio.gather(supervisor, return_exceptions=True):
                    if isinstance(result, BaseException):
                        out.notes.append(f"the supervisor crashed: {result!r}")
            out.notes.extend(f"supervisor: {line}" for line in fleet.exits)
            alive_at_end = {w.pid for w in fleet.live if w.alive()}
            if injectors is not None:
                out.faults = injectors.faults + out.faults  # out.faults holds the cancels so far
                out.stops = injectors.stops
                out.faults += lock_faults(injectors.stops)
                out.notes.extend(injectors.notes)
        finally:  # whatever happened: no process of ours outlives the scenario
            fleet.close()
            if sender is not None:
                sender.close()
            proxy.close()
        out.restarts = pg.restarts - restarts_before
        out.workers = [
            {"name": w.name, "pid": w.pid, "skew": w.skew, "log": str(w.log_path), "started": w.started,
             "ended": w.ended, "killed": w.killed, "alive_at_end": w.pid in alive_at_end}
            for w in fleet.everyone
        ]
    await _collect(observer, out)
    await observer.close()
    return out


async def _wait_started(fleet: Fleet, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [w for w in fleet.live if w.started_line() is None]
        if not missing:
            return
        for worker in missing:
            if not worker.alive():
                raise RuntimeError(f"worker {worker.name} exited:\n{worker.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start: {[w.name for w in missing]}")
        await asyncio.sleep(0.05)


async def _drive(engine: Engine, workload: list[plan.PlannedRun], out: Collected) -> None:
    """Start every run at its time (late if the database is down); cancel the doomed."""
    cancels: list[asyncio.Task[None]] = []
    for run in workload:
        await asyncio.sleep(max(0.0, out.t0 + run.start_at - time.time()))  # the workload's schedule
        errors: list[str] = []
        await retrying(lambda run=run: engine.start(f"chaos.{run.shape}", run.n, run_id=run.run_id),  # type: ignore[misc]
                       errors=errors)
        if errors:
            out.start_errors[run.run_id] = errors
        if run.cancel_after is not None:
            cancels.append(asyncio.create_task(_cancel(engine, run, out)))
    await asyncio.gather(*cancels)


async def _cancel(engine: Engine, run: plan.PlannedRun, out: Collected) -> None:
    await asyncio.sleep(run.cancel_after or 0.0)  # the workload's schedule
    attempts: list[Any] = []
    began = time.time()
    while True:
        try:
            answer = await engine.cancel(run.run_id)
        except Exception as err:
            attempts.append(f"{type(err).__name__}: {err}"[:200])
            if time.time() - began > 120:
                break
            await asyncio.sleep(0.2)
            continue
        attempts.append(answer)
        break
    out.cancels[run.run_id] = {"attempts": attempts, "began": began, "ended": time.time()}
    out.faults.append(Fault("cancel", began, time.time(), None, "engine.cancel", run_id=run.run_id))


async def _drain(observer: Observer, fleet: Fleet, settings: Settings, out: Collected) -> None:
    """Until every run has ended, watch the queue: how long does a claimable run stay
    unclaimed while some worker that is up has a free slot?

    Ends when everything has ended; at the deadline; or after ``settings.quiet`` seconds
    in which nothing changed (no run claimed, released or ended: whatever is left then
    is stuck, and waiting longer would only make the suite slower)."""
    pickup = out.pickup
    deadline = pickup.calm + settings.drain_timeout
    expected = len(out.workload)
    ready: set[int] = set()
    idle_since: dict[str, tuple[float, int, float]] = {}  # run -> (available_at, claims, waiting since)
    last_full = pickup.calm
    last_change, snapshot = time.time(), None
    while True:
        rows = await observer.rows(
            "SELECT q.run_id, extract(epoch FROM q.available_at)::float8, q.lease_id::text, q.worker_id,"
            "       r.status, extract(epoch FROM clock_timestamp())::float8, q.claims"
            "  FROM werkfluss.queue q JOIN werkfluss.runs r ON r.id = q.run_id")
        left = await observer.value(
            "SELECT count(*) FILTER (WHERE status NOT IN ('completed', 'failed', 'cancelled'))"
            "       + %s - count(*) FILTER (WHERE parent_id IS NULL) FROM werkfluss.runs", [expected])
        pickup.samples += 1
        ready |= {w.pid for w in fleet.live if w.pid not in ready and w.started_line() is not None}
        serving = {w.pid for w in fleet.live if w.pid in ready and w.alive()}
        if rows:
            now = rows[0][5]
            held = sum(1 for _, avail, lease, wid, _, _, _ in rows
                       if lease and avail > now and pid_of(wid) in serving)
            free = len(serving) * settings.concurrency - held
            if free <= 0:
                last_full = now
            for run_id, avail, _, _, _, _, claims in rows:
                if avail > now:
                    idle_since.pop(run_id, None)
                    continue
                waited = now - max(avail, pickup.calm)
                pickup.worst[run_id] = max(pickup.worst.get(run_id, 0.0), waited)
                if free > 0:
                    # Claimed (and handed back) between two looks: it waits afresh.
                    if idle_since.get(run_id, (None, None, 0.0))[:2] != (avail, claims):
                        idle_since[run_id] = (avail, claims, max(avail, pickup.calm, last_full))
                    since = idle_since[run_id][2]
                    pickup.worst_idle[run_id] = max(pickup.worst_idle.get(run_id, 0.0), now - since)
                else:
                    idle_since.pop(run_id, None)
        state = (left, frozenset((r[0], r[2], r[3], r[4], r[6]) for r in rows))
        if state != snapshot:
            last_change, snapshot = time.time(), state
        if left == 0 and not rows:
            pickup.drained = time.time()
            return
        quiet = time.time() - last_change > settings.quiet
        if quiet or time.time() > deadline:
            if quiet:
                pickup.gave_up = f"nothing changed for {settings.quiet:g}s"
            pickup.unfinished = await observer.rows(
                "SELECT r.id, r.status, r.waiting_on, q.worker_id, q.available_at::text,"
                "       q.lease_id IS NOT NULL, q.claims, q.wakeups,"
                "       (SELECT string_agg(c.id || '=' || c.status, ' ' ORDER BY c.id)"
                "          FROM werkfluss.runs c WHERE c.parent_id = r.id),"
                "       (SELECT max(e.seq) FROM werkfluss.events e WHERE e.run_id = r.id),"
                "       q.available_at <= now(), p.status"
                "  FROM werkfluss.runs r LEFT JOIN werkfluss.queue q ON q.run_id = r.id"
                "  LEFT JOIN werkfluss.runs p ON p.id = r.parent_id"
                " WHERE r.status NOT IN ('completed', 'failed', 'cancelled') ORDER BY r.id")
            return
        await asyncio.sleep(0.1)


async def _collect(observer: Observer, out: Collected) -> None:
    for row in await observer.rows(
            "SELECT id, workflow, status, result, error, parent_id,"
            "       extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8,"
            "       extract(epoch FROM finished_at)::float8, extract(epoch FROM created_at)::float8"
            "  FROM werkfluss.runs"):
        out.runs[row[0]] = {"workflow": row[1], "status": row[2], "result": row[3], "error": row[4],
                            "parent_id": row[5], "committed": row[6], "finished_at": row[7],
                            "created": row[8]}
    for row in await observer.rows(
            "SELECT run_id, seq, kind, name, status, input, output, error, attempts,"
            "       extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8"
            "  FROM werkfluss.events ORDER BY run_id, seq"):
        out.events.setdefault(row[0], []).append(
            {"seq": row[1], "kind": row[2], "name": row[3], "status": row[4], "input": row[5],
             "output": row[6], "error": row[7], "attempts": row[8], "committed": row[9]})
    for row in await observer.rows(
            "SELECT run_id, seq, attempt, step, pid, nonce, started_mono, client_wall,"
            "       extract(epoch FROM written_at)::float8"
            "  FROM chaos.effects ORDER BY started_mono"):
        out.effects.setdefault((row[0], row[1]), []).append(
            {"attempt": row[2], "step": row[3], "pid": row[4], "nonce": row[5],
             "started": out.mono_to_wall(row[6]), "client_wall": row[7], "written": row[8]})
    for row in await observer.rows(
            "SELECT token, run_id, seq, extract(epoch FROM created_at)::float8 FROM werkfluss.hooks"):
        out.hooks[row[0]] = {"run_id": row[1], "seq": row[2], "created": row[3]}
    for row in await observer.rows(
            "SELECT token, payload, consumed_run, consumed_seq, extract(epoch FROM received_at)::float8"
            "  FROM werkfluss.hook_payloads ORDER BY id"):
        out.payloads.setdefault(row[0], []).append(
            {"payload": row[1], "consumed_run": row[2], "consumed_seq": row[3], "received": row[4]})
