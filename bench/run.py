"""werkfluss benchmarks: one command, a table at the end.

    python bench/run.py                       # all workloads, 3 repetitions
    python bench/run.py --reps 1 --quick      # smoke test
    python bench/run.py --only w2proc w1      # a subset
    python bench/run.py --peers               # also DBOS, Absurd, pgqueuer (and
                                              # werkfluss in the peers' harness),
                                              # same machine, same run

Workloads (each repetition in a fresh process against a fresh database):

* ``w2proc`` — start -> result of a 1-step run through a *separate, idle
  worker process* (``python -m werkfluss.worker``), 200 sequential runs:
  p50/p99 latency.
* ``w2`` — the same with the worker inside the client process.
* ``w1`` — 1000 runs of 10 no-op steps, started before the worker opens,
  worker concurrency 32 (in-process, as the peers measure it): steps/s, runs/s,
  write transactions and WAL bytes per step.
* ``w1proc`` — the same with the worker in a separate process.
* ``w3`` — 20 sequential runs that gather 100 steps each: steps/s.
* ``wake`` — pick-up delay of due sleeping runs: 200 runs started 10 ms
  apart, each sleeps 1 s then runs a step, served by a worker process
  (concurrency 32): p50/p99 of (step start - recorded wake-up time).
* ``sleepers`` — 10,000 runs that sleep for an hour, claimed and suspended
  by one worker process: how long until all sleep, and the worker's memory
  and CPU once they do (what sleeping runs cost a worker).
* ``children`` — one parent gathering 1,000, then 10,000 child runs (one
  step each), in-process worker, concurrency 32: time per child at both
  sizes (equal when a parent's cost is O(n) in its children).
* ``payloads`` — one run iterating a hook while 1,000, then 10,000 payloads
  are sent one after the other: time per payload at both sizes.
* ``flow`` — 10,000 chain10 runs in no queue, then 10,000 in a queue with a
  per-key limit of 2 over 1,000 keys, each drained by an in-process worker
  (concurrency 32): runs/s of both and their ratio.
* ``flowclaim`` — claim latency (one ``werkfluss._claim`` of one run, as a
  worker serving every workflow here makes it) with nothing blocked, with
  100,000 runs parked behind one key at its limit, and with 100,000 runs in a
  queue at its concurrency limit: p50/p99 of each, and how long the claim
  that first meets the 100,000 parks them takes.

Needs a PostgreSQL server on which databases can be created:
``$BENCH_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Results: a table on stdout, and ``results-<date>.md``/``.json`` in ``--out``
(default ``bench/results``). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ROOT.parent / "shared" / "peer-bench"
SERVER_DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

WORKLOADS = ("w2proc", "w2", "w1", "w1proc", "w3", "wake", "sleepers", "children", "payloads", "flow",
             "flowclaim")


# --- helpers ---------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(data)))
    return data[min(rank, len(data)) - 1]


def ms(values: list[float]) -> dict[str, float]:
    millis = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(millis, 50), 3),
        "p99_ms": round(percentile(millis, 99), 3),
        "mean_ms": round(statistics.fmean(millis), 3),
    }


def db_dsn(name: str) -> str:
    params = conninfo_to_dict(SERVER_DSN)
    params["dbname"] = name
    return make_conninfo(**params)


def fresh_database(tag: str) -> str:
    name = f"wfbench_{tag}_{os.getpid()}"
    with psycopg.connect(SERVER_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute("CHECKPOINT")
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(SERVER_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def write_counters(dsn: str) -> tuple[int, int]:
    """(next transaction id, WAL bytes): write transactions and WAL between two readings."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select txid_snapshot_xmax(txid_current_snapshot()),"
            " (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def per_step(before: tuple[int, int], after: tuple[int, int], steps: int) -> dict[str, float]:
    return {
        "write_txns_per_step": round((after[0] - before[0]) / steps, 3),
        "wal_bytes_per_step": round((after[1] - before[1]) / steps, 1),
    }


