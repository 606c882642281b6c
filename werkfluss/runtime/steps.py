"""``@step``: a function whose result is recorded once and replayed after that.

    @step
    async def fetch_data(user_id: str) -> dict: ...

    @step(retries=3, retry_delay="500ms", backoff=2.0, timeout="30s")
    def send_email(data: dict) -> None: ...   # sync steps run in a thread

    @step(rate_limit="api:100/min")           # at most 100 executions a minute, all workers
    async def call_api(path: str) -> dict: ...

    @step(rate_limit="api:10/s", rate_limit_key=lambda customer, path: customer)
    async def call_for(customer: str, path: str) -> dict: ...   # 10 a second per customer

Inside a workflow run, calling a step returns an awaitable; its position in
the run (its *seq*) is fixed at the call, so ``asyncio.gather`` over steps
replays deterministically. Outside a run a step is the plain function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from werkfluss import serializer
from werkfluss.durations import Duration, optional_duration, parse_duration
from werkfluss.errors import InvalidArgument, RateLimitKeyError, StepFailed
from werkfluss.flow import RateLimit, parse_rate_limit
from werkfluss.limits import check_name
from werkfluss.records import LogRecord
from werkfluss.runtime import context
from werkfluss.runtime.durable import DurableCall, load_value
from werkfluss.runtime.failures import rebuild_exception

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance

P = ParamSpec("P")
MAX_RETRIES = 1000
MAX_BACKOFF = 100.0
MAX_RETRY_DELAY = 86400.0  # seconds: no single wait between attempts is longer than a day
R = TypeVar("R")


@dataclass(frozen=True)
class StepOptions:
    """How a step is retried. ``retries=N`` means N retries after the first attempt."""

    retries: int = 0
    retry_delay: float = 1.0
    backoff: float = 2.0
    timeout: float | None = None
    rate_limit: RateLimit | None = None
    rate_limit_key: Callable[..., Any] | None = None

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), at most a day."""
        try:
            delay = self.retry_delay * (self.backoff ** (retry - 1))
        except OverflowError:
            return MAX_RETRY_DELAY
        return min(delay, MAX_RETRY_DELAY)


class Step(Generic[P, R]):
    """A function registered with ``@step``. Call it like the function it wraps.

    Inside a run the call returns an awaitable (also for a sync function);
    outside a run it is the plain function call.
    """

    def __init__(self, fn: Callable[P, R], name: str, options: StepOptions) -> None:
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        run = context.current_instance()
        if run is None:
            if context._plain_workflow.get():
                return _plain_step(self, args, kwargs)
            return self.fn(*args, **kwargs)
        return await_call(run, StepCall(self, args, kwargs))

    def __repr__(self) -> str:
        return f"<werkfluss step {self.name}>"


