"""Rate limits per key: a bucket per key for steps (``rate_limit_key``) and for
the starts of each concurrency key of a queue (``key_rate_limit``).

Per key the rate holds across workers, other keys are not held back, a key
without a token costs the claims of other keys nothing, and waiting runs say
which key's bucket they wait for. Worker processes: test_flow_workers.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time
from collections import defaultdict

import psycopg
import pytest
from structlog.testing import capture_logs

from werkfluss import Engine, InvalidArgument, Queue, StartOptions, step, workflow

from ..helpers import sql, sql_value, wait_until

KEY_STARTS = Queue("tests.keyrate.starts", key_rate_limit="3/s")

CALLS: dict[str, list[float]] = defaultdict(list)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@step(name="tests.keyrate.call", rate_limit="tests.keyrate.api:3/s",
      rate_limit_key=lambda customer, i: customer)
async def call_api(customer: str, i: int) -> int:
    CALLS[customer].append(time.monotonic())
    return i


@workflow(name="tests.keyrate.calls")
async def customer_calls(customer: str, n: int) -> list[int]:
    return list(await asyncio.gather(*(call_api(customer, i) for i in range(n))))


@workflow(name="tests.keyrate.start", queue=KEY_STARTS)
async def key_start(label: str) -> str:
    return label


def _most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def _seconds(times: list[dt.datetime]) -> list[float]:
    return [t.timestamp() for t in times]


def _started(dsn: str, key: str) -> list[dt.datetime]:
    return [row[0] for row in sql(dsn, "SELECT started_at FROM werkfluss.runs WHERE concurrency_key = %s"
                                       " AND started_at IS NOT NULL ORDER BY started_at", [key])]


# --- steps -----------------------------------------------------------------------------------


async def test_a_keyed_step_rate_limit_holds_per_key_and_keys_do_not_wait_for_each_other(
    engine: Engine, dsn: str
) -> None:
    busy = [await engine.start(customer_calls, "a", 5) for _ in range(2)]
    quiet = await engine.start(customer_calls, "b", 3)
    started = time.monotonic()

    async def waits_for_a() -> bool:
        return bool(sql_value(dsn, "SELECT count(*) FROM werkfluss.runs"
                                   " WHERE waiting_on LIKE 'rate limit tests.keyrate.api[a] until %'"))

    with capture_logs() as logs:
        async with engine.worker(workflows=[customer_calls], concurrency=5), \
                engine.worker(workflows=[customer_calls], concurrency=5):
            # While a run waits for a token, it says which key's bucket.
            await wait_until(waits_for_a, timeout=10, message="a run waiting on the bucket of key a")
            assert await quiet.result(timeout=30) == [0, 1, 2]
            quiet_done = time.monotonic()
            assert [await h.result(timeout=30) for h in busy] == [list(range(5))] * 2
    # Ten calls of key a through a bucket of 3 that refills 3 a second: at least 7/3 s.
    assert len(CALLS["a"]) == 10
    assert max(CALLS["a"]) - started >= 2.2
    assert _most_in_window(CALLS["a"], 0.5) <= 3 + 2 + 1  # the bucket, half a second of refill, jitter
    # Key b has a bucket of its own: its three calls did not wait behind key a's.
    assert len(CALLS["b"]) == 3
    assert quiet_done - started < 1.5
    assert max(CALLS["b"]) < max(CALLS["a"]) - 1.0
    limited = {e["rate_limit"] for e in logs if e["event"] == "step.rate_limited"}
    assert limited == {"tests.keyrate.api[a]"}
    assert sql(dsn, "SELECT name, capacity, period FROM werkfluss.rate_limits ORDER BY name") == [
        ("tests.keyrate.api[a]", 3, 1.0), ("tests.keyrate.api[b]", 3, 1.0)]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs WHERE waiting_on IS NOT NULL") == 0


@step(name="tests.keyrate.bad_key", rate_limit="tests.keyrate.api:3/s",
      rate_limit_key=lambda customer: customer["id"])
async def call_with_bad_key(customer: dict[str, str]) -> str:
    return customer["id"]


@workflow(name="tests.keyrate.bad_key_calls")
async def bad_key_calls(customer: dict[str, str]) -> str:
    return await call_with_bad_key(customer)


async def test_a_key_function_that_fails_fails_only_its_run(engine: Engine, dsn: str) -> None:
    bad = await engine.start(bad_key_calls, {"name": "ada"})
    blank = await engine.start(bad_key_calls, {"id": " "})
    good = await engine.start(bad_key_calls, {"id": "c-7"})
    async with engine.worker(workflows=[bad_key_calls]):
        assert await good.result(timeout=10) == "c-7"
        failures = []
        for handle in (bad, blank):
            await wait_until(lambda h=handle: _has_ended(h), timeout=10, message="the run failing")
            failures.append((await handle.info()).error)
    assert [f["type"] for f in failures if f] == ["werkfluss.errors.RateLimitKeyError"] * 2
    assert failures[0] is not None
    assert failures[0]["message"] == (
        "the rate_limit_key of step tests.keyrate.bad_key raised KeyError: 'id'; it is called with the "
        "step's arguments and must return the key (a string or an int)")
    assert failures[1] is not None
    assert failures[1]["message"] == (
        "the rate_limit_key of step tests.keyrate.bad_key returned ' '; it must return a non-blank string "
        "or an int of at most 255 characters")
    # Nothing of the failed calls was recorded; the good one took a token of its key.
    assert await bad.steps() == []
    assert sql(dsn, "SELECT name FROM werkfluss.rate_limits") == [("tests.keyrate.api[c-7]",)]


async def _has_ended(handle: object) -> bool:
    return await handle.status() in ("completed", "failed")  # type: ignore[attr-defined]


# --- starts of each key of a queue ---------------------------------------------------------------


async def test_a_key_start_rate_limit_holds_per_key_across_workers_and_spares_other_keys(
    engine: Engine, dsn: str
) -> None:
    handles = [await engine.start(key_start, f"a{i}", options=StartOptions(concurrency_key="a"))
               for i in range(9)]
    handles += [await engine.start(key_start, f"b{i}", options=StartOptions(concurrency_key="b"))
                for i in range(3)]
    async with engine.worker(workflows=[key_start], concurrency=10), \
            engine.worker(workflows=[key_start], concurrency=10):
        await asyncio.gather(*(h.result(timeout=30) for h in handles))
    # Starts by the database's clock, which the buckets run on.
    a, b = _seconds(_started(dsn, "a")), _seconds(_started(dsn, "b"))
    assert len(a) == 9
    assert len(b) == 3
    # Three at once, then three a second: nine starts take two seconds.
    assert max(a) - min(a) >= 1.9
    for window in (0.25, 0.5, 1.0):
        assert _most_in_window(a, window) <= 3 + 3 * window + 0.001, window
    # Key b's starts had their own tokens: all at once, not behind key a's.
    assert max(b) - min(a + b) < 0.5
    assert sql(dsn, "SELECT name, capacity, period FROM werkfluss.rate_limits ORDER BY name") == [
        ("queue:tests.keyrate.starts[a]", 3, 1.0), ("queue:tests.keyrate.starts[b]", 3, 1.0)]


def _claim(dsn: str, workflow: str = "tests.keyrate.sql", lim: int = 10) -> list[str]:
    return [row[0] for row in sql(dsn, "SELECT (c.run).id FROM werkfluss._claim(%s, %s, 'probe') c",
                                  [[workflow], lim])]


def _start(dsn: str, run_id: str, key: str, queue: str = "tests.keyrate.sql") -> None:
    sql(dsn, "SELECT werkfluss.start_run('tests.keyrate.sql', '[]', %s, queue => %s, concurrency_key => %s)",
        [run_id, queue, key])


BUCKET_A = "SELECT tokens FROM werkfluss.rate_limits WHERE name = 'queue:tests.keyrate.sql[a]'"


async def test_a_key_without_a_token_waits_outside_the_line_each_start_until_its_token(
    engine: Engine, dsn: str
) -> None:
    assert sql_value(dsn, "SELECT werkfluss.declare_queue('tests.keyrate.sql', key_rate_limit => 2,"
                          " key_rate_period => '1 second')") == "created"
    for i in range(5):
        _start(dsn, f"a{i}", "a")
    _start(dsn, "b0", "b")
    _start(dsn, "free", None)  # type: ignore[arg-type]  # a run without a key: not limited per key
    assert sorted(_claim(dsn)) == ["a0", "a1", "b0", "free"]
    # The other starts of key a left the line, each until its token, in line order.
    aside = sql(dsn, "SELECT run_id, ready, extract(epoch FROM available_at - now()),"
                     "       throttled_until = available_at"
                     "  FROM werkfluss.queue WHERE lease_id IS NULL ORDER BY available_at")
    assert [(r[0], r[1], r[3]) for r in aside] == [("a2", False, True), ("a3", False, True),
                                                   ("a4", False, True)]
    waits = [r[2] for r in aside]
    assert 0.3 < waits[0] <= 0.5
    assert waits[1] - waits[0] == pytest.approx(0.5, abs=0.01)
    assert waits[2] - waits[1] == pytest.approx(0.5, abs=0.01)
    # Their tokens are reserved: the bucket is in debt by three.
    debt = sql_value(dsn, BUCKET_A)
    assert debt == pytest.approx(-3, abs=0.01)
    # Each says so, with the key and when.
    infos = {r.run_id: r for r in await engine.runs(status="pending")}
    assert {run_id: (info.blocked_by or "").rsplit(" until ", 1)[0] for run_id, info in infos.items()} == {
        run_id: "rate limit queue tests.keyrate.sql key a" for run_id in ("a2", "a3", "a4")}
    (queue,) = await engine.queues()
    assert (queue.key_rate_limit, queue.key_rate_period, queue.throttled, queue.scheduled, queue.ready) == (
        2, 1.0, 3, 0, 0)
    assert queue.depth == 3
    # Nothing more now; each comes back when its token does and takes no other.
    assert _claim(dsn) == []
    got: list[str] = []
    await wait_until(lambda: _fill(dsn, got, 1), timeout=5, message="a2 back in line")
    assert got == ["a2"]
    assert sql_value(dsn, BUCKET_A) == debt  # its token was the reserved one
    await wait_until(lambda: _fill(dsn, got, 3), timeout=5, message="a3 and a4")
    assert got == ["a2", "a3", "a4"]  # in the order they were started


async def _fill(dsn: str, got: list[str], n: int) -> bool:
    got.extend(_claim(dsn))
    return len(got) >= n


def test_changing_a_key_rate_limit_lets_the_waiting_starts_in(dsn: str) -> None:
    sql(dsn, "SELECT werkfluss.declare_queue('tests.keyrate.sql', key_rate_limit => 1,"
             " key_rate_period => '1 hour')")
    for i in range(4):
        _start(dsn, f"a{i}", "a")
    assert _claim(dsn) == ["a0"]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE throttled_until = available_at") == 3
    assert sql_value(dsn, "SELECT werkfluss.declare_queue('tests.keyrate.sql', key_rate_limit => 10,"
                          " key_rate_period => '1 hour')") == "changed"
    # Back in line at once, with a fresh bucket of the new size.
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE ready") == 3
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.rate_limits") == 0
    assert sorted(_claim(dsn)) == ["a1", "a2", "a3"]


async def test_a_key_with_thousands_of_starts_and_no_token_does_not_slow_the_claims_of_other_keys(
    dsn: str,
) -> None:
    sql(dsn, "SELECT werkfluss.declare_queue('tests.keyrate.sql', key_rate_limit => 1,"
             " key_rate_period => '1 hour')")

    def claim_times(prefix: str, n: int = 25) -> list[float]:
        times = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(n):
                conn.execute("SELECT werkfluss.start_run('tests.keyrate.sql', '[]', %s,"
                             " queue => 'tests.keyrate.sql', concurrency_key => %s)", [f"{prefix}{i}"] * 2)
                begun = time.perf_counter()
                claimed = conn.execute("SELECT (c.run).id FROM werkfluss._claim(ARRAY['tests.keyrate.sql'],"
                                       " 10, 'probe') c").fetchall()
                times.append(time.perf_counter() - begun)
                assert claimed == [(f"{prefix}{i}",)]
        return times

    before = statistics.median(claim_times("before-"))
    sql(dsn, "SELECT werkfluss.start_run('tests.keyrate.sql', '[]', 'hot-' || i,"
             " queue => 'tests.keyrate.sql', concurrency_key => 'hot') FROM generate_series(1, 5000) i")
    sql(dsn, "ANALYZE werkfluss.queue")
    # The claim that meets the key takes its one token and puts the rest aside, once.
    assert _claim(dsn) == ["hot-1"]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE ready AND concurrency_key = 'hot'") == 0
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE throttled_until = available_at") == 4999
    after = claim_times("after-")
    # A claim that looked at the 4,999 waiting starts would take tens of milliseconds or more.
    assert statistics.median(after) < max(3 * before, before + 0.005), (before, sorted(after))
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE throttled_until = available_at") == 4999


# --- declaring -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("'q', key_rate_limit => 5", "key_rate_limit and key_rate_period go together"),
        ("'q', key_rate_period => '1 minute'", "key_rate_limit and key_rate_period go together"),
        ("'q', key_rate_limit => 0, key_rate_period => '1 second'", "key_rate_limit must be from 1"),
        ("'q', key_rate_limit => 5, key_rate_period => '0'", "key_rate_period must be from"),
        ("'q', key_rate_limit => 5, key_rate_period => '32 days'", "key_rate_period must be from"),
        ("'q[eu]'", r"the queue name 'q\[eu\]' contains '\[' or '\]'"),
    ],
)
def test_declare_queue_refuses_bad_key_rate_limits(dsn: str, arguments: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        sql(dsn, f"SELECT werkfluss.declare_queue({arguments})")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queues") == 0


async def test_a_queue_s_key_rate_limit_is_declared_from_python_and_shown(engine: Engine, dsn: str) -> None:
    queue = Queue("tests.keyrate.declared", per_key=5, key_rate_limit="10/min")
    assert await engine.declare_queue(queue) == "created"
    assert sql(dsn, "SELECT per_key, key_rate_limit, key_rate_period FROM werkfluss.queues"
                    " WHERE name = 'tests.keyrate.declared'") == [(5, 10, 60.0)]
    assert await engine.declare_queue(queue) == "unchanged"
    with pytest.raises(InvalidArgument, match=r"contains '\[' or '\]'"):
        await engine.start(key_start, "x", options=StartOptions(queue="tests.keyrate[1]"))
