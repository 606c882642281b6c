"""werkfluss.flow: rates, rate limits, queues and start options, as written in code."""

from __future__ import annotations

import datetime as dt

import pytest

from werkfluss import InvalidArgument, Queue, RateLimit, RateLimitKeyError, StartOptions, step, workflow
from werkfluss.flow import parse_rate, parse_rate_limit, queue_name, registered_queues
from werkfluss.runs import describe_blocked
from werkfluss.runtime import commands as cmd
from werkfluss.testing import Simulation

from .simkit import error_type, failure, wf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/min", (100, 60.0)),
        ("100/minute", (100, 60.0)),
        ("10/s", (10, 1.0)),
        ("10 / sec", (10, 1.0)),
        ("1000/h", (1000, 3600.0)),
        ("5/30s", (5, 30.0)),
        ("2/1h30m", (2, 5400.0)),
        ("7/day", (7, 86400.0)),
        ("1/500ms", (1, 0.5)),
    ],
)
def test_rates_parse_as_a_count_per_period(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100", "is not a rate"),
        ("/min", "is not a rate"),
        ("-1/min", "is not a rate"),
        ("1.5/min", "is not a rate"),
        ("0/min", "the count must be from 1"),
        ("10/fortnight", "unknown unit 'fortnight'"),
        ("10/0s", "must be positive"),
        ("10/32d", "at most 31 days"),
    ],
)
def test_bad_rates_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_rate(text)


def test_a_rate_limit_is_a_name_and_a_rate() -> None:
    assert parse_rate_limit("api:100/min") == RateLimit("api", 100, 60.0)
    assert parse_rate_limit("partner:v2:5/s") == RateLimit("partner:v2", 5, 1.0)  # the last ':' splits
    limit = RateLimit("x", 1, 1.0)
    assert parse_rate_limit(limit) is limit
    assert str(RateLimit("api", 100, 60.0)) == "api:100/60s"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("100/min", "needs a name and a rate"),
        (":100/min", "the rate limit's name is empty"),
        ("api:lots", "is not a rate"),
        ("queue:x:1/s", "kept for the start rate limits of queues"),
        (100, "needs a name and a rate"),
    ],
)
def test_bad_rate_limits_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_rate_limit(value)  # type: ignore[arg-type]


def test_a_step_keeps_its_rate_limit_and_refuses_a_bad_one() -> None:
    @step(rate_limit="tests.unit.api:3/s")
    async def call() -> None: ...

    assert call.options.rate_limit == RateLimit("tests.unit.api", 3, 1.0)
    with pytest.raises(InvalidArgument, match="is not a rate"):
        step(rate_limit="api:often")


def test_a_queue_checks_its_limits() -> None:
    queue = Queue("tests.unit.q", concurrency=20, per_key=5, worker_concurrency=3, rate_limit="100/min",
                  priority_aging="30s")
    assert (queue.concurrency, queue.per_key, queue.worker_concurrency) == (20, 5, 3)
    assert queue.rate == (100, 60.0)
    assert queue.priority_aging == 30.0
    assert registered_queues()["tests.unit.q"] is queue
    assert repr(queue) == ("Queue('tests.unit.q', concurrency=20, per_key=5, worker_concurrency=3, "
                           "rate_limit='100/min')")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name=""), "the queue name is empty"),
        (dict(name=" q"), "starts or ends with whitespace"),
        (dict(name="q" * 256), "256 characters long"),
        (dict(name="q", concurrency=0), "concurrency must be a whole number from 1"),
        (dict(name="q", per_key=1.5), "per_key must be a whole number"),
        (dict(name="q", worker_concurrency=10_001),
         "worker_concurrency must be a whole number from 1 to 10,000"),
        (dict(name="q", rate_limit="fast"), "is not a rate"),
        (dict(name="q", priority_aging=0), "priority_aging must be positive"),
        (dict(name="q", priority_aging="2d"), "at most a day"),
    ],
)
def test_bad_queues_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Queue(**kwargs)  # type: ignore[arg-type]


