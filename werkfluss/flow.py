"""Flow control, as declared in code: queues, start options and rate limits.

    from werkfluss import Queue, StartOptions, step, workflow

    exports = Queue("exports", concurrency=20, per_key=5)   # runs holding a worker

    @workflow(queue=exports)
    async def export(customer: str) -> None: ...

    @step(rate_limit="api:100/min")       # one token bucket, shared by every worker
    async def call_api(path: str) -> dict: ...

    @step(rate_limit="api:10/s", rate_limit_key=lambda customer, path: customer)
    async def call_for(customer: str, path: str) -> dict: ...   # a bucket per customer

    await engine.start(export, "c-42", options=StartOptions(
        concurrency_key="c-42", priority=1, delay="10m"))

Queues live in the database (``werkfluss.queues``): every worker declares
the queues of the workflows it serves when it starts, so SQL starters and all
workers agree on their limits. The limits are enforced by the claim, in
PostgreSQL (see ``sql/migrations/0008_flow_control.sql`` and
``docs/howto/queues.md``).

    >>> parse_rate("100/min")
    (100, 60.0)
    >>> parse_rate_limit("api:10/s")
    RateLimit(name='api', limit=10, period=1.0)
    >>> parse_rate_limit("api:10/s").keyed("customer-42").name
    'api[customer-42]'
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from werkfluss.durations import Duration, optional_duration, parse_duration
from werkfluss.errors import InvalidArgument, RateLimitKeyError
from werkfluss.limits import check_name

#: Priorities go from 0 (first, the default) to this number.
MAX_PRIORITY = 1_000_000
#: The most runs a queue limit may allow (concurrency, per_key).
MAX_QUEUE_LIMIT = 1_000_000
#: The most runs a worker may hold of one queue (as its concurrency).
MAX_WORKER_LIMIT = 10_000
#: The most tokens a rate limit may give per period.
MAX_RATE = 1_000_000_000
#: The longest rate limit period (31 days) and priority aging step (1 day).
MAX_RATE_PERIOD = 31 * 86400.0
MAX_PRIORITY_AGING = 86400.0
#: Queue names and keys: at most this many characters (as run ids).
MAX_KEY_LENGTH = 255

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(.+?)\s*$")
_BARE_UNIT = re.compile(r"^[a-zA-Z]+$")


@dataclass(frozen=True)
class RateLimit:
    """``limit`` tokens per ``period`` seconds in the bucket called ``name``."""

    name: str
    limit: int
    period: float

    def __str__(self) -> str:
        return f"{self.name}:{self.limit}/{self.period:g}s"

    def keyed(self, key: Any) -> RateLimit:
        """The same limit in the bucket of ``key``: ``<name>[<key>]``.

        Names of rate limits (and of queues) contain no ``[``, so the bucket
        of a key never has the name of another limit. Raises
        :class:`RateLimitKeyError` for a key that is not a non-blank string
        or int of at most 255 characters.
        """
        try:
            key = check_key(key, "the rate limit key")
        except InvalidArgument as err:
            raise RateLimitKeyError(f"{err} (for rate limit {self.name!r})") from None
        return RateLimit(f"{self.name}[{key}]", self.limit, self.period)


def _no_brackets(name: str, what: str, example: str) -> str:
    if "[" in name or "]" in name:
        raise InvalidArgument(
            f"{what} {name!r} contains '[' or ']', which name the token buckets of keys "
            f"('<name>[<key>]'); use e.g. {example}"
        )
    return name


def parse_rate(text: str, *, what: str = "rate limit") -> tuple[int, float]:
    """``"100/min"`` → ``(100, 60.0)``; the period is a unit (``s``, ``min``,
    ``h``, ``day``) or a duration (``"5/30s"``, ``"1000/1h"``)."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a string like '100/min', not {type(text).__name__}")
    match = _RATE.match(text)
    if match is None:
        raise InvalidArgument(f"{what} {text!r} is not a rate; write e.g. '100/min', '10/s' or '5/30s'")
    count, period_text = int(match[1]), match[2]
    if _BARE_UNIT.match(period_text):
        period_text = "1" + period_text
    period = parse_duration(period_text, what=f"the period of {what} {text!r}", allow_zero=False)
    if not 1 <= count <= MAX_RATE:
        raise InvalidArgument(f"{what} {text!r}: the count must be from 1 to {MAX_RATE:,}")
    if period > MAX_RATE_PERIOD:
        raise InvalidArgument(f"{what} {text!r}: the period must be at most 31 days")
    return count, period


