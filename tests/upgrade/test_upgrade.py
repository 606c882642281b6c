"""Runs recorded by the previous release resume after upgrading.

``legacy-0.1.sql`` holds runs that werkfluss 0.1 left mid-flight (see
``record_legacy.py``): a sleep, hook waits, a race still pending, a race
already decided by its record, a hook wait with a timeout, a parent waiting
on a child. Here they are loaded into a database at the 0.1 schema, the
database is migrated, and this release's worker finishes every one of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from werkfluss import Engine
from werkfluss.store.queries import load_migrations

from . import legacy_app

FIXTURE = Path(__file__).with_name("legacy-0.1.sql")

SHIFT = """
CREATE TEMP TABLE shift AS
SELECT now() - max(created_at) AS off FROM werkfluss.runs;
UPDATE werkfluss.runs SET created_at = created_at + (SELECT off FROM shift),
       started_at = started_at + (SELECT off FROM shift), updated_at = updated_at + (SELECT off FROM shift),
       wake_at = wake_at + (SELECT off FROM shift), finished_at = finished_at + (SELECT off FROM shift),
       deadline = deadline + (SELECT off FROM shift);
UPDATE werkfluss.events SET started_at = started_at + (SELECT off FROM shift),
       finished_at = finished_at + (SELECT off FROM shift),
       output = CASE WHEN kind = 'sleep'
                     THEN json_build_object('wake_at',
                                            (output ->> 'wake_at')::timestamptz + (SELECT off FROM shift))
                     ELSE output END;
UPDATE werkfluss.queue SET available_at = available_at + (SELECT off FROM shift)
 WHERE available_at < 'infinity';
UPDATE werkfluss.hooks SET created_at = created_at + (SELECT off FROM shift);
UPDATE werkfluss.hook_payloads SET received_at = received_at + (SELECT off FROM shift);
DROP TABLE shift;
"""


def _load_legacy(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""CREATE SCHEMA IF NOT EXISTS werkfluss;
                        CREATE TABLE werkfluss.migrations (version integer PRIMARY KEY, name text NOT NULL,
                               applied_at timestamptz NOT NULL DEFAULT now())""")
        for migration in load_migrations()[:4]:  # the schema of 0.1
            conn.execute(migration.sql)
            conn.execute("INSERT INTO werkfluss.migrations (version, name) VALUES (%s, %s)",
                         [migration.version, migration.name])
        conn.execute(FIXTURE.read_text())
        # The fixture was recorded at some moment; move every time in it so that
        # it was recorded just now (its sleeps and timeouts are still ahead).
        conn.execute(SHIFT)


@pytest.fixture
def legacy_dsn(fresh_dsn: str) -> str:
    _load_legacy(fresh_dsn)
    return fresh_dsn


async def test_runs_recorded_by_the_previous_release_finish_after_upgrading(legacy_dsn: str) -> None:
    async with Engine(legacy_dsn) as engine:
        assert [m.split("_")[0] for m in await engine.migrate()] == [
            f"{m.version:04d}" for m in load_migrations()[4:]
        ]
        handles = {run_id: engine.handle(run_id) for run_id in (
            "legacy-nap", "legacy-approval", "legacy-race-pending", "legacy-race-decided",
            "legacy-timed", "legacy-parent",
        )}
        async with engine.worker(workflows=[
            legacy_app.nap, legacy_app.approval, legacy_app.race_pending, legacy_app.race_decided,
            legacy_app.timed_wait, legacy_app.parent, legacy_app.child,
        ], poll_interval="0.1s"):
            # Payloads arrive after the upgrade. The decided race got its sleep's
            # win recorded by 0.1: a payload for its first hook must not change that.
            await engine.send("legacy:approval", {"ok": True})
            await engine.send("legacy:race-pending", "first")
            await engine.send("legacy:race-decided", "too late")
            await engine.send("legacy:race-decided:second", "second")
            await engine.send("legacy:timed", "in time")
            await engine.send("legacy:child", "hello")
            results = dict(zip(handles, await asyncio.gather(
                *(h.result(timeout=30) for h in handles.values())), strict=True))
    assert results == {
        "legacy-nap": ["noted before 1", "noted after 1"],
        "legacy-approval": {"decision": {"ok": True}, "after": "noted decided"},
        "legacy-race-pending": [0, "first", "noted raced"],
        "legacy-race-decided": [1, None, "second", "noted done"],
        "legacy-timed": "in time",
        "legacy-parent": ["noted parent", "child got hello", "noted parent done"],
    }
