"""Every error werkfluss raises, in one hierarchy rooted at :class:`WerkflussError`.

Each message says what happened and what to do about it::

    try:
        await handle.result(timeout=30)
    except RunFailed as failure:
        print(failure.error_type, failure.message)
        print(failure.traceback)
"""

from __future__ import annotations

from typing import Any


class WerkflussError(Exception):
    """Base class of everything werkfluss raises."""


# --- configuration and database -------------------------------------------------


class ConfigurationError(WerkflussError):
    """Something in the setup is missing or wrong (no database, bad option)."""


class InvalidDsn(ConfigurationError):
    """The connection string cannot be used as written: it does not parse, or
    libpq refuses one of its options (a port that is not a number, an unknown
    ``sslmode``, a URL scheme other than ``postgresql://``).

    Raised before anything is sent to a server; the message never contains
    the password.
    """


class AppImportError(ConfigurationError):
    """``--app`` names something the worker cannot import as a module.

    The message suggests the module name to use instead (``crashapp`` for
    ``crashapp.py``, ``myapp.workflows`` for ``myapp/workflows.py``).
    """


class DatabaseError(WerkflussError):
    """PostgreSQL reported an error werkfluss did not expect."""


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached, or the connection was lost.

    The message names host, port, database and user — never the password.
    """


class DatabaseBusy(DatabaseError):
    """A transaction lost a race inside PostgreSQL (serialization failure,
    deadlock, lock timeout); running it again is expected to succeed."""


class SchemaNotReady(WerkflussError):
    """The ``werkfluss`` schema is missing or older than this code needs."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(detail)

    def __str__(self) -> str:
        message = (
            "the werkfluss schema is missing or out of date in this database; apply the "
            "migrations with `python -m werkfluss migrate --dsn URL` (or `werkfluss migrate`), "
            "by starting a worker with `--migrate`, or with `await engine.migrate()`"
        )
        return f"{message} ({self.detail})" if self.detail else message


class InvalidArgument(WerkflussError, ValueError):
    """A value passed to werkfluss is not acceptable (bad duration, empty name, ...)."""


class ValueRefused(InvalidArgument, DatabaseError):
    """PostgreSQL refused a value werkfluss passed on: out of range, not valid
    text, or too large (for an index entry, a ``jsonb`` value, …).

    An :class:`InvalidArgument` (the caller's value is the cause) that is also
    a :class:`DatabaseError` (PostgreSQL reported it), so either ``except``
    catches it. The message quotes PostgreSQL's.
    """


class SerializationError(WerkflussError, TypeError):
    """A value cannot be stored as JSON: workflow arguments, step inputs or results."""


# --- definitions -------------------------------------------------------------------


class NotAWorkflowError(WerkflussError, TypeError):
    """``engine.start`` got something that is neither a ``@workflow`` nor a name."""


class UnknownWorkflowError(WerkflussError, LookupError):
    """A workflow name is not registered in this process."""


