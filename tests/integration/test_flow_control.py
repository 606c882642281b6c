"""Queues, keys, priorities, delayed and debounced starts, rate limits: the
limits hold across workers and the waiting runs say why they wait.

Several in-process workers share one database here; the worker processes of
tests/integration/test_flow_workers.py add SIGKILLs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict

import pytest

from werkfluss import (
    Engine,
    InvalidArgument,
    Queue,
    QueueNotFound,
    StartOptions,
    sleep,
    step,
    workflow,
)

from ..helpers import HeldSampler, sql, sql_value, wait_until

LIMITED = Queue("tests.flow.limited", concurrency=2)
KEYED = Queue("tests.flow.keyed", per_key=1)
PER_WORKER = Queue("tests.flow.per_worker", worker_concurrency=1)
LINE = Queue("tests.flow.line", concurrency=1)
AGING = Queue("tests.flow.aging", concurrency=1, priority_aging="50ms")
STARTS = Queue("tests.flow.starts", rate_limit="4/s")

RUNNING: dict[str, int] = defaultdict(int)
MOST: dict[str, int] = defaultdict(int)
ORDER: list[str] = []
GATES: dict[str, asyncio.Event] = {}
TIMES: list[float] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNNING.clear()
    MOST.clear()
    ORDER.clear()
    GATES.clear()
    TIMES.clear()


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


@step
async def hold(group: str, label: str, seconds: float) -> str:
    """Count the bodies running at once per group while this one runs."""
    RUNNING[group] += 1
    MOST[group] = max(MOST[group], RUNNING[group])
    ORDER.append(label)
    try:
        await asyncio.sleep(seconds)
        if label in GATES:
            await GATES[label].wait()
    finally:
        RUNNING[group] -= 1
    return label


@workflow(name="tests.flow.limited_work", queue=LIMITED)
async def limited_work(label: str) -> str:
    return await hold("limited", label, 0.03)


@workflow(name="tests.flow.keyed_work", queue=KEYED)
async def keyed_work(key: str, label: str) -> str:
    return await hold(f"key:{key}", label, 0.01)


@workflow(name="tests.flow.per_worker_work", queue=PER_WORKER)
async def per_worker_work(label: str) -> str:
    return await hold("per_worker", label, 0.03)


@workflow(name="tests.flow.line_work", queue=LINE)
async def line_work(label: str) -> str:
    return await hold("line", label, 0)


@workflow(name="tests.flow.aging_work", queue=AGING)
async def aging_work(label: str) -> str:
    return await hold("aging", label, 0)


@workflow(name="tests.flow.napper", queue=LIMITED)
async def napper(label: str, seconds: float) -> str:
    await hold("limited", f"{label}:before", 0)
    await sleep(seconds)
    return await hold("limited", f"{label}:after", 0)


@workflow(name="tests.flow.plain")
async def plain(label: str) -> str:
    return await hold("plain", label, 0)


@workflow(name="tests.flow.starts_work", queue=STARTS)
async def starts_work(label: str) -> str:
    TIMES.append(time.monotonic())
    return label


@step(rate_limit="tests.flow.api:4/s")
async def call_api(i: int) -> int:
    TIMES.append(time.monotonic())
    return i


@workflow(name="tests.flow.api_calls")
async def api_calls(n: int) -> list[int]:
    return list(await asyncio.gather(*(call_api(i) for i in range(n))))


async def _status(engine: Engine, run_id: str) -> str:
    return await engine.handle(run_id).status()


# --- concurrency limits ------------------------------------------------------------------


async def test_a_queue_never_holds_more_runs_than_its_concurrency_across_workers(
    engine: Engine, dsn: str
) -> None:
    handles = [await engine.start(limited_work, f"r{i}") for i in range(12)]
    with HeldSampler(dsn) as sampler:
        async with engine.worker(workflows=[limited_work], concurrency=5), \
                engine.worker(workflows=[limited_work], concurrency=5), \
                engine.worker(workflows=[limited_work], concurrency=5):
            results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert sorted(results) == sorted(f"r{i}" for i in range(12))
    assert MOST["limited"] == 2
    assert sampler.samples > 10
    assert sampler.max_queue["tests.flow.limited"] == 2


async def test_a_key_at_its_limit_waits_while_other_keys_go_ahead(engine: Engine, dsn: str) -> None:
    gate("a0")
    first = await engine.start(keyed_work, "a", "a0", options=StartOptions(concurrency_key="a"))
    others = [await engine.start(keyed_work, "a", f"a{i}", options=StartOptions(concurrency_key="a"))
              for i in range(1, 4)]
    b = await engine.start(keyed_work, "b", "b0", options=StartOptions(concurrency_key="b"))
    with HeldSampler(dsn) as sampler:
        async with engine.worker(workflows=[keyed_work], concurrency=10), \
                engine.worker(workflows=[keyed_work], concurrency=10):
            assert await b.result(timeout=10) == "b0"
            await wait_until(lambda: _status(engine, first.run_id), message="a0 running")
            blocked = await engine.handle(others[0].run_id).info()
            assert blocked.status == "pending"
            assert blocked.blocked_by == "key a at 1/1"
            assert blocked.queue == "tests.flow.keyed"
            assert blocked.concurrency_key == "a"
            # Parked: out of the line until a slot of the key frees.
            assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE parked") == 3
            GATES["a0"].set()
            assert [await h.result(timeout=10) for h in others] == ["a1", "a2", "a3"]
    assert ORDER == ["a0", "b0", "a1", "a2", "a3"] or ORDER[:2] == ["b0", "a0"]
    assert MOST["key:a"] == 1
    assert sampler.max_key[("tests.flow.keyed", "a")] == 1
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue") == 0


async def test_each_worker_holds_at_most_its_per_worker_limit(engine: Engine, dsn: str) -> None:
    handles = [await engine.start(per_worker_work, f"r{i}") for i in range(8)]
    with HeldSampler(dsn) as sampler:
        async with engine.worker(workflows=[per_worker_work], concurrency=5, worker_id="w1"), \
                engine.worker(workflows=[per_worker_work], concurrency=5, worker_id="w2"):
            await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert MOST["per_worker"] <= 2
    assert max(held for (queue, _), held in sampler.max_worker.items()
               if queue == "tests.flow.per_worker") == 1
    assert {worker for (queue, worker) in sampler.max_worker if queue == "tests.flow.per_worker"} \
        <= {"w1", "w2"}


async def test_sleeping_runs_hold_no_slot(engine: Engine) -> None:
    # LIMITED allows 2: two runs asleep, and a third still runs.
    sleepers = [await engine.start(napper, f"s{i}", 30) for i in range(2)]
    async with engine.worker(workflows=[napper, limited_work], concurrency=5):
        for handle in sleepers:
            await wait_until(lambda h=handle: _is(h, "sleeping"), message="asleep")
        third = await engine.start(limited_work, "third")
        assert await third.result(timeout=10) == "third"
    for handle in sleepers:
        await handle.cancel()


# --- priority ----------------------------------------------------------------------------


async def test_lower_priority_numbers_go_first_and_fifo_within_a_priority(engine: Engine) -> None:
    labels = [("p5-a", 5), ("p1-a", 1), ("p5-b", 5), ("p0-a", 0), ("p1-b", 1), ("p0-b", 0)]
    handles = [await engine.start(line_work, label, options=StartOptions(priority=p)) for label, p in labels]
    async with engine.worker(workflows=[line_work], concurrency=1):
        await asyncio.gather(*(h.result(timeout=10) for h in handles))
    assert ORDER == ["p0-a", "p0-b", "p1-a", "p1-b", "p5-a", "p5-b"]
    assert (await handles[0].info()).priority == 5


async def test_a_low_priority_run_is_not_starved_by_a_steady_stream_of_high_ones(engine: Engine) -> None:
    # AGING: one priority level weighs 50 ms of waiting. A run of priority 4
    # goes ahead of priority-0 runs that came more than 200 ms after it.
    low = await engine.start(aging_work, "low", options=StartOptions(priority=4))
    stream = [await engine.start(aging_work, f"early{i}") for i in range(3)]

    async def feed() -> None:
        for i in range(200):
            stream.append(await engine.start(aging_work, f"high{i}"))
            if await low.status() == "completed":
                return
            await asyncio.sleep(0.005)

    async with engine.worker(workflows=[aging_work], concurrency=1):
        await feed()
        assert await low.result(timeout=10) == "low"
    position = ORDER.index("low")
    assert 0 < position < len(stream)  # high ones went first, and low still got through


# --- delayed and debounced starts ----------------------------------------------------------


async def test_a_delayed_start_waits_and_says_when_it_will_start(engine: Engine) -> None:
    started = time.monotonic()
    handle = await engine.start(plain, "later", options=StartOptions(delay="700ms"))
    info = await handle.info()
    assert info.status == "pending"
    assert info.wake_at is not None
    assert (info.blocked_by or "").startswith("scheduled for ")
    async with engine.worker(workflows=[plain], poll_interval="60s"):
        assert await handle.result(timeout=10) == "later"
    assert time.monotonic() - started >= 0.7
    info = await handle.info()
    assert info.started_at is not None
    assert info.started_at >= info.created_at + dt.timedelta(seconds=0.7)


async def test_start_at_in_the_past_starts_at_once(engine: Engine) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    handle = await engine.start(plain, "now", options=StartOptions(start_at=past))
    async with engine.worker(workflows=[plain]):
        assert await handle.result(timeout=10) == "now"


async def test_a_burst_of_debounced_starts_becomes_one_run_with_the_last_arguments(
    engine: Engine, dsn: str
) -> None:
    options = StartOptions(debounce="400ms", debounce_key="c-42")
    async with engine.worker(workflows=[plain], poll_interval="60s"):
        handles = []
        for i in range(5):
            handles.append(await engine.start(plain, f"v{i}", options=options))
            await asyncio.sleep(0.05)
        assert len({h.run_id for h in handles}) == 1
        assert await handles[0].result(timeout=10) == "v4"
        # After the run started, the key starts a new burst.
        again = await engine.start(plain, "v5", options=options)
        assert again.run_id != handles[0].run_id
        assert await again.result(timeout=10) == "v5"
    assert ORDER == ["v4", "v5"]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 2


async def test_concurrent_debounced_starts_of_one_key_make_one_run(engine: Engine, dsn: str) -> None:
    options = StartOptions(debounce="5s")  # no key: the whole workflow
    handles = await asyncio.gather(*(engine.start(plain, f"v{i}", options=options) for i in range(8)))
    assert len({h.run_id for h in handles}) == 1
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 1


async def test_run_id_dedup_returns_the_first_start_with_its_delay(engine: Engine) -> None:
    first = await engine.start(plain, "one", run_id="flow:dedup", options=StartOptions(delay="1h"))
    again = await engine.start(plain, "two", run_id="flow:dedup")
    assert again.run_id == first.run_id
    info = await first.info()
    assert info.args == ["one"]
    assert (info.blocked_by or "").startswith("scheduled for ")


# --- rate limits -----------------------------------------------------------------------------


def _most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


async def test_a_step_rate_limit_is_shared_by_all_workers(engine: Engine, dsn: str) -> None:
    handles = [await engine.start(api_calls, 6) for _ in range(2)]
    started = time.monotonic()
    async with engine.worker(workflows=[api_calls], concurrency=5), \
            engine.worker(workflows=[api_calls], concurrency=5):
        assert [await h.result(timeout=30) for h in handles] == [list(range(6))] * 2
    # A bucket of 4 that refills 4 a second: 12 calls need two seconds.
    assert time.monotonic() - started >= 1.9
    assert len(TIMES) == 12
    assert _most_in_window(TIMES, 0.5) <= 4 + 2 + 1  # the bucket, half a second of refill, jitter
    assert sql(dsn, "SELECT capacity, period FROM werkfluss.rate_limits WHERE name = 'tests.flow.api'") \
        == [(4, 1.0)]
    # The waiting run said why it waited; nothing is left of it once done.
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs WHERE waiting_on IS NOT NULL") == 0


async def test_a_queue_start_rate_limit_spreads_the_starts(engine: Engine) -> None:
    handles = [await engine.start(starts_work, f"r{i}") for i in range(8)]
    async with engine.worker(workflows=[starts_work], concurrency=10):
        await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert len(TIMES) == 8
    assert max(TIMES) - min(TIMES) >= 0.9  # 4 at once, then 4 a second
    assert _most_in_window(TIMES, 0.2) <= 5


async def test_a_pending_run_behind_a_start_rate_limit_says_until_when(engine: Engine) -> None:
    handles = [await engine.start(starts_work, f"r{i}") for i in range(6)]
    async with engine.worker(workflows=[starts_work], concurrency=10, poll_interval="60s"):
        await handles[3].result(timeout=10)
        waiting = [await h.info() for h in handles[4:]]
    reasons = {w.blocked_by for w in waiting if w.status == "pending"}
    assert all(r is not None and r.startswith("rate limit queue tests.flow.starts until ") for r in reasons)


# --- visibility ------------------------------------------------------------------------------


async def test_a_full_queue_is_named_and_counted(engine: Engine) -> None:
    gate("g0")
    gate("g1")
    handles = [await engine.start(limited_work, f"g{i}") for i in range(3)]
    assert {r.blocked_by for r in await engine.runs(workflow=limited_work, status="pending")} == {None}
    async with engine.worker(workflows=[limited_work], concurrency=5):
        await wait_until(lambda: _count_running(engine), message="two running")
        (waiting,) = await engine.runs(workflow=limited_work, status="pending")
        assert waiting.run_id == handles[2].run_id
        assert waiting.blocked_by == "queue tests.flow.limited at 2/2"
        (queue,) = [q for q in await engine.queues() if q.name == "tests.flow.limited"]
        assert (queue.concurrency, queue.running, queue.ready, queue.depth) == (2, 2, 1, 1)
        GATES["g0"].set()
        GATES["g1"].set()
        await asyncio.gather(*(h.result(timeout=10) for h in handles))


async def _count_running(engine: Engine) -> bool:
    return len(await engine.runs(workflow=limited_work, status="running")) == 2


async def _is(handle: object, status: str) -> bool:
    return await handle.status() == status  # type: ignore[attr-defined]


# --- declaring ---------------------------------------------------------------------------------


async def test_a_worker_declares_its_queues_and_the_default_queues_of_its_workflows(
    engine: Engine, dsn: str
) -> None:
    async with engine.worker(workflows=[keyed_work]):
        pass
    assert sql(dsn, "SELECT per_key, concurrency FROM werkfluss.queues WHERE name = 'tests.flow.keyed'") \
        == [(1, None)]
    assert sql(dsn, "SELECT queue_name FROM werkfluss.workflow_queues"
                    " WHERE workflow = 'tests.flow.keyed_work' AND is_default") == [("tests.flow.keyed",)]
    # A run started from SQL by name goes to the workflow's queue.
    run_id = sql_value(dsn, "SELECT werkfluss.start_run('tests.flow.keyed_work', '[\"k\", \"x\"]',"
                            " concurrency_key => 'k')")
    assert sql(dsn, "SELECT queue_name, concurrency_key FROM werkfluss.runs WHERE id = %s", [run_id]) \
        == [("tests.flow.keyed", "k")]


async def test_starting_into_an_undeclared_queue_declares_the_queue_object(engine: Engine, dsn: str) -> None:
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queues") == 0
    handle = await engine.start(limited_work, "x")
    assert (await handle.info()).queue == "tests.flow.limited"
    assert sql(dsn, "SELECT concurrency FROM werkfluss.queues WHERE name = 'tests.flow.limited'") == [(2,)]
    with pytest.raises(QueueNotFound, match="no queue named 'nowhere'"):
        await engine.start(plain, "x", options=StartOptions(queue="nowhere"))


async def test_changing_a_queue_s_limits_is_reported_and_frees_parked_runs(engine: Engine, dsn: str) -> None:
    wide = Queue("tests.flow.keyed.redeclared", per_key=1)
    assert await engine.declare_queue(wide) == "created"
    assert await engine.declare_queue(wide) == "unchanged"
    sql(dsn, "SELECT werkfluss.start_run('tests.flow.plain', '[]', queue => 'tests.flow.keyed.redeclared',"
             " concurrency_key => 'k') FROM generate_series(1, 3)")
    sql(dsn, "UPDATE werkfluss.queue SET parked = true")
    assert sql_value(dsn, "SELECT werkfluss.declare_queue('tests.flow.keyed.redeclared', per_key => 3)") \
        == "changed"
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queue WHERE parked") == 0


async def test_a_dead_workers_runs_count_until_it_is_reaped(engine: Engine, dsn: str) -> None:
    first = await engine.start(keyed_work, "d", "d0", options=StartOptions(concurrency_key="d"))
    second = await engine.start(keyed_work, "d", "d1", options=StartOptions(concurrency_key="d"))
    # A worker that claimed the first run and died an hour ago.
    sql(dsn, """INSERT INTO werkfluss.workers
                       (id, host, pid, version, concurrency, lease_seconds, heartbeat_at)
                VALUES ('dead', 'elsewhere', 1, 'test', 1, 1, now() - interval '1 hour')""")
    sql(dsn, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'dead',
                       available_at = 'infinity', ready = false, claims = 1 WHERE run_id = %s""",
        [first.run_id])
    sql(dsn, "UPDATE werkfluss.runs SET status = 'running' WHERE id = %s", [first.run_id])
    # Until then, its key is full: the claim parks the second run.
    assert sql(dsn, "SELECT (run).id FROM werkfluss._claim(ARRAY['tests.flow.keyed_work'], 5, 'probe')") == []
    assert sql_value(dsn, "SELECT parked FROM werkfluss.queue WHERE run_id = %s", [second.run_id]) is True
    async with engine.worker(workflows=[keyed_work], lease="1s"):
        assert await first.result(timeout=10) == "d0"
        assert await second.result(timeout=10) == "d1"
    assert sql_value(dsn, "SELECT state FROM werkfluss.workers WHERE id = 'dead'") == "dead"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(priority=-1), "priority must be a whole number from 0"),
        (dict(priority=1_000_001), "priority must be a whole number from 0"),
        (dict(priority=True), "priority must be a whole number"),
        (dict(delay=-1), "delay must be zero or more"),
        (dict(delay="soon"), "is not a duration"),
        (dict(delay="1s", start_at=dt.datetime.now(dt.UTC)), "delay or start_at, not both"),
        (dict(start_at=dt.datetime(2030, 1, 1)), "has no time zone"),
        (dict(debounce="0s"), "debounce must be positive"),
        (dict(debounce_key="k"), "debounce_key needs debounce"),
        (dict(concurrency_key=" "), "concurrency_key is empty"),
        (dict(concurrency_key="k" * 256), "concurrency_key is 256 characters long"),
        (dict(queue=""), "the queue name is empty"),
        (dict(queue=42), "queue must be a Queue or a queue name"),
    ],
)
def test_bad_start_options_are_refused_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        StartOptions(**options)  # type: ignore[arg-type]


