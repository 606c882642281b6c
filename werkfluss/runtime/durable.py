"""The one protocol every durable call follows.

A durable call is anything the workflow does that must come out the same on
every replay: a step, a sleep, a hook, a hook wait, a child run, ``now()``,
``uuid4()``. :meth:`WorkflowInstance.call <werkfluss.runtime.instance.WorkflowInstance.call>`
owns the ritual for all of them — take the next seq, match it against the
log (kind, name and, where recorded, input), restore or begin it, deliver its
outcome in the order the run first saw it — so a primitive only says what is
particular to it:

==================  ==========================================================
``kind``, ``name``   what the log calls it (``name=None`` matches any name)
``input_json()``     its input as recorded (compared on replay), or ``None``
``begin()``          first time: issue commands, return an immediate value
``restore()``        replayed from its call record (sleep, hook, now, uuid)
``resolve()``        the value (or exception) of its delivery record
``wait_key``         what a *passive* call waits for: ``hook:<token>``, ``run:<id>``
``deliverable()``    live: its delivery record, if the outcome is there now
``cancel()``         the workflow no longer wants it
==================  ==========================================================

Adding a primitive is one new module with one class like this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from werkfluss import serializer
from werkfluss.errors import SerializationError
from werkfluss.records import LogRecord

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance


class DurableCall:
    """Base class of durable calls; see the module docs."""

    kind: ClassVar[str]
    #: a call whose outcome is a delivery record (step, receive, child)
    delivers: ClassVar[bool] = False
    #: for passive calls: what it waits for ("hook:<token>", "run:<id>"); None for work in flight
    wait_key: str | None = None
    name: str | None = None

    def input_json(self) -> str | None:
        return None

    def begin(self, run: WorkflowInstance, seq: int) -> Any:
        """The call is made for the first time (no record at its seq)."""
        return None

    def restore(self, run: WorkflowInstance, seq: int, record: LogRecord) -> Any:
        """The call is replayed and its seq holds a call record."""
        return None

    def resolve(self, run: WorkflowInstance, record: LogRecord) -> Any:
        """The value of a delivery record; raise the recorded failure."""
        raise NotImplementedError

    def deliverable(self, run: WorkflowInstance, seq: int) -> LogRecord | None:
        """Live: the delivery record for this call if its outcome is available now."""
        return None

    def cancel(self, run: WorkflowInstance, seq: int) -> None:
        """The workflow cancelled the call before its outcome was delivered."""

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name is not None else f"{self.kind} (generated)"


def load_value(text: str | None) -> Any:
    """Decode a stored value; *any* failure (a malformed tagged value, a value too
    deep to read) is a :class:`SerializationError`, never something else, so the
    run it belongs to fails with a clear error and nothing else is touched."""
    try:
        return serializer.loads(text)
    except SerializationError:
        raise
    except (Exception, RecursionError) as exc:
        raise SerializationError(f"{type(exc).__name__}: {exc}"[:500]) from None
