"""The workflows the chaos suite's worker processes serve.

``python -m werkfluss.worker --app tests.chaos.app`` with
``$WERKFLUSS_CHAOS_EFFECTS_DSN`` pointing at the database *directly* (not
through the faulty proxy the workers use).

Every step body first writes a row to ``chaos.effects`` — run, seq, attempt,
the worker's pid, a nonce unique to this execution, and the moment the body
started on ``CLOCK_MONOTONIC`` (one clock for every process on the machine,
even for a worker whose wall clock is skewed by faketime) — and only then does
its work. It returns ``{"v": value, "x": nonce, "pid": pid}``, so the log says
which execution was recorded, and every workflow returns
``{"value": ..., "trace": [the nonces it consumed], "pid": ...}``, so the
result says which outputs the workflow actually went on with and which worker
finished it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from typing import Any

import psycopg

from werkfluss import FatalError, RunFailed, StepInfo, hook, sleep, step, step_info, workflow

from . import plan

EFFECTS_DSN_ENV = "WERKFLUSS_CHAOS_EFFECTS_DSN"

EFFECTS_DDL = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.effects (
    id           bigserial PRIMARY KEY,
    run_id       text NOT NULL,
    seq          integer NOT NULL,
    attempt      integer NOT NULL,
    step         text NOT NULL,
    pid          integer NOT NULL,
    nonce        text NOT NULL UNIQUE,
    started_mono double precision NOT NULL,   -- CLOCK_MONOTONIC when the body started
    client_wall  double precision NOT NULL,   -- the worker's own time.time() (skewed under faketime)
    written_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS effects_run_seq_idx ON chaos.effects (run_id, seq);
"""

_INSERT = """
INSERT INTO chaos.effects (run_id, seq, attempt, step, pid, nonce, started_mono, client_wall)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (nonce) DO NOTHING
"""


