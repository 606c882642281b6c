"""A workflow scheduled every second, for worker *processes* in the
acceptance tests (``python -m werkfluss.worker --app tests.acceptance.apps.sched_app``).

Importing this module declares the schedule; only workers started with it
serve (and so store) it.
"""

from __future__ import annotations

import datetime as dt

from werkfluss import step, workflow


@step
async def stamp(at: str) -> str:
    return at


@workflow(name="tests.sched_app.every_second", schedule="* * * * * *", catchup="all", overlap="allow",
          catchup_limit=100)
async def every_second(scheduled_at: dt.datetime) -> str:
    return await stamp(scheduled_at.isoformat())
