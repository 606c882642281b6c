from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import WorkerProcess, sql
from .apps.effects_app import EFFECTS_DDL

APP = "tests.acceptance.apps.effects_app"


@pytest.fixture
def effects(dsn: str) -> str:
    """An empty side-effects table; returns the DSN."""
    sql(dsn, EFFECTS_DDL)
    sql(dsn, "TRUNCATE test_effects")
    return dsn


@pytest.fixture
def spawn(dsn: str, tmp_path: Path) -> Iterator[object]:
    """Start worker processes serving the effects app; all are killed at the end."""
    started: list[WorkerProcess] = []

    def _spawn(*args: str, name: str = "worker", env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(dsn, APP, *args, log_dir=tmp_path, name=name, env=env)
        started.append(worker)
        return worker

    yield _spawn
    for worker in started:
        worker.close()