class WorkerProcess:
    def __init__(self, dsn: str, concurrency: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "werkfluss.worker", "--app", "bench.workloads", "--dsn", dsn,
             "--concurrency", str(concurrency), "--log-level", "warning"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


# --- workloads -------------------------------------------------------------------------


async def w2(dsn: str, iterations: int, *, separate_process: bool) -> dict[str, Any]:
    from bench.workloads import one_step
    from werkfluss import Engine

    async with Engine(dsn) as engine:
        worker_proc = WorkerProcess(dsn, 32) if separate_process else None
        inproc = None if separate_process else engine.worker(concurrency=32)
        if inproc is not None:
            await inproc.start()
        try:
            for _ in range(3):  # untimed warm-up (and: the worker is up)
                await (await engine.start(one_step)).result(timeout=60)
            latencies = []
            for _ in range(iterations):
                t = time.perf_counter()
                handle = await engine.start(one_step)
                result = await handle.result(timeout=60)
                latencies.append(time.perf_counter() - t)
                assert result == {"i": 0}, result
        finally:
            if inproc is not None:
                await inproc.stop()
            if worker_proc is not None:
                worker_proc.stop()
    return {"iterations": iterations, **ms(latencies)}


async def w1(dsn: str, runs: int, *, separate_process: bool) -> dict[str, Any]:
    from bench.workloads import CHAIN_STEPS, chain10
    from werkfluss import Engine

    async with Engine(dsn) as engine:
        t_enqueue = time.perf_counter()
        handles = [await engine.start(chain10) for _ in range(runs)]
        enqueue_s = time.perf_counter() - t_enqueue
        before = await write_counters(dsn)
        t0 = time.perf_counter()
        if separate_process:
            proc = WorkerProcess(dsn, 32)
            try:
                results = await asyncio.gather(*(h.result(timeout=600) for h in handles))
                wall = time.perf_counter() - t0
            finally:
                proc.stop()
        else:
            async with engine.worker(concurrency=32):
                results = await asyncio.gather(*(h.result(timeout=600) for h in handles))
                wall = time.perf_counter() - t0
        after = await write_counters(dsn)
    assert results == [CHAIN_STEPS] * runs
    steps = runs * CHAIN_STEPS
    return {
        "runs": runs,
        "enqueue_per_s": round(runs / enqueue_s, 1),
        "wall_s": round(wall, 3),
        "runs_per_s": round(runs / wall, 1),
        "steps_per_s": round(steps / wall, 1),
        **per_step(before, after, steps),
    }


async def w3(dsn: str, runs: int) -> dict[str, Any]:
    from bench.workloads import FANOUT, fanout100
    from werkfluss import Engine

    async with Engine(dsn) as engine, engine.worker(concurrency=32):
        await (await engine.start(fanout100)).result(timeout=60)  # warm-up
        before = await write_counters(dsn)
        t0 = time.perf_counter()
        for _ in range(runs):
            assert await (await engine.start(fanout100)).result(timeout=60) == FANOUT
        wall = time.perf_counter() - t0
        after = await write_counters(dsn)
    return {"runs": runs, "wall_s": round(wall, 3), "steps_per_s": round(runs * FANOUT / wall, 1),
            **per_step(before, after, runs * FANOUT)}


async def wake(dsn: str, runs: int) -> dict[str, Any]:
    from bench.workloads import nap_then_step
    from werkfluss import Engine

    async with Engine(dsn) as engine:
        proc = WorkerProcess(dsn, 32)
        try:
            await (await engine.start(nap_then_step, 0)).result(timeout=60)  # the worker is up
            handles = []
            for _ in range(runs):
                handles.append(await engine.start(nap_then_step, 1.0))
                await asyncio.sleep(0.01)
            await asyncio.gather(*(h.result(timeout=120) for h in handles))
        finally:
            proc.stop()
        delays = []
        for handle in handles:
            log = await handle.log()
            wake_at = dt.datetime.fromisoformat(log[0].output["wake_at"])
            started = log[1].started_at
            assert started is not None
            delays.append((started - wake_at).total_seconds())
    return {"runs": runs, **ms(delays), "max_ms": round(max(delays) * 1000, 3)}


def _rss_and_cpu(pid: int) -> tuple[float, float]:
    """(resident MiB, CPU seconds used so far) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


async def sleepers(dsn: str, runs: int) -> dict[str, Any]:
    import psycopg

    from bench.workloads import nap_then_step
    from werkfluss import Engine

    async with Engine(dsn) as engine:
        for _ in range(runs // 1000):
            await asyncio.gather(*(engine.start(nap_then_step, 3600) for _ in range(1000)))
        proc = WorkerProcess(dsn, 32)
        try:
            t0 = time.perf_counter()
            # Poll with a count on a connection of its own: cheap and the same for every
            # version measured (listing 10,000 runs 20 times a second took CPU from the worker).
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                while True:
                    cur = await conn.execute("SELECT count(*) FROM werkfluss.runs WHERE status = 'sleeping'")
                    row = await cur.fetchone()
                    if row is not None and row[0] == runs:
                        break
                    await asyncio.sleep(0.05)
            all_asleep_s = time.perf_counter() - t0
            await asyncio.sleep(1.0)
            rss, cpu_before = _rss_and_cpu(proc.proc.pid)
            await asyncio.sleep(10.0)  # ten idle seconds with every run asleep
            _, cpu_after = _rss_and_cpu(proc.proc.pid)
        finally:
            proc.stop()
    return {
        "runs": runs,
        "all_asleep_s": round(all_asleep_s, 3),
        "suspends_per_s": round(runs / all_asleep_s, 1),
        "worker_rss_mib": round(rss, 1),
        "idle_cpu_pct": round((cpu_after - cpu_before) / 10.0 * 100, 2),
    }


async def children(dsn: str, sizes: tuple[int, int]) -> dict[str, Any]:
    from bench.workloads import parent
    from werkfluss import Engine

    out: dict[str, Any] = {}
    async with Engine(dsn) as engine, engine.worker(concurrency=32):
        for label, n in zip(("small", "large"), sizes, strict=True):
            t0 = time.perf_counter()
            handle = await engine.start(parent, n)
            assert await handle.result(timeout=1800) == n
            wall = time.perf_counter() - t0
            out[f"{label}_n"] = n
            out[f"{label}_s"] = round(wall, 3)
            out[f"{label}_us_per_child"] = round(wall / n * 1e6, 1)
    out["growth"] = round(out["large_us_per_child"] / out["small_us_per_child"], 2)
    return out


async def payloads(dsn: str, sizes: tuple[int, int]) -> dict[str, Any]:
    from bench.workloads import collect
    from werkfluss import Engine

    out: dict[str, Any] = {}
    async with Engine(dsn) as engine, engine.worker(concurrency=32):
        for label, n in zip(("small", "large"), sizes, strict=True):
            token = f"bench:{label}"
            handle = await engine.start(collect, token, n)
            # The hook must exist before payloads are sent (only one may come early).
            while await handle.status() != "waiting":  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            for i in range(n):
                await engine.send(token, i)
            assert await handle.result(timeout=1800) == n
            wall = time.perf_counter() - t0
            out[f"{label}_n"] = n
            out[f"{label}_s"] = round(wall, 3)
            out[f"{label}_ms_per_payload"] = round(wall / n * 1000, 3)
    out["growth"] = round(out["large_ms_per_payload"] / out["small_ms_per_payload"], 2)
    return out


async def _drain(engine: Any, dsn: str, workflow: str, total: int) -> float:
    """Seconds for an in-process worker (concurrency 32) to finish every run of ``workflow``."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        async with engine.worker(concurrency=32, workflows=[workflow]):
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM werkfluss.runs WHERE workflow = %s AND status = 'completed'",
                    [workflow])
                row = await cur.fetchone()
                assert row is not None
                if row[0] == total:
                    return time.perf_counter() - t0
                await asyncio.sleep(0.02)