async def test_bad_starts_are_refused_before_the_database_is_touched(engine: Engine, dsn: str) -> None:
    with pytest.raises(InvalidArgument, match=r"options=StartOptions\(concurrency_key=...\)"):
        await engine.start(plain, "x", concurrency_key="c-42")
    with pytest.raises(InvalidArgument, match="concurrency_key needs a queue"):
        await engine.start(plain, "x", options=StartOptions(concurrency_key="c-42"))
    with pytest.raises(InvalidArgument, match="cannot choose its run_id"):
        await engine.start(plain, "x", run_id="r", options=StartOptions(debounce="1s"))
    with pytest.raises(InvalidArgument, match="options must be a werkfluss.StartOptions"):
        await engine.start(plain, "x", options={"priority": 1})  # type: ignore[arg-type]
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


SQL_ERRORS = [
    ("queue => ''", "the queue name is empty"),
    ("queue => repeat('q', 256)", "the queue name is 256 characters long"),
    ("queue => 'nowhere'", "no queue named 'nowhere'"),
    ("priority => -1", "priority must be from 0 (first) to 1000000, got -1"),
    ("priority => 1000001", "priority must be from 0 (first) to 1000000"),
    ("concurrency_key => 'k'", "concurrency_key needs a queue"),
    ("queue => 'tests.flow.sql', concurrency_key => ''", "concurrency_key is empty"),
    ("start_at => now(), delay => '1 minute'", "pass start_at or delay, not both"),
    ("start_at => 'infinity'", "start_at must be a finite time"),
    ("delay => '-1 minute'", "delay must not be negative"),
    ("debounce => '0'", "debounce must be positive"),
    ("debounce_key => 'k'", "debounce_key needs debounce"),
    ("run_id => 'r', debounce => '1 minute'", "a debounced start cannot choose its run_id"),
]


