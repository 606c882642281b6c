"""``@workflow``: an ``async def`` whose runs are durable, and the registry of them.

    @workflow                      # registered as "myapp.flows.onboard"
    async def onboard(user_id: str) -> str: ...

    @workflow(name="onboard")      # or under a name of your choice
    async def onboard_v2(user_id: str) -> str: ...

    @workflow(queue=exports)       # its runs go to this queue unless a start says otherwise
    async def export(customer: str) -> None: ...

    @workflow(schedule="0 2 * * *", timezone="Europe/Berlin")   # a run every night at 02:00
    async def nightly_report(scheduled_at: datetime) -> None: ...

A worker serves the workflows registered in its process (importing the module
with ``--app`` registers them), and keeps the schedules they declare in the
database (see :mod:`werkfluss.cron`). Outside a run, a workflow is the plain
coroutine function; awaited inside another workflow's run it starts a child run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, overload

from werkfluss.cron import Catchup, Overlap, Schedule, make_schedule
from werkfluss.errors import InvalidArgument, NotAWorkflowError, UnknownWorkflowError
from werkfluss.flow import Queue, queue_name
from werkfluss.limits import check_schedule_name, check_workflow_name
from werkfluss.runtime import context

P = ParamSpec("P")
R = TypeVar("R")

_REGISTRY: dict[str, Workflow[..., Any]] = {}


class Workflow(Generic[P, R]):
    """A function registered with ``@workflow``."""

    def __init__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], name: str, schedule: Schedule | None = None,
        queue: Queue | str | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        #: The schedule declared with ``@workflow(schedule=...)``, stored under the workflow's name.
        self.schedule = schedule
        #: The default queue of its runs (a Queue, a queue's name, or None).
        self.queue = queue
        functools.update_wrapper(self, fn)

    @property
    def queue_name(self) -> str | None:
        return queue_name(self.queue)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        run = context.current_instance()
        if run is None:
            return _plain(self.fn, args, kwargs)
        from werkfluss.runtime.children import ChildCall

        return run.awaitable(run.call(ChildCall(self, args, kwargs)))

    def __repr__(self) -> str:
        return f"<werkfluss workflow {self.name}>"


async def _plain(fn: Callable[..., Coroutine[Any, Any, R]], args: Any, kwargs: Any) -> R:
    """A workflow called outside a run: the function itself, its steps awaited as plain calls."""
    token = context._plain_workflow.set(True)
    try:
        return await fn(*args, **kwargs)
    finally:
        context._plain_workflow.reset(token)


@overload
def workflow(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Workflow[P, R]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    schedule: str | Schedule | None = None,
    timezone: str | None = None,
    catchup: Catchup | None = None,
    overlap: Overlap | None = None,
    catchup_limit: int | None = None,
    queue: Queue | str | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Workflow[P, R]]: ...


def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    schedule: str | Schedule | None = None,
    timezone: str | None = None,
    catchup: Catchup | None = None,
    overlap: Overlap | None = None,
    catchup_limit: int | None = None,
    queue: Queue | str | None = None,
) -> Any:
    """Register an ``async def`` as a durable workflow (bare, or ``@workflow(name=...)``).

    ``schedule`` (a cron expression, or a :class:`~werkfluss.Schedule`) starts a
    run at every tick, with ``timezone``, ``catchup``, ``overlap`` and
    ``catchup_limit`` as in :class:`~werkfluss.Schedule`. The schedule is
    named after the workflow; each run receives its scheduled time as the
    first argument::

        @workflow(schedule="0 2 * * *", timezone="Europe/Berlin")
        async def nightly_report(scheduled_at: datetime) -> None: ...

    ``queue`` (a :class:`~werkfluss.Queue` or a queue's name) is the default
    queue of its runs; the workers that serve the workflow store it in the
    database, so runs started from SQL go there too.
    """
    spec = _schedule(schedule, timezone=timezone, catchup=catchup, overlap=overlap,
                     catchup_limit=catchup_limit)
    queue_name(queue)  # a bad queue fails at the decorator

    def decorate(func: Callable[..., Any]) -> Any:
        if isinstance(func, Workflow):
            raise InvalidArgument(f"{func.name} is already a workflow")
        if not inspect.iscoroutinefunction(func):
            raise InvalidArgument(
                f"@workflow needs an `async def` function; {getattr(func, '__qualname__', func)!r} "
                "is not one"
            )
        wf_name = check_workflow_name(f"{func.__module__}.{func.__qualname__}" if name is None else name)
        if spec is not None:
            _check_schedulable(func, wf_name)
        wf = Workflow(func, wf_name, spec, queue)
        register(wf)
        return wf

    if fn is not None:
        return decorate(fn)
    return decorate


def _schedule(
    schedule: str | Schedule | None, *, timezone: str | None, catchup: Catchup | None,
    overlap: Overlap | None, catchup_limit: int | None,
) -> Schedule | None:
    if schedule is None:
        given = [name for name, value in (("timezone", timezone), ("catchup", catchup), ("overlap", overlap),
                                          ("catchup_limit", catchup_limit)) if value is not None]
        if given:
            raise InvalidArgument(
                f"{', '.join(given)} given without schedule=; add e.g. schedule='0 2 * * *' or drop them")
        return None
    return make_schedule(schedule, timezone=timezone, catchup=catchup, overlap=overlap,
                         catchup_limit=catchup_limit)


def _check_schedulable(func: Callable[..., Any], name: str) -> None:
    """A scheduled workflow is called with its scheduled time as the only argument."""
    try:
        inspect.signature(func).bind(None)
    except TypeError:
        raise InvalidArgument(
            f"the scheduled workflow {name} must take its scheduled time as its first argument, "
            f"e.g. `async def {func.__name__}(scheduled_at: datetime)`"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): nothing to check
        return
    try:
        check_schedule_name(name)
    except InvalidArgument as err:
        raise InvalidArgument(
            f"the schedule of workflow {name} is named after it, and {err}; register the workflow "
            "under another name with @workflow(name=...), or schedule it with engine.schedule(..., name=...)"
        ) from None


def register(wf: Workflow[..., Any]) -> None:
    """Add ``wf`` to this process's registry.

    Registering the same function again (a module imported twice) replaces the
    entry; a *different* function under a name already taken is an error.
    """
    existing = _REGISTRY.get(wf.name)
    if existing is not None and _origin(existing.fn) != _origin(wf.fn):
        raise InvalidArgument(
            f"workflow name {wf.name!r} is already used by {_origin(existing.fn)}; "
            "give one of them another name with @workflow(name=...)"
        )
    _REGISTRY[wf.name] = wf


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def registered() -> dict[str, Workflow[..., Any]]:
    """A copy of the registry: ``{name: Workflow}``."""
    return dict(_REGISTRY)


def get(name: str) -> Workflow[..., Any]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownWorkflowError(
            f"no workflow named {name!r} is registered in this process; import the module "
            "that defines it (worker: --app)"
        ) from None


def name_of(target: Any) -> str:
    """The registered name for a ``@workflow`` object or a name string."""
    if isinstance(target, Workflow):
        return target.name
    if isinstance(target, str):
        if not target.strip():
            raise InvalidArgument("a workflow name must not be empty")
        return target
    what = getattr(target, "__qualname__", type(target).__name__)
    raise NotAWorkflowError(
        f"{what!r} is not a workflow: decorate it with @workflow, or pass a workflow's "
        "registered name as a string"
    )