def parse_rate_limit(value: str | RateLimit) -> RateLimit:
    """``"api:100/min"`` → ``RateLimit("api", 100, 60.0)`` (the name is everything
    before the last ``:``)."""
    if isinstance(value, RateLimit):
        return value
    if not isinstance(value, str) or ":" not in value:
        raise InvalidArgument(
            f"rate_limit {value!r} needs a name and a rate, e.g. 'api:100/min' "
            "(steps with the same name share one limit)"
        )
    name, _, rate = value.rpartition(":")
    name = _no_brackets(check_name(name.strip(), "the rate limit's name", "'api'"),
                        "the rate limit's name", "'api.v2'")
    if name.startswith("queue:"):
        raise InvalidArgument(
            f"rate limit names starting with 'queue:' are kept for the start rate limits of queues; "
            f"rename {name!r}"
        )
    limit, period = parse_rate(rate, what=f"rate_limit {value!r}")
    return RateLimit(name, limit, period)


def check_queue_name(name: Any) -> str:
    """Return ``name`` if it can name a queue; else raise :class:`InvalidArgument`."""
    name = check_name(name, "the queue name", "'exports'")
    if len(name.strip()) != len(name):
        raise InvalidArgument(f"the queue name {name!r} starts or ends with whitespace")
    return _no_brackets(name, "the queue name", "'exports.eu'")


