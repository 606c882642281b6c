"""Workflows in limited queues, served by worker processes in test_flow_workers.py.

Each step body records when it ran (by the database's clock) in
``test_flow_bodies``, so the test can check, independently of the queue
table, how many bodies of a queue or key ever ran at once, or began in a
second.
"""

from __future__ import annotations

import asyncio
import os

import psycopg

from werkfluss import Queue, step, step_info, workflow

EXPORTS = Queue("tests.flowapp.exports", concurrency=4, per_key=2, worker_concurrency=2,
                priority_aging="100ms")
# At most 4 starts a second per key, and 3 calls a second per key of the step below.
SYNCS = Queue("tests.flowapp.syncs", key_rate_limit="4/s")

BODIES_DDL = """
CREATE TABLE IF NOT EXISTS test_flow_bodies (
    id       bigserial PRIMARY KEY,
    run_id   text NOT NULL,
    key      text NOT NULL,
    pid      integer NOT NULL,
    started  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished timestamptz
)"""


async def _record(key: str, seconds: float) -> None:
    run_id = step_info().run_id
    dsn = os.environ["WERKFLUSS_TEST_DSN"]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO test_flow_bodies (run_id, key, pid) VALUES (%s, %s, %s) RETURNING id",
            [run_id, key, os.getpid()])
        row = await cur.fetchone()
        assert row is not None
        await asyncio.sleep(seconds)
        await conn.execute("UPDATE test_flow_bodies SET finished = clock_timestamp() WHERE id = %s", [row[0]])


@step(name="tests.flowapp.work")
async def work(key: str, seconds: float) -> str:
    await _record(key, seconds)
    return key


@step(name="tests.flowapp.call", rate_limit="tests.flowapp.api:3/s", rate_limit_key=lambda key, n: key)
async def call(key: str, n: int) -> int:
    await _record(key, 0)
    return n


@workflow(name="tests.flowapp.export", queue=EXPORTS)
async def export(key: str, seconds: float) -> str:
    return await work(key, seconds)


@workflow(name="tests.flowapp.sync", queue=SYNCS)
async def sync(key: str, calls: int) -> int:
    return sum(await asyncio.gather(*(call(key, n) for n in range(calls))))
