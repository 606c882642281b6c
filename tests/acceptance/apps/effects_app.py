"""Workflows whose steps leave a trace in a table: what ran, where, and when.

Served by worker *processes* in the acceptance tests
(``python -m werkfluss.worker --app tests.acceptance.apps.effects_app``).
"""

from __future__ import annotations

import os
import time

import psycopg

from werkfluss import hook, race, sleep, step, step_info, workflow

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS test_effects (
    id          bigserial PRIMARY KEY,
    run_id      text NOT NULL,
    seq         integer NOT NULL,
    tag         text NOT NULL,
    pid         integer NOT NULL,
    key         text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""


def _dsn() -> str:
    return os.environ["WERKFLUSS_TEST_DSN"]


def record_effect(tag: str, seconds: float) -> None:
    """Insert a row when the body starts, do the 'work', stamp the end."""
    info = step_info()
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        (row_id,) = conn.execute(
            "INSERT INTO test_effects (run_id, seq, tag, pid, key) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id",
            [info.run_id, info.seq, tag, os.getpid(), info.idempotency_key],
        ).fetchone()  # type: ignore[misc]
        time.sleep(seconds)  # the step's work
        conn.execute("UPDATE test_effects SET finished_at = clock_timestamp() WHERE id = %s", [row_id])


@step
def effect(tag: str, seconds: float) -> str:
    record_effect(tag, seconds)
    return tag


@workflow(name="tests.effects.ten_steps")
async def ten_steps(seconds: float) -> list[str]:
    return [await effect(f"step-{i}", seconds) for i in range(1, 11)]


@workflow(name="tests.effects.one_step")
async def one_step(seconds: float) -> str:
    return await effect("only", seconds)


@workflow(name="tests.effects.two_steps")
async def two_steps(first_seconds: float) -> list[str]:
    return [await effect("first", first_seconds), await effect("second", 0)]


@workflow(name="tests.effects.race_then_work")
async def race_then_work(token: str) -> list[object]:
    approval = hook(token=token)
    index, value = await race(approval.wait(), sleep(0.3))
    await effect("after-race", 1.0)
    return [index, value]


@workflow(name="tests.effects.nap")
async def nap(seconds: float) -> str:
    await effect("before", 0)
    await sleep(seconds)
    await effect("after", 0)
    return "rested"


@workflow(name="tests.effects.chaos")
async def chaos(n: int) -> str:
    await effect(f"chaos-{n}-a", 0.05)
    await effect(f"chaos-{n}-b", 0.05)
    await sleep(0.2)
    await effect(f"chaos-{n}-c", 0.05)
    await effect(f"chaos-{n}-d", 0)
    return f"chaos-{n}-done"


@workflow(name="tests.effects.timed_sleep")
async def timed_sleep(seconds: float) -> str:
    await effect("before-sleep", 0)
    await sleep(seconds)
    await effect("after-sleep", 0)
    return "woke"


@workflow(name="tests.effects.overrun")
async def overrun(seconds: float) -> str:
    await effect("overrun-start", 0)
    await sleep(seconds)  # longer than the run's timeout
    return "should have timed out"
