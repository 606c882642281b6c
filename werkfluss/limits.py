"""The limits on names, ids and tokens, in one place for every door.

A run can be started, sent to and cancelled from Python (:class:`~werkfluss.Engine`),
from SQL (``werkfluss.start_run``, ``werkfluss.send``, ``werkfluss.cancel_run``,
``werkfluss.run_status``) and from the command line. All of them accept and
refuse the same values, with the same error: :class:`~werkfluss.errors.InvalidArgument`
in Python (raised before the database is touched), SQLSTATE ``22023``
(``invalid_parameter_value``) with a hint from SQL, and a one-line
``werkfluss: …`` with exit status 1 from the command line.

The SQL functions (``sql/migrations/0005_client_role.sql``) repeat these
numbers as literals; ``tests/integration/test_bad_input.py`` checks that both
sides accept a value of exactly the limit and refuse one character more.

    check_run_id("onboard:user-123")   # returns it
    check_run_id("order-42::1")        # InvalidArgument: '::' is reserved for child runs

Lengths are counted in characters (Unicode code points), as PostgreSQL's
``length(text)`` counts them. At most 4 bytes per character keeps every id and
token well below the size of a btree index entry (about 2700 bytes).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from werkfluss.errors import InvalidArgument

#: The longest run id a caller may choose (``run_id=`` / ``start_run(…, run_id)``).
MAX_RUN_ID_LENGTH = 255

#: The longest workflow name (``@workflow(name=…)``, the default ``module.qualname``).
MAX_WORKFLOW_NAME_LENGTH = 255

#: The longest hook token (``hook(token=…)``, ``send``). Generated tokens are 47 characters.
MAX_TOKEN_LENGTH = 500

#: The longest schedule name. A tick's run id is ``schedule:<name>:<tick in UTC>``
#: (a manual trigger's ``schedule:<name>:manual:<time with microseconds>``), within
#: :data:`MAX_RUN_ID_LENGTH` for every name.
MAX_SCHEDULE_NAME_LENGTH = 200

#: Child runs get the id ``<parent id>::<seq>``; no run id a caller chooses may contain it.
CHILD_ID_SEPARATOR = "::"

# What counts as blank: the whitespace PostgreSQL's btrim(x, E' \t\n\r\v\f') removes too.
_BLANK = " \t\n\r\v\f"


def _text(value: Any, what: str, example: str) -> str:
    """``value`` as a non-blank string PostgreSQL can store, else :class:`InvalidArgument`."""
    if value is None:
        raise InvalidArgument(f"{what} is None; pass a string, e.g. {example}")
    if not isinstance(value, str):
        raise InvalidArgument(
            f"{what} must be a string, not {type(value).__name__}; e.g. {example}"
        )
    if not value.strip(_BLANK):
        raise InvalidArgument(f"{what} is empty; pass a string such as {example}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} contains a NUL character, which PostgreSQL text cannot hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what} is not valid Unicode text (it contains a lone surrogate)"
        ) from None
    return value


def _too_long(what: str, value: str, limit: int) -> InvalidArgument:
    return InvalidArgument(f"{what} is {len(value)} characters long; the limit is {limit}")


def check_name(name: Any, what: str, example: str) -> str:
    """Return ``name`` if it can name a step (or another definition): non-blank,
    storable text of at most :data:`MAX_WORKFLOW_NAME_LENGTH` characters."""
    _text(name, what, example)
    if len(name) > MAX_WORKFLOW_NAME_LENGTH:
        raise _too_long(what, name, MAX_WORKFLOW_NAME_LENGTH)
    return str(name)


def check_workflow_name(name: Any) -> str:
    """Return ``name`` if it can name a workflow; else raise :class:`InvalidArgument`."""
    _text(name, "the workflow name", "'app.onboard'")
    if len(name) > MAX_WORKFLOW_NAME_LENGTH:
        raise _too_long("the workflow name", name, MAX_WORKFLOW_NAME_LENGTH)
    return str(name)


def check_run_id(run_id: Any) -> str:
    """Return ``run_id`` if a caller may choose it for a new run; else raise :class:`InvalidArgument`."""
    _text(run_id, "run_id", "'onboard:user-123'")
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise _too_long("run_id", run_id, MAX_RUN_ID_LENGTH)
    if CHILD_ID_SEPARATOR in run_id:
        raise InvalidArgument(
            f"run_id {run_id!r} contains {CHILD_ID_SEPARATOR!r}, which is reserved for child runs "
            f"(their ids are '<parent id>{CHILD_ID_SEPARATOR}<seq>'); use another separator, "
            "e.g. 'order:42'"
        )
    return str(run_id)


def check_existing_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it can name an existing run (a child's id included)."""
    return _text(run_id, "run_id", "'onboard:user-123'")


def check_token(token: Any) -> str:
    """Return ``token`` if a hook can have it; else raise :class:`InvalidArgument`."""
    _text(token, "the hook token", "'order-42:approval'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _too_long("the hook token", token, MAX_TOKEN_LENGTH)
    return str(token)


def check_schedule_name(name: Any) -> str:
    """Return ``name`` if a schedule can have it: at most
    :data:`MAX_SCHEDULE_NAME_LENGTH` characters, without ``':'`` (it separates
    the name from the tick in run ids) or whitespace; else raise :class:`InvalidArgument`."""
    _text(name, "the schedule name", "'nightly-report'")
    if len(name) > MAX_SCHEDULE_NAME_LENGTH:
        raise _too_long("the schedule name", name, MAX_SCHEDULE_NAME_LENGTH)
    if ":" in name:
        raise InvalidArgument(
            f"the schedule name {name!r} contains ':', which separates the name from the tick in "
            "the ids of its runs ('schedule:<name>:<tick>'); use another separator, e.g. 'reports.nightly'"
        )
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in name):
        raise InvalidArgument(
            f"the schedule name {name!r} contains whitespace or a control character; "
            "use e.g. 'nightly-report'"
        )
    return str(name)