def test_one_name_one_set_of_limits_per_process() -> None:
    first = Queue("tests.unit.same", concurrency=2)
    Queue("tests.unit.same", concurrency=2)  # the same declaration again (a module imported twice)
    with pytest.raises(InvalidArgument, match="already declared in this process with other limits"):
        Queue("tests.unit.same", concurrency=3)
    assert registered_queues()["tests.unit.same"].limits == first.limits


def test_a_workflow_knows_its_queue() -> None:
    queue = Queue("tests.unit.wfq")

    @workflow(name="tests.unit.queued", queue=queue)
    async def queued() -> None: ...

    @workflow(name="tests.unit.by_name", queue="tests.unit.wfq")
    async def by_name() -> None: ...

    assert queued.queue_name == by_name.queue_name == "tests.unit.wfq"
    with pytest.raises(InvalidArgument, match="the queue name is empty"):
        workflow(name="tests.unit.bad_queue", queue="")


def test_start_options_accept_what_the_sql_door_accepts() -> None:
    when = dt.datetime(2030, 1, 1, 2, tzinfo=dt.UTC)
    options = StartOptions(queue="q", concurrency_key="customer-42", priority=1_000_000, start_at=when)
    assert (options.queue_name, options.concurrency_key, options.priority) == ("q", "customer-42", 1_000_000)
    assert StartOptions(delay="10m").delay_seconds == 600.0
    assert StartOptions(debounce="30s", concurrency_key=42).concurrency_key == "42"  # type: ignore[arg-type]
    assert StartOptions(debounce="30s").debounce_seconds == 30.0
    assert queue_name(None) is None


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (None, None),
        ({"kind": "key", "key": "customer-42", "held": 5, "limit": 5}, "key customer-42 at 5/5"),
        ({"kind": "queue", "queue": "exports", "held": 20, "limit": 20}, "queue exports at 20/20"),
        ({"kind": "scheduled", "at": "2030-01-01T02:00:00+00:00"}, "scheduled for 2030-01-01 02:00:00 UTC"),
        ({"kind": "rate", "name": "queue exports", "until": "2030-01-01T12:00:03+00:00"},
         "rate limit queue exports until 2030-01-01 12:00:03 UTC"),
        ({"kind": "rate", "name": "queue exports key customer-42", "queue": "exports", "key": "customer-42",
          "until": "2030-01-01T12:00:03+00:00"},
         "rate limit queue exports key customer-42 until 2030-01-01 12:00:03 UTC"),
        ({"kind": "worker_limit", "queue": "exports", "limit": 2},
         "queue exports at its limit of 2 per worker on every worker serving it"),
    ],
)
def test_why_a_run_waits_reads_as_a_sentence(reason: dict[str, object] | None, text: str | None) -> None:
    assert describe_blocked(reason) == text


def test_a_time_today_is_shown_as_the_time_of_day() -> None:
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0)
    text = describe_blocked({"kind": "scheduled", "at": soon.isoformat()})
    assert text == f"scheduled for {soon.strftime('%H:%M:%S')} UTC"


# --- rate limits per key ---------------------------------------------------------------------


def test_a_key_has_a_bucket_of_its_own_named_after_the_limit_and_the_key() -> None:
    limit = RateLimit("api", 100, 60.0)
    assert limit.keyed("customer-42") == RateLimit("api[customer-42]", 100, 60.0)
    assert limit.keyed(42).name == "api[42]"
    assert limit.keyed("a]b[c").name == "api[a]b[c]"  # the name ends at the first '['


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "is None"), ("", "is empty"), (" ", "is empty"), ("k" * 256, "256 characters long"),
     (True, "must be a string, not bool"), (1.5, "must be a string, not float")],
)
def test_a_bad_rate_limit_key_is_refused(key: object, message: str) -> None:
    with pytest.raises(RateLimitKeyError, match=message):
        RateLimit("api", 1, 1.0).keyed(key)


@pytest.mark.parametrize("name", ["api[eu]", "api]", "a[b"])
def test_names_of_rate_limits_and_queues_have_no_brackets(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"contains '\[' or '\]', which name the token buckets of keys"):
        parse_rate_limit(f"{name}:5/s")
    with pytest.raises(InvalidArgument, match=r"the queue name .* contains '\[' or '\]'"):
        Queue(name)