async def flow(dsn: str, runs: int, keys: int) -> dict[str, Any]:
    from bench.workloads import KEYED
    from werkfluss import Engine

    async with Engine(dsn) as engine:
        await engine.declare_queue(KEYED)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # Untimed warm-up of both (whichever is timed first otherwise pays
            # for the process's and the server's warm-up), then both batches
            # started (and the tables analyzed) before either is timed.
            warm = max(runs // 20, 50)
            await conn.execute("SELECT werkfluss.start_run('bench.chain10') FROM generate_series(1, %s)",
                               [warm])
            await conn.execute(
                "SELECT werkfluss.start_run('bench.chain10_keyed', queue => 'bench.keyed',"
                " concurrency_key => 'k' || (i %% %s)) FROM generate_series(1, %s) i", [keys, warm])
            await _drain(engine, dsn, "bench.chain10", warm)
            await _drain(engine, dsn, "bench.chain10_keyed", warm)
            await conn.execute("SELECT werkfluss.start_run('bench.chain10') FROM generate_series(1, %s)",
                               [runs])
            await conn.execute(
                "SELECT werkfluss.start_run('bench.chain10_keyed', queue => 'bench.keyed',"
                " concurrency_key => 'k' || (i %% %s)) FROM generate_series(1, %s) i", [keys, runs])
            await conn.execute("VACUUM ANALYZE werkfluss.runs, werkfluss.queue")
            plain_s = await _drain(engine, dsn, "bench.chain10", warm + runs)
            keyed_s = await _drain(engine, dsn, "bench.chain10_keyed", warm + runs)
    return {
        "runs": runs, "keys": keys,
        "plain_runs_per_s": round(runs / plain_s, 1),
        "keyed_runs_per_s": round(runs / keyed_s, 1),
        "ratio": round(plain_s / keyed_s, 3),
    }


async def flowclaim(dsn: str, blocked: int, claims: int) -> dict[str, Any]:
    from bench.workloads import BLOCKED_KEY, BLOCKED_QUEUE
    from werkfluss import Engine

    serving = ["bench.one_step", "bench.blocked"]
    claim = "SELECT (run).id FROM werkfluss._claim(%s::text[], 1, 'bench-claimer')"

    async def latencies(conn: psycopg.AsyncConnection[Any]) -> list[float]:
        await conn.execute("SELECT werkfluss.start_run('bench.one_step') FROM generate_series(1, %s)",
                           [claims])
        await conn.execute("VACUUM ANALYZE werkfluss.queue")
        out = []
        for _ in range(claims):
            t = time.perf_counter()
            cur = await conn.execute(claim, [serving])
            taken = await cur.fetchall()
            out.append(time.perf_counter() - t)
            assert len(taken) == 1, taken
        return out

    out: dict[str, Any] = {"blocked": blocked, "claims": claims}
    async with Engine(dsn) as engine:
        await engine.declare_queue(BLOCKED_KEY)
        await engine.declare_queue(BLOCKED_QUEUE)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for _ in range(20):  # warm-up
                await conn.execute(claim, [serving])
            out.update({f"none_{k}": v for k, v in ms(await latencies(conn)).items()})

            # One run of the key holds a worker; 100,000 more wait for the key.
            await conn.execute("SELECT werkfluss.start_run('bench.blocked', queue => 'bench.blocked_key',"
                               " concurrency_key => 'hot')")
            await conn.execute(claim, [["bench.blocked"]])
            await conn.execute(
                "SELECT werkfluss.start_run('bench.blocked', queue => 'bench.blocked_key',"
                " concurrency_key => 'hot') FROM generate_series(1, %s)", [blocked])
            t = time.perf_counter()
            await conn.execute(claim, [["bench.blocked"]])  # the claim that meets them parks them
            out["first_claim_parks_s"] = round(time.perf_counter() - t, 3)
            out.update({f"key_{k}": v for k, v in ms(await latencies(conn)).items()})
            await conn.execute("DELETE FROM werkfluss.queue WHERE queue_name = 'bench.blocked_key'")

            # A queue at its concurrency limit with 100,000 ready runs.
            await conn.execute("SELECT werkfluss.start_run('bench.blocked', queue => 'bench.blocked_queue')")
            await conn.execute(claim, [["bench.blocked"]])
            await conn.execute("SELECT werkfluss.start_run('bench.blocked', queue => 'bench.blocked_queue')"
                               " FROM generate_series(1, %s)", [blocked])
            out.update({f"queue_{k}": v for k, v in ms(await latencies(conn)).items()})
    out["key_p50_vs_none"] = round(out["key_p50_ms"] / out["none_p50_ms"], 2)
    out["queue_p50_vs_none"] = round(out["queue_p50_ms"] / out["none_p50_ms"], 2)
    return out


async def measure(workload: str, dsn: str, quick: bool) -> dict[str, Any]:
    from werkfluss import Engine

    async with Engine(dsn) as engine:
        await engine.migrate()  # before any clock starts
    if workload in ("w2", "w2proc"):
        return await w2(dsn, 20 if quick else 200, separate_process=workload == "w2proc")
    if workload in ("w1", "w1proc"):
        return await w1(dsn, 100 if quick else 1000, separate_process=workload == "w1proc")
    if workload == "wake":
        return await wake(dsn, 20 if quick else 200)
    if workload == "sleepers":
        return await sleepers(dsn, 1000 if quick else 10000)
    if workload == "children":
        return await children(dsn, (200, 2000) if quick else (1000, 10000))
    if workload == "payloads":
        return await payloads(dsn, (200, 2000) if quick else (1000, 10000))
    if workload == "flow":
        return await flow(dsn, 1000 if quick else 10000, 100 if quick else 1000)
    if workload == "flowclaim":
        return await flowclaim(dsn, 10000 if quick else 100000, 200 if quick else 1000)
    return await w3(dsn, 3 if quick else 20)


# --- driver ----------------------------------------------------------------------------

FIGURES = {
    "w2proc": [("p50_ms", "p50 start->result, worker process", "ms"),
               ("p99_ms", "p99 start->result, worker process", "ms")],
    "w2": [("p50_ms", "p50 start->result, in-process worker", "ms"),
           ("p99_ms", "p99 start->result, in-process worker", "ms")],
    "w1": [("steps_per_s", "chain10 x1000, c=32, in-process", "steps/s"),
           ("runs_per_s", "chain10 x1000, c=32, in-process", "runs/s"),
           ("write_txns_per_step", "write transactions per step", "txns"),
           ("wal_bytes_per_step", "WAL per step", "bytes"),
           ("enqueue_per_s", "engine.start rate (untimed)", "starts/s")],
    "w1proc": [("steps_per_s", "chain10 x1000, c=32, worker process", "steps/s"),
               ("runs_per_s", "chain10 x1000, c=32, worker process", "runs/s")],
    "w3": [("steps_per_s", "fanout100 x20, sequential", "steps/s"),
           ("wall_s", "fanout100 x20, sequential", "s")],
    "wake": [("p50_ms", "due sleeping run: wake time -> step start, p50", "ms"),
             ("p99_ms", "due sleeping run: wake time -> step start, p99", "ms")],
    "sleepers": [("all_asleep_s", "10,000 runs claimed and put to sleep", "s"),
                 ("worker_rss_mib", "worker memory with 10,000 runs asleep", "MiB"),
                 ("idle_cpu_pct", "worker CPU with 10,000 runs asleep", "%")],
    "children": [("small_us_per_child", "parent of 1,000 children: time per child", "µs"),
                 ("large_us_per_child", "parent of 10,000 children: time per child", "µs"),
                 ("growth", "per-child cost, 10,000 vs 1,000 (1.0 = linear)", "x")],
    "payloads": [("small_ms_per_payload", "loop over 1,000 hook payloads: time per payload", "ms"),
                 ("large_ms_per_payload", "loop over 10,000 hook payloads: time per payload", "ms"),
                 ("growth", "per-payload cost, 10,000 vs 1,000 (1.0 = linear)", "x")],
    "flow": [("plain_runs_per_s", "chain10 x10,000, no queue, c=32", "runs/s"),
             ("keyed_runs_per_s", "chain10 x10,000, per_key=2 over 1,000 keys, c=32", "runs/s"),
             ("ratio", "keyed / unlimited throughput (goal >= 0.5)", "x")],
    "flowclaim": [("none_p50_ms", "claim latency, nothing blocked, p50", "ms"),
                  ("none_p99_ms", "claim latency, nothing blocked, p99", "ms"),
                  ("key_p50_ms", "claim latency, 100,000 parked behind a key, p50", "ms"),
                  ("key_p99_ms", "claim latency, 100,000 parked behind a key, p99", "ms"),
                  ("queue_p50_ms", "claim latency, 100,000 in a full queue, p50", "ms"),
                  ("queue_p99_ms", "claim latency, 100,000 in a full queue, p99", "ms"),
                  ("first_claim_parks_s", "the claim that parks the 100,000 (once)", "s")],
}


def child(workload: str, dbname: str, quick: bool) -> None:
    result = asyncio.run(measure(workload, db_dsn(dbname), quick))
    print("RESULT " + json.dumps(result), flush=True)


def run_once(workload: str, quick: bool) -> dict[str, Any]:
    dbname = fresh_database(workload)
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__)), "--child", workload, dbname]
            + (["--quick"] if quick else []),
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), WERKFLUSS_LOG_LEVEL="warning"),
            capture_output=True, text=True, timeout=1800,
        )
    finally:
        drop_database(dbname)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{workload} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| workload | figure | median | min-max | unit |", "|---|---|---:|---:|---|"]
    for workload, reps in results.items():
        for key, label, unit in FIGURES[workload]:
            values = [r[key] for r in reps]
            lines.append(
                f"| {workload} | {label} | {statistics.median(values):,.2f} | "
                f"{min(values):,.2f}-{max(values):,.2f} | {unit} |"
            )
    return "\n".join(lines)