@pytest.mark.parametrize(("arguments", "message"), SQL_ERRORS)
def test_start_run_refuses_bad_flow_options_with_a_clear_error(
    dsn: str, arguments: str, message: str
) -> None:
    import psycopg

    sql(dsn, "SELECT werkfluss.declare_queue('tests.flow.sql')")
    with pytest.raises(psycopg.Error, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        sql(dsn, f"SELECT werkfluss.start_run('tests.flow.plain', '[]', {arguments})")
    assert caught.value.sqlstate in ("22023", "42704")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("NULL", "the queue name is NULL"),
        ("' '", "the queue name is empty"),
        ("'q', concurrency => 0", "concurrency must be from 1 to 1000000"),
        ("'q', per_key => -2", "per_key must be from 1 to 1000000"),
        ("'q', worker_concurrency => 10001", "worker_concurrency must be from 1 to 10000"),
        ("'q', rate_limit => 5", "rate_limit and rate_period go together"),
        ("'q', rate_limit => 0, rate_period => '1 second'", "rate_limit must be from 1"),
        ("'q', rate_limit => 5, rate_period => '-1 second'", "rate_period must be from"),
        ("'q', priority_aging => '0'", "priority_aging must be from"),
    ],
)
def test_declare_queue_refuses_bad_limits(dsn: str, arguments: str, message: str) -> None:
    import psycopg

    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        sql(dsn, f"SELECT werkfluss.declare_queue({arguments})")
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.queues") == 0