async def _plain_step(step_: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # Called from a workflow that runs as a plain function: awaitable like in a
    # run; inside the body, nested step calls are plain calls again.
    token = context._plain_workflow.set(False)
    try:
        if step_.is_async:
            return await step_.fn(*args, **kwargs)
        return step_.fn(*args, **kwargs)
    finally:
        context._plain_workflow.reset(token)


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(
    *,
    retries: int = 0,
    retry_delay: Duration = 1.0,
    backoff: float = 2.0,
    timeout: Duration | None = None,
    name: str | None = None,
    rate_limit: str | RateLimit | None = None,
    rate_limit_key: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    retries: int = 0,
    retry_delay: Duration = 1.0,
    backoff: float = 2.0,
    timeout: Duration | None = None,
    name: str | None = None,
    rate_limit: str | RateLimit | None = None,
    rate_limit_key: Callable[..., Any] | None = None,
) -> Any:
    """Make a function a durable step (bare ``@step`` or ``@step(retries=3, ...)``).

    * ``retries`` — retries after the first attempt (``FatalError`` is never retried).
    * ``retry_delay`` — wait before the first retry (seconds or ``"500ms"``);
      each further retry waits ``backoff`` times longer.
    * ``timeout`` — limit for one attempt; a timed-out attempt raises
      ``TimeoutError`` and counts as a failure (a sync step's thread cannot be
      stopped and finishes in the background).
    * ``name`` — the name recorded in the log (default ``module.qualname``).
    * ``rate_limit`` — ``"name:N/period"``, e.g. ``"api:100/min"``: every
      attempt takes a token from the bucket ``name``, shared by all workers
      and all steps that name it; without a token the attempt waits on its
      worker (the run keeps its worker slot) until one is there.
    * ``rate_limit_key`` — a function of the step's arguments (called with
      the same arguments as the step) returning a key (a string or an int):
      each key gets a bucket of its own, ``<name>[<key>]``, so the limit
      holds per key, e.g. ``rate_limit_key=lambda customer, path: customer``.
      It is called in the workflow at the step call, so it must be
      deterministic (it runs again on replay); if it raises or returns
      something else, the call raises :class:`RateLimitKeyError`.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        raise InvalidArgument(f"retries must be a whole number from 0 to {MAX_RETRIES}, got {retries!r}")
    if rate_limit_key is not None:
        if rate_limit is None:
            raise InvalidArgument(
                "rate_limit_key needs rate_limit, e.g. "
                "@step(rate_limit='api:100/min', rate_limit_key=lambda customer, path: customer)")
        if not callable(rate_limit_key) or inspect.iscoroutinefunction(rate_limit_key):
            raise InvalidArgument(
                "rate_limit_key must be a plain (not async) function of the step's arguments that returns "
                f"the key, e.g. lambda customer, path: customer; got {rate_limit_key!r}")
    if (not isinstance(backoff, (int, float)) or isinstance(backoff, bool)
            or not 1 <= backoff <= MAX_BACKOFF):
        raise InvalidArgument(f"backoff must be a number from 1 to {MAX_BACKOFF:g}, got {backoff!r}")
    options = StepOptions(
        retries=retries,
        retry_delay=parse_duration(retry_delay, what="retry_delay"),
        backoff=float(backoff),
        timeout=optional_duration(timeout, what="timeout"),
        rate_limit=None if rate_limit is None else parse_rate_limit(rate_limit),
        rate_limit_key=rate_limit_key,
    )
    if options.timeout == 0:
        raise InvalidArgument("timeout must be positive")
    if options.retry_delay > MAX_RETRY_DELAY:
        raise InvalidArgument(
            f"retry_delay must be at most a day ({MAX_RETRY_DELAY:g}s), got {retry_delay!r}")

    def decorate(func: Callable[..., Any]) -> Any:
        if isinstance(func, (Step,)):
            raise InvalidArgument(f"{func.name} is already a step")
        target = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
        if not callable(target):
            raise InvalidArgument(f"@step needs a function, got {type(func).__name__}")
        step_name = check_name(f"{target.__module__}.{target.__qualname__}" if name is None else name,
                               "the step name", "'app.send_email'")
        return Step(func, step_name, options)

    if fn is not None:
        return decorate(fn)
    return decorate




class StepCall(DurableCall):
    """A step call inside a run: executed once, its outcome recorded and replayed."""

    kind = "step"
    delivers = True

    def __init__(self, step_: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.step = step_
        self.name = step_.name
        self.args = args
        self.kwargs = kwargs
        # Serialized at the call: an unserializable input raises here, in the
        # workflow, before anything is recorded.
        self._input = serializer.dumps(
            {"args": list(args), "kwargs": kwargs}, what=f"the input of step {step_.name}"
        )
        # The bucket is chosen here too, in the workflow: a replay chooses the same.
        self.rate_limit = _rate_limit_of(step_, args, kwargs)

    def input_json(self) -> str:
        return self._input

    def begin(self, run: WorkflowInstance, seq: int) -> None:
        run.execute_step(seq, self.step, self.args, self.kwargs, rate_limit=self.rate_limit)

    def resolve(self, run: WorkflowInstance, record: LogRecord) -> Any:
        if record.status == "completed":
            return load_value(record.output)
        raise rebuild_exception(
            context.error_from_json(record.error), where=f" for run {run.run_id} seq {record.seq}"
        )

    def cancel(self, run: WorkflowInstance, seq: int) -> None:
        run.cancel_step(seq)


def _rate_limit_of(step_: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> RateLimit | None:
    """The bucket a call of ``step_`` takes its tokens from: the step's rate limit,
    or that of the key its ``rate_limit_key`` gives for these arguments."""
    limit, key_of = step_.options.rate_limit, step_.options.rate_limit_key
    if limit is None or key_of is None:
        return limit
    try:
        key = key_of(*args, **kwargs)
    except Exception as err:
        raise RateLimitKeyError(
            f"the rate_limit_key of step {step_.name} raised {type(err).__name__}: {err}; it is called "
            "with the step's arguments and must return the key (a string or an int)"
        ) from err
    try:
        return limit.keyed(key)
    except RateLimitKeyError:
        raise RateLimitKeyError(
            f"the rate_limit_key of step {step_.name} returned {serializer.short_repr(key, 80)}; "
            "it must return a non-blank string or an int of at most 255 characters"
        ) from None


def await_call(run: WorkflowInstance, call: DurableCall) -> Coroutine[Any, Any, Any]:
    """Make ``call`` now and return a coroutine that awaits its outcome."""
    future = run.call(call)
    return run.awaitable(future)


__all__ = ["StepCall", "StepFailed", "StepOptions", "await_call", "step"]