class _EffectsWriter:
    """One direct connection per worker process; a write is retried until it lands
    (a restarted server makes it wait, never fail: the body is simply in flight longer).
    The nonce is unique, so a retried insert whose first try committed adds nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def write(self, row: tuple[Any, ...]) -> None:
        deadline = time.monotonic() + 300
        with self._lock:
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(
                            os.environ[EFFECTS_DSN_ENV], autocommit=True, connect_timeout=3,
                            application_name="chaos-effects",
                        )
                    self._conn.execute(_INSERT, row)
                    return
                except psycopg.Error:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    _pause(0.05)


_WRITER = _EffectsWriter()


def _pause(seconds: float) -> None:
    """Block this thread for a while. Not ``time.sleep``: under libfaketime with a real
    monotonic clock (the skewed workers) it fails with EINVAL (``clock_nanosleep``
    with an absolute deadline), which would blame the engine for the harness."""
    threading.Event().wait(seconds)


def _row(started: float) -> tuple[tuple[Any, ...], str, StepInfo]:
    info = step_info()
    nonce = secrets.token_hex(8)
    row = (info.run_id, info.seq, info.attempt, info.step, os.getpid(), nonce, started, time.time())
    return row, nonce, info


def _begin() -> tuple[str, StepInfo]:
    """In a sync step: record that this body started; returns its nonce and step info."""
    started = time.monotonic()
    row, nonce, info = _row(started)
    _WRITER.write(row)
    return nonce, info


async def _abegin() -> tuple[str, StepInfo]:
    """In an async step: record that this body started (the write runs in a thread)."""
    started = time.monotonic()
    row, nonce, info = _row(started)
    await asyncio.to_thread(_WRITER.write, row)
    return nonce, info


def _out(value: Any, nonce: str) -> dict[str, Any]:
    return {"v": value, "x": nonce, "pid": os.getpid()}


def _result(value: Any, trace: list[Any]) -> dict[str, Any]:
    return {"value": value, "trace": trace, "pid": os.getpid()}


# -- chain ------------------------------------------------------------------------------

@step(name="chaos.chain_step")
async def chain_step(n: int, i: int, acc: int) -> dict[str, Any]:
    nonce, _ = await _abegin()
    await asyncio.sleep(0.015)
    return _out(plan.chain_next(n, i, acc), nonce)


@workflow(name="chaos.chain")
async def chain(n: int) -> dict[str, Any]:
    acc, trace = n, []
    for i in range(1, plan.CHAIN_LENGTH + 1):
        out = await chain_step(n, i, acc)
        acc = out["v"]
        trace.append(out["x"])
    return _result(acc, trace)


# -- fanout -----------------------------------------------------------------------------

@step(name="chaos.fan_step")
def fan_step(n: int, i: int) -> dict[str, Any]:
    nonce, _ = _begin()
    _pause(0.01)
    return _out(plan.fan_value(n, i), nonce)


@workflow(name="chaos.fanout")
async def fanout(n: int) -> dict[str, Any]:
    outs = await asyncio.gather(*(fan_step(n, i) for i in range(plan.FAN_WIDTH)))
    return _result(sum(o["v"] for o in outs), [o["x"] for o in outs])


# -- flaky ------------------------------------------------------------------------------

@step(name="chaos.flaky_step", retries=plan.FLAKY_RETRIES, retry_delay="50ms", backoff=1.0)
async def flaky_step(n: int, i: int, failures: int) -> dict[str, Any]:
    nonce, info = await _abegin()
    await asyncio.sleep(0.01)
    if info.attempt <= failures:
        raise ValueError(f"flaky {n}/{i} attempt {info.attempt} [{nonce}]")
    return _out(plan.flaky_step_value(n, i), nonce)


@step(name="chaos.hopeless_step", retries=plan.HOPELESS_RETRIES, retry_delay="50ms")
def hopeless_step(n: int) -> None:
    nonce, _ = _begin()
    raise ValueError(f"{plan.hopeless_message(n)} [{nonce}]")


@workflow(name="chaos.flaky")
async def flaky(n: int) -> dict[str, Any]:
    total, trace = 0, []
    for i in range(1, plan.FLAKY_STEPS + 1):
        out = await flaky_step(n, i, plan.flaky_failures(n, i))
        total += out["v"]
        trace.append(out["x"])
    mode = plan.flaky_mode(n)
    if mode == "fails":
        await hopeless_step(n)  # raises: the run fails with the step's error
    recovered = False
    if mode == "recovers":
        try:
            await hopeless_step(n)
        except ValueError as err:
            recovered = True
            trace.append(str(err))
    return _result({"total": total, "recovered": recovered}, trace)


# -- sleeper ----------------------------------------------------------------------------

@step(name="chaos.nap_step")
async def nap_step(n: int, k: int) -> dict[str, Any]:
    nonce, _ = await _abegin()
    return _out(n + k, nonce)


@workflow(name="chaos.sleeper")
async def sleeper(n: int) -> dict[str, Any]:
    first, second = plan.sleeper_naps(n)
    a = await nap_step(n, 0)
    await sleep(first)
    b = await nap_step(n, 1)
    await sleep(second)
    c = await nap_step(n, 2)
    return _result([a["v"], b["v"], c["v"]], [a["x"], b["x"], c["x"]])


# -- approval ---------------------------------------------------------------------------

@step(name="chaos.approval_step")
async def approval_step(n: int, phase: str) -> dict[str, Any]:
    nonce, _ = await _abegin()
    return _out(n * 3, nonce)


@workflow(name="chaos.approval")
async def approval(n: int) -> dict[str, Any]:
    h = hook(token=plan.approval_token(n))
    before = await approval_step(n, "before")
    payload, timed_out = None, False
    if plan.approval_mode(n) == "timeout":
        try:
            payload = await h.wait(timeout=plan.APPROVAL_TIMEOUT)
        except TimeoutError:
            timed_out = True
    else:
        payload = await h.wait()
    after = await approval_step(n, "after")
    return _result({"payload": payload, "timed_out": timed_out, "after": after["v"]},
                   [before["x"], after["x"]])


# -- parent and kids --------------------------------------------------------------------

@step(name="chaos.kid_step")
async def kid_step(n: int, j: int, k: int) -> dict[str, Any]:
    nonce, _ = await _abegin()
    await asyncio.sleep(0.01)
    return _out(plan.kid_value(n, j), nonce)


@step(name="chaos.kid_refuses")
async def kid_refuses(n: int, j: int) -> None:
    nonce, _ = await _abegin()
    raise FatalError(f"{plan.kid_message(n, j)} [{nonce}]")


@workflow(name="chaos.kid")
async def kid(n: int, j: int) -> dict[str, Any]:
    a = await kid_step(n, j, 0)
    await sleep(0.3)
    if plan.kid_fails(n, j):
        await kid_refuses(n, j)
    b = await kid_step(n, j, 1)
    return _result(b["v"], [a["x"], b["x"]])


@step(name="chaos.parent_step")
async def parent_step(n: int, total: int) -> dict[str, Any]:
    nonce, _ = await _abegin()
    return _out(total, nonce)


@workflow(name="chaos.parent")
async def parent(n: int) -> dict[str, Any]:
    first = await asyncio.gather(*(kid(n, j) for j in range(plan.KIDS - 1)))
    values = [r["value"] for r in first]
    failed = False
    last = plan.KIDS - 1
    if plan.kid_fails(n, last):
        try:
            await kid(n, last)
        except RunFailed:
            failed = True
    else:
        values.append((await kid(n, last))["value"])
    out = await parent_step(n, sum(values))
    return _result({"kids": values, "failed_kid": failed, "total": out["v"]}, [out["x"]])


# -- doomed (cancelled by the test) -----------------------------------------------------

@step(name="chaos.doomed_step")
async def doomed_step(n: int) -> dict[str, Any]:
    nonce, _ = await _abegin()
    await asyncio.sleep(0.3)
    return _out(n, nonce)


@workflow(name="chaos.doomed_kid")
async def doomed_kid(n: int) -> Any:
    return await hook(token=plan.doomed_token(n)).wait()


@workflow(name="chaos.doomed")
async def doomed(n: int) -> dict[str, Any]:
    a = await doomed_step(n)
    if plan.doomed_waits_on_child(n):
        await doomed_kid(n)
    else:
        await sleep(3600)
    b = await doomed_step(n)
    return _result(n, [a["x"], b["x"]])
