"""Running step bodies: attempts, retries with backoff, timeouts.

Step bodies run on the worker's real event loop (async steps) or in its
thread pool (sync steps), never on a run's workflow loop. Inside a body,
:func:`werkfluss.step_info` describes the call and steps it calls are plain
function calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from werkfluss import serializer, telemetry
from werkfluss.clock import Clock
from werkfluss.errors import FatalError
from werkfluss.runtime import context
from werkfluss.runtime.commands import StepOutcome
from werkfluss.runtime.failures import error_record
from werkfluss.runtime.steps import Step


async def run_attempts(
    step_: Step[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    info: context.StepInfo,
    executor: Executor | None,
    clock: Clock,
    before_attempt: Callable[[], Awaitable[None]] | None = None,
    may_start: Callable[[], bool] | None = None,
) -> StepOutcome:
    """Run a step body with its retries, delays and timeout.

    Never raises for the body's own exceptions (they become a failed
    outcome); cancellation propagates. A result that cannot be serialized
    counts as a failed attempt (and is retried like any other failure).
    ``before_attempt`` is awaited before every attempt, the first and each
    retry: the worker's check that it still may run the step (it raises
    ``CancelledError`` when not). A sync body waits for a free thread of the
    pool after that check; ``may_start`` (cheap, thread-safe) is asked again
    in the thread just before the body starts, and when it says no the body
    does not start and the attempt goes back to ``before_attempt``. So a
    worker stopped while bodies queued for threads starts none of them after
    it resumes until its heartbeat vouches for it again.
    """
    options = step_.options
    log = telemetry.logger()
    started = clock.now()
    attempt = 0
    while True:
        attempt += 1
        attempt_info = context.StepInfo(info.run_id, info.workflow, info.step, info.seq, attempt)
        if before_attempt is not None:
            await before_attempt()
        try:
            value = await _call_once(step_, args, kwargs, attempt_info, executor, may_start)
            if value is _NOT_STARTED:
                attempt -= 1  # the same attempt, once the worker may act again
                continue
            output = serializer.dumps(value, what=f"the result of step {step_.name}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, FatalError) or attempt > options.retries:
                return StepOutcome(False, None, error_record(exc), attempt, started, exception=exc)
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
        return StepOutcome(True, output, None, attempt, started)


async def _call_once(
    step_: Step[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    info: context.StepInfo,
    executor: Executor | None,
    may_start: Callable[[], bool] | None = None,
) -> Any:
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
        if may_start is not None:
            call = functools.partial(_gated, may_start, call)
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


_NOT_STARTED = object()


def _gated(may_start: Callable[[], bool], call: Callable[[], Any]) -> Any:
    """In a pool thread: start the body only if the worker still may."""
    if not may_start():
        return _NOT_STARTED
    return call()


def _timeout_message(step_: Step[..., Any], timeout: float, attempt: int) -> str:
    return f"step {step_.name} timed out after {timeout:g}s (attempt {attempt})"
