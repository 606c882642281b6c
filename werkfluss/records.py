"""The records a run's log is made of, as the runtime writes and reads them.

One :class:`LogRecord` is one row of ``werkfluss.events``. JSON fields hold
JSON *text* (the serializer's output), so a record can be written without
another encoding pass and read back without decoding what is not needed.

A record is one of two sorts:

* a **delivery** — the outcome of a step, a hook payload received by a wait,
  a child run's outcome: something that resumed the workflow. Its
  ``finished_at`` is the moment the run saw it, on the database's clock and
  strictly increasing within the run, so a replay delivers outcomes in the
  order the run first saw them.
* a **call record** — a sleep's wake-up time, a hook's token, a value of
  ``now()`` or ``uuid4()``: what a call fixed when it was made.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# Kinds whose records are deliveries (see the module docs). A legacy child
# record (only {"run_id": …}, written when the child was started by releases
# before 0.2) is a call record.
DELIVERY_KINDS = frozenset({"step", "receive", "child"})


@dataclass(slots=True)
class LogRecord:
    """One entry of a run's log (``werkfluss.events``)."""

    seq: int
    kind: str  # "step" | "sleep" | "hook" | "receive" | "child" | "now" | "uuid" | "race" (legacy)
    name: str
    status: str  # "completed" | "failed"
    input: str | None = None  # JSON text
    output: str | None = None  # JSON text
    error: str | None = None  # JSON text of an error record
    attempts: int = 1
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    consumes: int | None = None  # the hook payload this record holds (receive records)


@dataclass(frozen=True, slots=True)
class Payload:
    """A hook payload waiting to be received."""

    id: int
    token: str
    payload: str  # JSON text
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    """A child run that ended, as its parent learns it."""

    run_id: str
    status: str  # "completed" | "failed" | "cancelled"
    result: str | None  # JSON text
    error: str | None  # JSON text of the error record
    finished_at: dt.datetime | None