def test_positional_sql_starts_keep_working(dsn: str) -> None:
    run_id = sql_value(
        dsn, "SELECT werkfluss.start_run('tests.flow.plain', '[\"x\"]', 'flow:pos', '{}', '1 hour')")
    assert run_id == "flow:pos"
    assert sql(dsn, "SELECT queue_name, priority FROM werkfluss.runs WHERE id = 'flow:pos'") == [(None, 0)]


# --- the command line ------------------------------------------------------------------------


def test_the_cli_starts_into_queues_and_shows_queues_and_why_runs_wait(dsn: str) -> None:
    from ..helpers import run_cli

    sql(dsn, "SELECT werkfluss.declare_queue('tests.flow.cli', concurrency => 3, per_key => 1,"
             " key_rate_limit => 5, key_rate_period => '1 hour')")
    for i in range(2):
        started = run_cli("start", "tests.flow.plain", f'["c{i}"]', "--queue", "tests.flow.cli",
                          "--concurrency-key", "k", "--priority", "2", dsn=dsn)
        assert started.returncode == 0, started.stderr
    later = run_cli("start", "tests.flow.plain", "[]", "--queue", "tests.flow.cli", "--delay", "1h", dsn=dsn)
    assert later.returncode == 0, later.stderr
    # One run of the key holds a worker; the claim parks the other.
    sql(dsn, "SELECT (run).id FROM werkfluss._claim(ARRAY['tests.flow.plain'], 5, 'cli-worker')")

    queues = run_cli("queues", dsn=dsn)
    assert queues.returncode == 0, queues.stderr
    header, _, row = queues.stdout.strip().splitlines()
    assert header.split() == ["queue", "running", "per", "key", "per", "worker", "start", "rate", "key",
                              "start", "rate", "ready", "parked", "throttled", "scheduled", "suspended",
                              "keys", "at", "limit"]
    assert row.split() == ["tests.flow.cli", "1/3", "1", "-", "-", "5/3600s", "0", "1", "0", "1", "0", "1"]
    as_json = run_cli("queues", "--json", dsn=dsn)
    (queue,) = __import__("json").loads(as_json.stdout)
    assert (queue["running"], queue["parked"], queue["depth"]) == (1, 1, 2)

    runs = run_cli("runs", "--status", "pending", dsn=dsn)
    assert "key k at 1/1" in runs.stdout
    assert "scheduled for" in runs.stdout
    parked = sql_value(dsn, "SELECT run_id FROM werkfluss.queue WHERE parked")
    show = run_cli("show", parked, dsn=dsn)
    assert "queue:     tests.flow.cli" in show.stdout
    assert "key:       k" in show.stdout
    assert "priority:  2" in show.stdout
    assert "blocked by: key k at 1/1" in show.stdout


