"""The sender: a separate process that answers the approval runs' hooks with
``SELECT werkfluss.send(token, payload)``, through the same faulty proxy as the
workers, retrying until a call returns.

    python -m tests.chaos.sender --dsn URL --plan plan.json --out result.json

``plan.json``: ``{"early": [[token, payload], ...], "late": [[token, payload, seconds], ...]}``.
The early payloads are sent first (before their runs exist); then it prints
``early-done`` and waits for ``go T0`` on stdin (T0: the workload's start, Unix
time); each late payload is sent ``seconds`` after T0. At the end it writes,
per token, every attempt and its outcome, and prints ``done``.

Outcomes: ``delivered`` (a call returned true); ``refused-after-error`` (a call
failed without an answer — it may have committed — and a retry returned false);
``refused`` (the first answer was false: a payload was turned away that should
have been kept); ``gave-up`` (no answer within the time limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ATTEMPT_TIMEOUT = 3.0
GIVE_UP_AFTER = 180.0


async def _attempt(dsn: str, token: str, payload: Any) -> bool:
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=2, application_name="chaos-sender")
    try:
        cur = await conn.execute("SELECT werkfluss.send(%s, %s)", [token, Jsonb(payload)])
        row = await cur.fetchone()
        return bool(row and row[0])
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 1)


async def send(dsn: str, token: str, payload: Any) -> dict[str, Any]:
    attempts: list[list[Any]] = []
    errored = False
    began = time.monotonic()
    while time.monotonic() - began < GIVE_UP_AFTER:
        try:
            delivered = await asyncio.wait_for(_attempt(dsn, token, payload), ATTEMPT_TIMEOUT)
        except Exception as err:  # a timeout, a reset, a restarting server: try again
            attempts.append(["error", time.time(), f"{type(err).__name__}: {err}"[:200]])
            errored = True
            await asyncio.sleep(0.1)
            continue
        attempts.append([str(delivered).lower(), time.time()])
        outcome = "delivered" if delivered else "refused-after-error" if errored else "refused"
        return {"outcome": outcome, "attempts": attempts}
    return {"outcome": "gave-up", "attempts": attempts}


async def main_async(dsn: str, plan: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    early = await asyncio.gather(*(send(dsn, token, payload) for token, payload in plan["early"]))
    for (token, _), result in zip(plan["early"], early, strict=True):
        results[token] = dict(result, phase="early")
    print("early-done", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    t0 = float(line.split()[1])

    async def late(token: str, payload: Any, at: float) -> None:
        await asyncio.sleep(max(0.0, t0 + at - time.time()))
        results[token] = dict(await send(dsn, token, payload), phase="late")

    await asyncio.gather(*(late(token, payload, at) for token, payload, at in plan["late"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = asyncio.run(main_async(args.dsn, json.loads(Path(args.plan).read_text())))
    Path(args.out).write_text(json.dumps(results))
    print("done", flush=True)


if __name__ == "__main__":
    main()