class RunNotFound(WerkflussError, LookupError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(run_id)

    def __str__(self) -> str:
        return f"no run with id {self.run_id!r}; list runs with `python -m werkfluss runs`"


class QueueNotFound(WerkflussError, LookupError):
    """A start names a queue the database does not know: declare it first
    (``Queue(...)`` in the workers' code, ``engine.declare_queue``, or
    ``werkfluss.declare_queue`` in SQL)."""


class ScheduleNotFound(WerkflussError, LookupError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"no schedule named {self.name!r}; list schedules with `python -m werkfluss schedules`"


class RateLimitKeyError(WerkflussError):
    """A step's ``rate_limit_key`` raised, or returned something that cannot
    key a rate limit (it must return a non-blank string or an int of at most
    255 characters).

    Raised in the workflow at the step call, before anything is recorded (as
    a step input that cannot be serialized is): the run fails with it unless
    the workflow catches it. Other runs are not affected.
    """


class InvalidCron(InvalidArgument):
    """A cron expression that the parser refuses (wrong number of fields, a
    value out of range, a date that never comes)."""


class UnknownTimezone(InvalidArgument):
    """A time zone name that is not in the IANA time zone database."""


class RunIdConflict(WerkflussError):
    """A ``run_id`` given as idempotency key already belongs to another workflow."""


class NotInRunError(WerkflussError, RuntimeError):
    """A durable primitive (``step_info``, ``hook``, ...) was used outside a workflow run."""


# --- outcomes of runs and steps ----------------------------------------------------


class RunFailed(WerkflussError):
    """A run ended in failure; carries the recorded error.

    ``str(failure)`` reads ``run <id> failed: <Type>: <message>``.
    """

    def __init__(
        self,
        run_id: str,
        error_type: str,
        message: str,
        traceback: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        super().__init__(run_id, error_type, message, traceback)

    def __str__(self) -> str:
        return f"run {self.run_id} failed: {self.error_type}: {self.message}"

    @classmethod
    def from_record(cls, run_id: str, error: dict[str, Any] | None) -> RunFailed:
        error = error or {}
        return cls(
            run_id,
            str(error.get("type", "UnknownError")),
            str(error.get("message", "")),
            error.get("traceback"),
        )


class RunCancelled(WerkflussError):
    """The run was cancelled before it finished."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(run_id)

    def __str__(self) -> str:
        return f"run {self.run_id} was cancelled"


class FatalError(WerkflussError):
    """Raise from a step to fail it at once, without the remaining retries.

    Example::

        @step(retries=5)
        async def charge(card: str) -> None:
            if card_is_blocked(card):
                raise FatalError("card is blocked")  # retrying cannot help
    """


class StepFailed(WerkflussError):
    """A step failed with an exception that cannot be rebuilt from its record.

    Raised inside the workflow instead of the original exception when its class
    cannot be imported or constructed from the recorded arguments, so that a
    live run and its replay see the same exception.
    """

    def __init__(self, error_type: str, message: str, traceback: str | None = None) -> None:
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        super().__init__(error_type, message, traceback)

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class NonDeterminismError(WerkflussError):
    """The workflow code no longer matches the run's log.

    The run fails once with this error (it is never retried): its message
    names the seq, the step the log recorded and the step the code called.
    """

    def __init__(self, run_id: str, seq: int, expected: str, actual: str) -> None:
        self.run_id = run_id
        self.seq = seq
        self.expected = expected
        self.actual = actual
        super().__init__(run_id, seq, expected, actual)

    def __str__(self) -> str:
        return (
            f"run {self.run_id}: at seq {self.seq} the log has {self.expected} but the "
            f"workflow called {self.actual}. Either the code changed under a running run "
            "(keep old workflow code until its runs finish, or deploy the change under a new "
            "workflow name; `werkfluss retry` resumes the run once the code matches again), or "
            "the workflow is not deterministic (it used the wall clock, random numbers or I/O "
            "outside a step: use werkfluss.now(), werkfluss.uuid4() and steps)"
        )


class HookConflict(WerkflussError):
    """A hook token the workflow chose is already owned by another run."""

    def __init__(self, token: str, owner: str | None) -> None:
        self.token = token
        self.owner = owner
        super().__init__(token, owner)

    def __str__(self) -> str:
        return (
            f"hook token {self.token} is already used by run {self.owner or ''}; "
            "choose a token unique to this run"
        )


class HookRefused(WerkflussError):
    """``engine.send()`` did not deliver the payload; nothing was stored.

    ``reason`` is one of ``unknown_token`` (a generated token that was never
    issued), ``already_used`` (a single-use hook that has its payload),
    ``run_ended`` (the hook's run has finished) or ``duplicate_early_payload``
    (a second payload for a token whose hook does not exist yet).
    """

    _EXPLAIN = {
        "unknown_token": "no hook was ever issued with this token; check the token you were given",
        "already_used": "the hook is single-use and already received its payload",
        "run_ended": "the run that owns the hook has finished; nothing waits for it any more",
        "duplicate_early_payload": (
            "a payload for this token is already waiting for its hook to be created; "
            "only the first one is kept"
        ),
    }

    def __init__(self, token: str, reason: str) -> None:
        self.token = token
        self.reason = reason
        super().__init__(token, reason)

    def __str__(self) -> str:
        return f"cannot send to hook {self.token!r}: {self._EXPLAIN.get(self.reason, self.reason)}"


class LeaseLost(WerkflussError):
    """This worker no longer holds the run (taken over, cancelled or released).

    Internal: the worker stops executing the run and writes nothing more for it.
    """


class WorkflowSandboxError(WerkflussError, RuntimeError):
    """Workflow code tried something only a step may do (I/O, threads, subprocesses).

    Workflow code runs on werkfluss's deterministic loop and is replayed after a
    crash; move such work into a ``@step``.
    """


class RecordRefused(WerkflussError):
    """PostgreSQL refused to store one of a run's records (a value it cannot hold).

    The run fails with this error; other runs written in the same batch are
    not affected.
    """


class WorkflowBlocked(WerkflussError):
    """The workflow awaits something no durable event can resolve (a plain
    future, event or lock that nothing will set); the run fails with this."""


class InvalidTransition(WerkflussError):
    """A run was asked to move between states that have no transition: a bug in werkfluss."""