def test_the_cli_refuses_bad_start_options_with_one_line(dsn: str) -> None:
    from ..helpers import run_cli

    result = run_cli("start", "tests.flow.plain", "[]", "--priority", "-1", dsn=dsn)
    assert result.returncode == 1
    assert result.stderr.strip() == ("werkfluss: priority must be a whole number from 0 (first) to "
                                     "1,000,000, got -1")
    result = run_cli("start", "tests.flow.plain", "[]", "--queue", "nowhere", dsn=dsn)
    assert result.returncode == 1
    assert "no queue named 'nowhere'" in result.stderr
    assert sql_value(dsn, "SELECT count(*) FROM werkfluss.runs") == 0


def test_the_client_role_starts_runs_with_the_flow_options(dsn: str) -> None:
    from ..helpers import login_role

    sql(dsn, "SELECT werkfluss.declare_queue('tests.flow.client', per_key => 2)")
    with login_role(dsn, "werkfluss_client") as client:
        run_id = sql_value(client, """SELECT werkfluss.start_run('tests.flow.plain', '["c"]',
                                          queue => 'tests.flow.client', concurrency_key => 'k',
                                          priority => 3, delay => '1 hour')""")
        debounced = [sql_value(client, """SELECT werkfluss.start_run('tests.flow.plain', %s::jsonb,
                                              queue => 'tests.flow.client', debounce => '1 hour',
                                              debounce_key => 'd')""", [f'["{i}"]']) for i in range(3)]
        import psycopg

        with pytest.raises(psycopg.errors.InvalidParameterValue, match="priority must be from 0"):
            sql(client, "SELECT werkfluss.start_run('tests.flow.plain', '[]', priority => -5)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(client, "SELECT werkfluss.declare_queue('tests.flow.mine', concurrency => 1000)")
    assert sql(dsn, "SELECT queue_name, concurrency_key, priority, wake_at > now() FROM werkfluss.runs"
                    " WHERE id = %s", [run_id]) == [("tests.flow.client", "k", 3, True)]
    assert len(set(debounced)) == 1
    assert sql_value(dsn, "SELECT args FROM werkfluss.runs WHERE id = %s", [debounced[0]]) == ["2"]


def test_the_dashboard_shows_a_run_s_queue_and_why_it_waits(dsn: str) -> None:
    from starlette.testclient import TestClient

    from werkfluss.cli.dashboard.app import create_app

    sql(dsn, "SELECT werkfluss.declare_queue('tests.flow.dash', per_key => 1)")
    first, second = (sql_value(dsn, "SELECT werkfluss.start_run('tests.flow.plain', '[]',"
                                    " queue => 'tests.flow.dash', concurrency_key => 'k', priority => 2)")
                     for _ in range(2))
    sql(dsn, "SELECT (run).id FROM werkfluss._claim(ARRAY['tests.flow.plain'], 5, 'dash-worker')")
    with TestClient(create_app(Engine(dsn, pool_size=2), owns_engine=True)) as client:
        page = client.get(f"/runs/{second}")
    assert page.status_code == 200
    assert "tests.flow.dash" in page.text
    assert "key k" in page.text
    assert "priority 2" in page.text
    assert "key k at 1/1" in page.text
    assert first != second


def test_a_schedule_s_runs_go_to_the_queue_of_their_workflow(dsn: str) -> None:
    sql(dsn, "SELECT werkfluss.declare_queue('tests.flow.nightly', concurrency => 1)")
    sql(dsn, "SELECT werkfluss._declare_workflow_queue('tests.flow.plain', 'tests.flow.nightly')")
    sql(dsn, "SELECT werkfluss.create_schedule('flow-nightly', 'tests.flow.plain', '0 2 * * *')")
    run_id = sql_value(dsn, "SELECT werkfluss.trigger_schedule('flow-nightly')")
    assert sql(dsn, "SELECT r.queue_name, q.queue_name FROM werkfluss.runs r JOIN werkfluss.queue q"
                    " ON q.run_id = r.id WHERE r.id = %s", [run_id]) == [("tests.flow.nightly",) * 2]
