"""The deterministic event loop that workflow code runs on.

Each run's workflow code runs on its own :class:`WorkflowLoop`, an
``asyncio.AbstractEventLoop`` that werkfluss owns (the approach of Temporal's
Python SDK). The loop does no I/O and has no clock of its own:

* ``run_until_idle()`` runs ready callbacks, in the order they were
  scheduled, until none is left. Then the run is *blocked*, as a fact: every
  task of the workflow waits on a future that only a durable call's outcome
  (or a durable timer) can resolve.
* ``time()`` is the run's *workflow time*: the database time of the event
  being processed, the same on every replay.
* ``call_at``/``call_later`` are durable timers: ``asyncio.sleep``,
  ``asyncio.wait_for`` and ``asyncio.timeout`` inside a workflow therefore
  sleep durably and replay to the same outcome.
* Everything that would do I/O (sockets, subprocesses, threads, signals)
  raises :class:`~werkfluss.errors.WorkflowSandboxError`: such work belongs in
  a ``@step``.

Step bodies never run here; they run on the worker's real loop or in a thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from werkfluss.errors import WorkflowSandboxError

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance

T = TypeVar("T")


class DurableTimerHandle(asyncio.TimerHandle):
    """A timer of the workflow loop; backed by a durable timer of the run."""

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: WorkflowLoop,
        context: contextvars.Context | None,
        seq: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self.seq = seq


_ORDER_BITS = 32
_loop_salts = itertools.count(1)


class WorkflowTask(asyncio.Task):
    """A task of workflow code: hashed by its creation order on its loop, so
    that sets of tasks (``asyncio.wait``'s results, ``TaskGroup``'s members)
    iterate in the same order on every replay.

    The hash is ``salt << 32 | order``: the low bits (all a set of fewer than
    2**32 members looks at) are the creation order, the same on every replay;
    the loop's salt keeps tasks of different runs apart in asyncio's global
    task set. The hash is fixed before ``Task.__init__`` registers the task
    there (a hash that changed afterwards would corrupt that set).
    """

    def __init__(self, coro: Any, *, loop: WorkflowLoop, order: int, **kwargs: Any) -> None:
        self._hash = loop.hash_for(order)
        super().__init__(coro, loop=loop, **kwargs)

    def __hash__(self) -> int:
        return self._hash


class WorkflowFuture(asyncio.Future):
    """A future of workflow code, hashed by its creation order (see :class:`WorkflowTask`)."""

    def __init__(self, *, loop: WorkflowLoop, order: int) -> None:
        self._hash = loop.hash_for(order)
        super().__init__(loop=loop)

    def __hash__(self) -> int:
        return self._hash


class WorkflowLoop(asyncio.AbstractEventLoop):
    """An event loop for one run's workflow code (see the module docs)."""

    def __init__(self, instance: WorkflowInstance) -> None:
        # The instance owns its loop; the loop refers back weakly, so that a
        # run that leaves the worker is freed at once (reference counting)
        # instead of waiting for the cyclic garbage collector.
        self._instance = weakref.ref(instance)
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._errors: list[BaseException] = []
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._created = 0  # tasks and futures made on this loop, for their hash
        self.salt = next(_loop_salts) & 0xFFFFFFF  # told apart from other runs' loops (28 bits)

    @property
    def instance(self) -> WorkflowInstance:
        instance = self._instance()
        if instance is None:  # pragma: no cover - the instance owns the loop while it runs
            raise RuntimeError("the run of this workflow loop is gone")
        return instance

    # --- driving ----------------------------------------------------------------

    def run_until_idle(self) -> None:
        """Run ready callbacks until none is left (the run is then blocked or done).

        Unhandled exceptions of callbacks (a bug in werkfluss, or an error
        escaping a done-callback) are collected in :attr:`errors`.
        """
        previous = asyncio._get_running_loop()
        asyncio._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            asyncio._set_running_loop(previous)

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    def take_errors(self) -> list[BaseException]:
        errors, self._errors = self._errors, []
        return errors

    # --- what asyncio calls ------------------------------------------------------

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.instance.start_timer(when, callback, args, context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        instance = self._instance()
        # (A run already gone: its coroutines are being closed by the garbage
        # collector, and its timers with them.)
        if instance is not None and isinstance(handle, DurableTimerHandle):
            instance.cancel_timer(handle)

    def time(self) -> float:
        return self.instance.workflow_time.timestamp()

    def hash_for(self, order: int) -> int:
        """The hash of this loop's ``order``-th task or future (see :class:`WorkflowTask`)."""
        return self.salt << _ORDER_BITS | order

    def create_future(self) -> asyncio.Future[Any]:
        self._created += 1
        return WorkflowFuture(loop=self, order=self._created)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        self._created += 1
        task: WorkflowTask = WorkflowTask(coro, loop=self, order=self._created, name=name, context=context)
        # A run that leaves this worker drops its loop with tasks still pending;
        # that is expected, not something to warn about.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close_tasks(self) -> None:
        """Close the coroutines of unfinished tasks (the run leaves this worker).

        Runs with this loop as the running loop, so workflow code in a
        ``finally:`` still sees it is in a run (and its durable calls refused).
        """
        previous = asyncio._get_running_loop()
        asyncio._set_running_loop(self)
        try:
            for task in list(self._tasks):
                if task.done():
                    continue
                coro = task.get_coro()
                try:
                    coro.close()
                except BaseException as err:  # a workflow that will not close is dropped anyway
                    self._errors.append(err)
                # The future it waited for still calls it back: cancelled (its
                # callbacks dropped with the loop's ready queue), the task and
                # the future are freed with the run instead of by the cyclic
                # garbage collector.
                waiter = getattr(task, "_fut_waiter", None)
                if waiter is not None and not waiter.done():
                    waiter.cancel()
        finally:
            asyncio._set_running_loop(previous)
            self._tasks.clear()

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def get_task_factory(self) -> None:
        return None

    def get_exception_handler(self) -> None:
        return None

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if error is None:
            message = context.get("message", "unhandled error in workflow code")
            error = RuntimeError(message)
        self._errors.append(error)

    async def shutdown_asyncgens(self) -> None:
        return None

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        return None


# What workflow code must not do: each raises WorkflowSandboxError saying why.
_REFUSED = {
    "run_in_executor": "run functions in threads (run_in_executor, to_thread)",
    "set_default_executor": "use executors",
    "getaddrinfo": "resolve host names",
    "getnameinfo": "resolve addresses",
    "create_connection": "open network connections",
    "create_server": "start servers",
    "create_datagram_endpoint": "open sockets",
    "create_unix_connection": "open sockets",
    "create_unix_server": "start servers",
    "connect_accepted_socket": "use sockets",
    "connect_read_pipe": "use pipes",
    "connect_write_pipe": "use pipes",
    "start_tls": "use TLS connections",
    "sendfile": "send files",
    "sock_recv": "use sockets",
    "sock_recv_into": "use sockets",
    "sock_recvfrom": "use sockets",
    "sock_recvfrom_into": "use sockets",
    "sock_sendall": "use sockets",
    "sock_sendto": "use sockets",
    "sock_connect": "use sockets",
    "sock_accept": "use sockets",
    "sock_sendfile": "use sockets",
    "subprocess_exec": "start subprocesses",
    "subprocess_shell": "start subprocesses",
    "add_reader": "watch file descriptors",
    "add_writer": "watch file descriptors",
    "remove_reader": "watch file descriptors",
    "remove_writer": "watch file descriptors",
    "add_signal_handler": "handle signals",
    "remove_signal_handler": "handle signals",
    "call_soon_threadsafe": "be called from other threads",
    "run_forever": "run the loop itself",
    "run_until_complete": "run the loop itself",
    "stop": "stop the loop",
    "set_task_factory": "change how tasks are made",
    "set_exception_handler": "change how errors are handled",
    "set_debug": "change the loop's debug mode",
}


def _refusal(name: str, what: str) -> Callable[..., Any]:
    def refuse(self: WorkflowLoop, *args: Any, **kwargs: Any) -> Any:
        raise WorkflowSandboxError(
            f"workflow code cannot {what}: it runs on werkfluss's deterministic loop and is "
            "replayed after a crash; do I/O, threads and subprocesses inside a @step"
        )

    refuse.__name__ = name
    return refuse


for _name, _what in _REFUSED.items():
    setattr(WorkflowLoop, _name, _refusal(_name, _what))
