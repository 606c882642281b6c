"""The SQL werkfluss runs, loaded by name from ``sql/``.

``sql/queries.sql`` holds every query under a ``-- name: <name>`` header;
``sql/migrations/NNNN_<name>.sql`` are the numbered schema migrations.

    >>> "claim_runs" in QUERIES
    True
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def sql_dir() -> Path:
    """The ``sql`` folder: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent.parent  # the werkfluss package
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(f"werkfluss cannot find its sql/ folder next to {here}")


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def load_queries() -> dict[str, str]:
    return parse_queries((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


@cache
def load_migrations() -> tuple[Migration, ...]:
    """All migrations, in version order.

    Versions start at 1 and each is used once. A gap in the numbering is
    allowed: migrations developed side by side reserve their numbers, and the
    one that lands first must not break the others' checkouts (the migrator
    applies, in order, every version the database has not recorded).
    """
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} must be named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    if found and found[0].version != 1:
        raise ValueError(f"the first migration must be 0001, found {found[0].version:04d}")
    for before, migration in itertools.pairwise(found):
        if migration.version == before.version:
            raise ValueError(f"migration number {migration.version:04d} is used twice")
    return tuple(found)


class _Queries:
    """Mapping-like access that fails loudly on a misspelled name."""

    def __getitem__(self, name: str) -> str:
        try:
            return load_queries()[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in sql/queries.sql") from None

    def __contains__(self, name: object) -> bool:
        return name in load_queries()


QUERIES = _Queries()
