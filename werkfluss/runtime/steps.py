"""``@step``: a function whose result is recorded once and replayed after that.

    @step
    async def fetch_data(user_id: str) -> dict: ...

    @step(retries=3, retry_delay="500ms", backoff=2.0, timeout="30s")
    def send_email(data: dict) -> None: ...   # sync steps run in a thread

Inside a workflow run, calling a step returns an awaitable; its position in
the run (its *seq*) is fixed at the call, so ``asyncio.gather`` over steps
replays deterministically. Outside a run a step is the plain function.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from werkfluss import serializer, telemetry
from werkfluss.durations import Duration, optional_duration, parse_duration
from werkfluss.errors import FatalError, InvalidArgument, SerializationError
from werkfluss.runtime import context

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class StepOptions:
    """How a step is retried. ``retries=N`` means N retries after the first attempt."""

    retries: int = 0
    retry_delay: float = 1.0
    backoff: float = 2.0
    timeout: float | None = None

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return self.retry_delay * (self.backoff ** (retry - 1))


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
        execution = context.current_execution()
        if execution is None:
            if context._plain_workflow.get():
                return _plain_step(self, args, kwargs)
            return self.fn(*args, **kwargs)
        return execution.call_step(self, args, kwargs)

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
) -> Any:
    """Make a function a durable step (bare ``@step`` or ``@step(retries=3, ...)``).

    * ``retries`` — retries after the first attempt (``FatalError`` is never retried).
    * ``retry_delay`` — wait before the first retry (seconds or ``"500ms"``);
      each further retry waits ``backoff`` times longer.
    * ``timeout`` — limit for one attempt; a timed-out attempt raises
      ``TimeoutError`` and counts as a failure (a sync step's thread cannot be
      stopped and finishes in the background).
    * ``name`` — the name recorded in the log (default ``module.qualname``).
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidArgument(f"retries must be a whole number >= 0, got {retries!r}")
    if not isinstance(backoff, (int, float)) or backoff < 1:
        raise InvalidArgument(f"backoff must be a number >= 1, got {backoff!r}")
    options = StepOptions(
        retries=retries,
        retry_delay=parse_duration(retry_delay, what="retry_delay"),
        backoff=float(backoff),
        timeout=optional_duration(timeout, what="timeout"),
    )
    if options.timeout == 0:
        raise InvalidArgument("timeout must be positive")

    def decorate(func: Callable[..., Any]) -> Any:
        if isinstance(func, (Step,)):
            raise InvalidArgument(f"{func.name} is already a step")
        target = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
        if not callable(target):
            raise InvalidArgument(f"@step needs a function, got {type(func).__name__}")
        step_name = f"{target.__module__}.{target.__qualname__}" if name is None else name
        if not step_name.strip():
            raise InvalidArgument("a step name must not be empty")
        return Step(func, step_name, options)

    if fn is not None:
        return decorate(fn)
    return decorate


@dataclass
class StepOutcome:
    """What running a step's attempts produced (before it is recorded)."""

    ok: bool
    output: str | None  # JSON text when ok
    error: BaseException | None
    attempts: int


async def run_attempts(
    step_: Step[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    info: context.StepInfo,
    executor: Executor | None,
) -> StepOutcome:
    """Run a step body with its retries, delays and timeout. Never raises for
    the body's own exceptions (they become a failed outcome); cancellation
    propagates."""
    options = step_.options
    log = telemetry.logger()
    attempt = 0
    while True:
        attempt += 1
        attempt_info = context.StepInfo(info.run_id, info.workflow, info.step, info.seq, attempt)
        try:
            value = await _call_once(step_, args, kwargs, attempt_info, executor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, FatalError) or attempt > options.retries:
                return StepOutcome(False, None, exc, attempt)
            delay = options.delay_before(attempt)
            log.warning(
                "step.retrying",
                run_id=info.run_id,
                step=info.step,
                seq=info.seq,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=f"{type(exc).__name__}: {exc}",
            )
            await asyncio.sleep(delay)
            continue
        try:
            output = serializer.dumps(value, what=f"the result of step {step_.name}")
        except SerializationError as exc:
            return StepOutcome(False, None, exc, attempt)  # retrying cannot help
        return StepOutcome(True, output, None, attempt)


async def _call_once(
    step_: Step[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    info: context.StepInfo,
    executor: Executor | None,
) -> Any:
    # Inside the body: no execution (nested steps are plain calls), and step_info().
    exec_token = context._execution.set(None)
    step_token = context._step.set(info)
    timeout = step_.options.timeout
    started = time.monotonic()
    try:
        if step_.is_async:
            if timeout is None:
                return await step_.fn(*args, **kwargs)
            try:
                async with asyncio.timeout(timeout):
                    return await step_.fn(*args, **kwargs)
            except TimeoutError:
                if time.monotonic() - started < timeout:
                    raise  # the body's own TimeoutError, not ours
                raise TimeoutError(_timeout_message(step_, timeout, info.attempt)) from None
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, step_.fn, *args, **kwargs)
        future = loop.run_in_executor(executor, call)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if time.monotonic() - started < timeout:
                raise
            raise TimeoutError(_timeout_message(step_, timeout, info.attempt)) from None
    finally:
        context._step.reset(step_token)
        context._execution.reset(exec_token)


def _timeout_message(step_: Step[..., Any], timeout: float, attempt: int) -> str:
    return f"step {step_.name} timed out after {timeout:g}s (attempt {attempt})"
