"""Schema migrations: numbered files in ``sql/migrations``, applied once each.

``migrate`` is idempotent and safe when many processes run it at once: the
whole run happens in one transaction that first takes an advisory lock, so a
second migrator waits, then finds nothing left to do.

    applied = await migrate(connector)   # -> names of the migrations applied now
"""

from __future__ import annotations

import zlib

from werkfluss import telemetry
from werkfluss.errors import SchemaNotReady
from werkfluss.store.connector import Connector
from werkfluss.store.queries import load_migrations

# A stable 32-bit key for pg_advisory_xact_lock, derived from the schema name.
LOCK_KEY = zlib.crc32(b"werkfluss.migrate")


async def migrate(connector: Connector) -> list[str]:
    """Apply every migration not yet applied; return the names of those applied now."""
    log = telemetry.logger()
    applied_now: list[str] = []
    async with connector.transaction() as tx:
        await tx.fetch_all("migrations_lock", key=LOCK_KEY)
        # Only create the bookkeeping table when it is missing: a role without
        # CREATE on the database can still run an up-to-date migrate.
        (state,) = await tx.fetch_all("migrations_table_exists")
        if not state["exists"]:
            await tx.fetch_all("migrations_bootstrap")
        done = {row["version"] for row in await tx.fetch_all("migrations_applied")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await tx.execute_script(migration.sql)
            await tx.fetch_all("migrations_record", version=migration.version, name=migration.name)
            applied_now.append(f"{migration.version:04d}_{migration.name}")
    for name in applied_now:
        log.info("migrate.applied", migration=name)
    return applied_now


async def check_schema(connector: Connector) -> None:
    """Raise :class:`SchemaNotReady` unless every migration this code knows is applied.

    A database with *newer* migrations is accepted: migrations are additive
    first, so older workers keep running during a rolling deploy.
    """
    try:
        row = await connector.fetch_one("schema_state")
    except SchemaNotReady:
        raise SchemaNotReady("no werkfluss schema found") from None
    present = set(row["versions"] if row else [])
    missing = [m for m in load_migrations() if m.version not in present]
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise SchemaNotReady(f"missing migrations: {names}")