def test_a_queue_may_limit_the_starts_of_each_key() -> None:
    queue = Queue("tests.unit.keyrate", per_key=5, key_rate_limit="10/min")
    assert queue.key_rate == (10, 60.0)
    assert queue.rate is None
    assert repr(queue) == "Queue('tests.unit.keyrate', per_key=5, key_rate_limit='10/min')"
    with pytest.raises(InvalidArgument, match="already declared in this process with other limits"):
        Queue("tests.unit.keyrate", per_key=5, key_rate_limit="11/min")
    with pytest.raises(InvalidArgument, match="the queue's key_rate_limit 'often' is not a rate"):
        Queue("tests.unit.keyrate2", key_rate_limit="often")


def test_a_rate_limit_key_needs_a_rate_limit_and_a_plain_function() -> None:
    with pytest.raises(InvalidArgument, match="rate_limit_key needs rate_limit"):
        step(rate_limit_key=lambda customer: customer)

    async def key_of(customer: str) -> str:
        return customer

    for bad in (key_of, "customer"):
        with pytest.raises(InvalidArgument, match="rate_limit_key must be a plain"):
            step(rate_limit="api:1/s", rate_limit_key=bad)  # type: ignore[arg-type]


@step(name="tests.unit.keyed_call", rate_limit="tests.unit.keyed:2/s",
      rate_limit_key=lambda customer, path="/": customer)
async def keyed_call(customer: object, path: str = "/") -> str:
    return f"{customer}{path}"


async def test_a_step_call_takes_its_tokens_from_the_bucket_of_its_key() -> None:
    async def flow() -> list[str]:
        return [await keyed_call("c-1", "/a"), await keyed_call(7, path="/b"), await keyed_call("c-1")]

    run = Simulation().start(wf(flow))
    limits = []
    for seq in (1, 2, 3):
        (command,) = [c for c in run.commands if isinstance(c, cmd.ExecuteStep) and c.seq == seq]
        limits.append(command.rate_limit)
        run.complete_step(seq, await keyed_call.fn(*command.args, **command.kwargs))
    assert run.result() == ["c-1/a", "7/b", "c-1/"]
    assert limits == [RateLimit("tests.unit.keyed[c-1]", 2, 1.0), RateLimit("tests.unit.keyed[7]", 2, 1.0),
                      RateLimit("tests.unit.keyed[c-1]", 2, 1.0)]


@pytest.mark.parametrize(
    ("customer", "message"),
    [
        ({"id": 1}, "returned {'id': 1}; it must return a non-blank string or an int"),
        ("", "returned ''; it must return a non-blank string or an int"),
        (None, "returned None; it must return a non-blank string or an int"),
    ],
)
async def test_a_bad_key_fails_the_run_at_the_step_call(customer: object, message: str) -> None:
    async def flow() -> str:
        return await keyed_call(customer)

    run = Simulation().start(wf(flow))
    assert error_type(run) == "werkfluss.errors.RateLimitKeyError"
    assert message in failure(run)["message"]
    assert "tests.unit.keyed_call" in failure(run)["message"]
    assert run.log == []  # nothing recorded: the call never happened


async def test_a_key_function_that_raises_fails_the_run_with_the_reason() -> None:
    def no_key(customer: dict[str, str]) -> str:
        return customer["id"]

    @step(name="tests.unit.raising_key", rate_limit="tests.unit.keyed:2/s", rate_limit_key=no_key)
    async def call(customer: dict[str, str]) -> None: ...

    async def flow() -> str:
        try:
            await call({"name": "ada"})
        except RateLimitKeyError as err:  # the workflow may catch it, like any error of its code
            return str(err)
        return "no error"

    run = Simulation().start(wf(flow))
    assert run.result() == (
        "the rate_limit_key of step tests.unit.raising_key raised KeyError: 'id'; it is called with the "
        "step's arguments and must return the key (a string or an int)")
