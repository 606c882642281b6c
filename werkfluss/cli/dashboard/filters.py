"""The run list's filters, read from a query string and checked.

    filters = RunFilters.parse({"status": "failed", "age": "24h", "prefix": "order:"})
    filters.since_seconds   # 86400.0
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from werkfluss import limits
from werkfluss.durations import parse_duration
from werkfluss.errors import InvalidArgument
from werkfluss.runs import STATUSES

#: The ages the filter bar offers (any duration is accepted in the URL).
AGES = (("", "any time"), ("15m", "15 minutes"), ("1h", "1 hour"), ("24h", "24 hours"),
        ("7d", "7 days"), ("30d", "30 days"))
LIMITS = (50, 100, 200, 500)
DEFAULT_LIMIT = 50


@dataclass(frozen=True)
class RunFilters:
    """What the run list is narrowed to; an empty field is no filter."""

    status: str = ""
    workflow: str = ""
    age: str = ""
    prefix: str = ""
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RunFilters:
        """Read and check the filters; raises :class:`InvalidArgument` with what to fix."""
        status = params.get("status", "").strip()
        if status and status not in STATUSES:
            raise InvalidArgument(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        workflow = params.get("workflow", "").strip()
        if workflow:
            limits.check_workflow_name(workflow)
        age = params.get("age", "").strip()
        if age:
            parse_duration(age, what="age", allow_zero=False)
        prefix = params.get("prefix", "")
        if len(prefix) > limits.MAX_RUN_ID_LENGTH:
            raise InvalidArgument(
                f"the id prefix is {len(prefix)} characters long; run ids have at most "
                f"{limits.MAX_RUN_ID_LENGTH}"
            )
        raw_limit = params.get("limit", "").strip() or str(DEFAULT_LIMIT)
        try:
            limit = int(raw_limit)
        except ValueError:
            raise InvalidArgument(f"limit must be a whole number from 1 to 500, got {raw_limit!r}") from None
        if not 1 <= limit <= 500:
            raise InvalidArgument(f"limit must be a whole number from 1 to 500, got {limit}")
        return cls(status=status, workflow=workflow, age=age, prefix=prefix, limit=limit)

    @property
    def since_seconds(self) -> float | None:
        return parse_duration(self.age, what="age") if self.age else None

    def query(self, **changes: str | int) -> str:
        """The query string of these filters with ``changes`` applied (empty fields left out)."""
        fields = {"status": self.status, "workflow": self.workflow, "age": self.age,
                  "prefix": self.prefix, "limit": self.limit if self.limit != DEFAULT_LIMIT else ""}
        fields.update(changes)
        return urllib.parse.urlencode({k: v for k, v in fields.items() if v not in ("", None)})