def check_key(value: Any, what: str) -> str:
    """A concurrency, debounce or rate limit key: non-blank text (or an int) of
    at most 255 characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return check_name(value, what, "'customer-42'")


def _limit(value: Any, what: str, high: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise InvalidArgument(f"{what} must be a whole number from 1 to {high:,} (or None: no limit), "
                              f"got {value!r}")
    return value


_QUEUES: dict[str, Queue] = {}


class Queue:
    """A queue of runs with limits, enforced in PostgreSQL across all workers.

    Parameters:
        name: the queue's name (at most 255 characters).
        concurrency: runs of the queue holding a worker at once, across all
            workers (``None``: no limit). Sleeping and waiting runs hold none.
        per_key: runs holding a worker at once per concurrency key
            (``StartOptions(concurrency_key=...)``).
        worker_concurrency: runs of the queue one worker holds at once.
        rate_limit: at most this many runs of the queue *start* per period,
            e.g. ``"100/min"`` (resuming after a sleep is not a start).
        key_rate_limit: at most this many runs of each concurrency key
            start per period, e.g. ``"10/min"`` (a token bucket per key;
            runs without a key are not limited by it). A start of a key
            without a token waits outside the line until its token comes.
        priority_aging: how much a priority level weighs against waiting time
            (default one minute): a run of priority ``p`` goes before runs of
            priority 0 that became ready more than ``p`` times this after it.

    Declaring a queue registers it in this process; a worker declares (writes)
    the registered queues to the database when it starts, and so does
    ``engine.start`` for a queue the database does not know yet.

        exports = Queue("exports", concurrency=20, per_key=5)
        exports_eu = Queue("exports.eu", per_key=5, key_rate_limit="10/min")
    """

    def __init__(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        per_key: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: str | None = None,
        priority_aging: Duration = "1m",
        key_rate_limit: str | None = None,
    ) -> None:
        self.name = check_queue_name(name)
        self.concurrency = _limit(concurrency, "concurrency", MAX_QUEUE_LIMIT)
        self.per_key = _limit(per_key, "per_key", MAX_QUEUE_LIMIT)
        self.worker_concurrency = _limit(worker_concurrency, "worker_concurrency", MAX_WORKER_LIMIT)
        self.rate_limit = rate_limit
        self.rate: tuple[int, float] | None = (
            None if rate_limit is None else parse_rate(rate_limit, what="the queue's rate_limit"))
        self.key_rate_limit = key_rate_limit
        self.key_rate: tuple[int, float] | None = (
            None if key_rate_limit is None else parse_rate(key_rate_limit, what="the queue's key_rate_limit"))
        self.priority_aging = parse_duration(priority_aging, what="priority_aging", allow_zero=False)
        if self.priority_aging > MAX_PRIORITY_AGING:
            raise InvalidArgument(f"priority_aging must be at most a day, got {priority_aging!r}")
        register_queue(self)

    @property
    def limits(self) -> tuple[Any, ...]:
        return (self.concurrency, self.per_key, self.worker_concurrency, self.rate, self.priority_aging,
                self.key_rate)

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        for label in ("concurrency", "per_key", "worker_concurrency", "rate_limit", "key_rate_limit"):
            value = getattr(self, label)
            if value is not None:
                parts.append(f"{label}={value!r}")
        return f"Queue({', '.join(parts)})"


def register_queue(queue: Queue) -> None:
    """Remember ``queue`` in this process; the same name with other limits is an error."""
    existing = _QUEUES.get(queue.name)
    if existing is not None and existing.limits != queue.limits:
        raise InvalidArgument(
            f"queue {queue.name!r} is already declared in this process with other limits "
            f"({existing!r}); declare it once and use that object"
        )
    _QUEUES[queue.name] = queue


def registered_queues() -> dict[str, Queue]:
    """The queues declared in this process: ``{name: Queue}``."""
    return dict(_QUEUES)


def queue_name(queue: Queue | str | None) -> str | None:
    """The name of a :class:`Queue` or a queue name (``None`` stays ``None``)."""
    if queue is None:
        return None
    if isinstance(queue, Queue):
        return queue.name
    if isinstance(queue, str):
        return check_queue_name(queue)
    raise InvalidArgument(f"queue must be a Queue or a queue name, not {type(queue).__name__}")


@dataclass(frozen=True)
class StartOptions:
    """How a run is started, beyond its arguments (``engine.start(..., options=...)``).

    * ``queue`` — a :class:`Queue` or its name (default: the workflow's queue).
    * ``concurrency_key`` — the key of the queue's per-key limit.
    * ``priority`` — 0 (first, the default) to 1,000,000; lower numbers first,
      FIFO within a priority, with aging (see :class:`Queue`).
    * ``delay`` / ``start_at`` — start no earlier than this (one of them);
      the run's ``timeout`` counts from then.
    * ``debounce`` — a burst of starts with the same key becomes one run,
      with the last arguments, started ``debounce`` after the last start of
      the burst. The key is ``debounce_key``, else ``concurrency_key``, else
      the whole workflow. It cannot be combined with ``run_id``.

        StartOptions(concurrency_key="c-42", priority=1, delay="10m")
    """

    queue: Queue | str | None = None
    concurrency_key: str | None = None
    priority: int | None = None
    delay: Duration | None = None
    start_at: dt.datetime | None = None
    debounce: Duration | None = None
    debounce_key: str | None = None

    def __post_init__(self) -> None:
        queue_name(self.queue)
        if self.concurrency_key is not None:
            object.__setattr__(self, "concurrency_key", check_key(self.concurrency_key, "concurrency_key"))
        if self.debounce_key is not None:
            object.__setattr__(self, "debounce_key", check_key(self.debounce_key, "debounce_key"))
        if self.priority is not None and (
            not isinstance(self.priority, int) or isinstance(self.priority, bool)
            or not 0 <= self.priority <= MAX_PRIORITY
        ):
            raise InvalidArgument(
                f"priority must be a whole number from 0 (first) to {MAX_PRIORITY:,}, got {self.priority!r}")
        if self.delay is not None and self.start_at is not None:
            raise InvalidArgument("pass delay or start_at, not both")
        optional_duration(self.delay, what="delay")
        if self.start_at is not None:
            if not isinstance(self.start_at, dt.datetime):
                raise InvalidArgument(f"start_at must be a datetime, not {type(self.start_at).__name__}")
            if self.start_at.tzinfo is None:
                raise InvalidArgument(
                    f"start_at {self.start_at.isoformat()} has no time zone; give it one, e.g. "
                    "datetime(2026, 1, 1, 2, tzinfo=ZoneInfo('Europe/Berlin'))")
        if self.debounce is not None and parse_duration(self.debounce, what="debounce") <= 0:
            raise InvalidArgument(f"debounce must be positive, got {self.debounce!r}")
        if self.debounce is None and self.debounce_key is not None:
            raise InvalidArgument("debounce_key needs debounce, e.g. StartOptions(debounce='30s', ...)")

    @property
    def queue_name(self) -> str | None:
        return queue_name(self.queue)

    @property
    def delay_seconds(self) -> float | None:
        return optional_duration(self.delay, what="delay")

    @property
    def debounce_seconds(self) -> float | None:
        return optional_duration(self.debounce, what="debounce")


#: The names of StartOptions' fields: keyword arguments of engine.start()
#: that are meant as options, not as workflow arguments.
OPTION_NAMES = frozenset(StartOptions.__dataclass_fields__)