def environment() -> str:
    with psycopg.connect(SERVER_DSN) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync','synchronous_commit','shared_buffers','max_connections','commit_delay')"
        ).fetchall())
    return (
        f"- date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
        f"- host: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n"
        f"- postgres: {version}\n"
        f"- settings: {', '.join(f'{k}={v}' for k, v in sorted(settings.items()))}"
    )


def run_peers(out: Path, quick: bool, reps: int) -> None:
    """DBOS, Absurd, pgqueuer and werkfluss in the peers' own harness, same machine, same run."""
    python = Path(os.environ.get("BENCH_PYTHON", "/tmp/ve_peers/bin/python"))
    if not python.exists():
        subprocess.run(["bash", str(PEERS / "setup.sh"), str(python.parent.parent)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", str(ROOT)], check=True)
    cmd = ["bash", str(PEERS / "run_all.sh"), "--only", "postgres", "dbos", "absurd", "pgqueuer",
           "werkfluss", "--reps", str(reps), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True, env=dict(os.environ, BENCH_PYTHON=str(python)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=WORKLOADS)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    parser.add_argument("--peers", action="store_true",
                        help="also run ../shared/peer-bench (DBOS, Absurd, pgqueuer) in this run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.quick)
        return
    results: dict[str, list[dict[str, Any]]] = {}
    for workload in args.only or WORKLOADS:
        for rep in range(args.reps):
            result = run_once(workload, args.quick)
            print(f"{workload} rep {rep + 1}: {json.dumps(result)}", file=sys.stderr, flush=True)
            results.setdefault(workload, []).append(result)
    report = f"# werkfluss benchmarks\n\n{table(results)}\n\n## Environment\n\n{environment()}\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    (args.out / f"results-{stamp}.md").write_text(report)
    (args.out / f"results-{stamp}.json").write_text(json.dumps(results, indent=2))
    if args.peers:
        run_peers(args.out, args.quick, args.reps)


if __name__ == "__main__":
    main()
