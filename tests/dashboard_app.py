"""Workflows and runs in every state, for the dashboard's tests; and the
dashboard's database role, granted exactly what docs/operations.md says.

    await seed(dsn)          # the runs of SEEDED, each in its state
    with dashboard_role(dsn, actions=True) as role_dsn: ...
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict

from werkfluss import Engine, FatalError, hook, sleep, step, workflow

from .helpers import ROOT, login_role, sql

ATTEMPTS: Counter[str] = Counter()


@step(name="tests.dash.fetch_data")
async def fetch_data(user: str) -> dict[str, str]:
    await asyncio.sleep(0.02)
    return {"user": user, "plan": "pro"}


@step(name="tests.dash.reserve_seat", retries=3, retry_delay=0.01)
async def reserve_seat(user: str) -> str:
    ATTEMPTS[user] += 1
    if ATTEMPTS[user] < 3:
        raise ConnectionError(f"the seat service timed out ({user})")
    return f"seat-{user}"


@step(name="tests.dash.charge")
async def charge(user: str) -> None:
    raise FatalError(f"card declined for {user}")


@workflow(name="tests.dash.welcome")
async def welcome(user: str) -> str:
    await fetch_data(user)
    return f"welcome {user}"


@workflow(name="tests.dash.onboard")
async def onboard(user: str) -> str:
    await fetch_data(user)
    await reserve_seat(user)
    await sleep(0.2)
    decision = await hook(token=f"approve:{user}").wait()
    greeting = await welcome(user)
    return f"{greeting}: {decision}"


@workflow(name="tests.dash.checkout")
async def checkout(user: str) -> None:
    await fetch_data(user)
    await charge(user)


@workflow(name="tests.dash.nap")
async def nap(user: str) -> None:
    await fetch_data(user)
    await sleep("2h")


@workflow(name="tests.dash.hold")
async def hold(token: str) -> object:
    return await hook(token=token).wait()


@workflow(name="tests.dash.parent")
async def parent(user: str) -> object:
    return await hold(f"child-approve:{user}")


WORKFLOWS = [welcome, onboard, checkout, nap, hold, parent]

#: run id -> the state seed() leaves it in.
SEEDED = {
    "onboard:ada": "completed",  # steps, a retried step, a sleep, a hook wait, a child run
    "onboard:ada::6": "completed",  # its child
    "onboard:bob": "waiting",  # on hook approve:bob
    "checkout:cy": "failed",  # FatalError, with a traceback
    "nap:dee": "sleeping",  # for two hours
    "parent:eve": "waiting",  # on its child run
    "parent:eve::1": "waiting",  # on hook child-approve:eve
    "typo:1": "pending",  # a workflow no worker serves
    "old:1": "pending",  # created three days ago
    **{f"hold:{n}": "waiting" for n in range(1, 7)},  # on hooks hold:N, for the actions
    **{f"fail:{n}": "failed" for n in range(1, 4)},
}


async def seed(dsn: str, *, timeout: float = 30.0) -> None:
    """Start the runs of :data:`SEEDED` and drive them to their states."""
    ATTEMPTS.clear()
    async with Engine(dsn) as engine:
        await engine.start(onboard, "ada", run_id="onboard:ada")
        await engine.start(onboard, "bob", run_id="onboard:bob")
        await engine.start(checkout, "cy", run_id="checkout:cy")
        await engine.start(nap, "dee", run_id="nap:dee")
        await engine.start(parent, "eve", run_id="parent:eve")
        for n in range(1, 7):
            await engine.start(hold, f"hold:{n}", run_id=f"hold:{n}")
        for n in range(1, 4):
            await engine.start(checkout, f"f{n}", run_id=f"fail:{n}")
        async with engine.worker(workflows=WORKFLOWS, concurrency=32):
            sent = False
            deadline = time.monotonic() + timeout
            while True:
                states = {r.run_id: r.status for r in await engine.runs(limit=1000)}
                if not sent and states.get("onboard:ada") == "waiting":
                    await engine.send("approve:ada", {"approved": True, "by": "ops"})
                    sent = True
                if all(states.get(run_id) == state for run_id, state in SEEDED.items()
                       if run_id not in ("typo:1", "old:1")):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"the seeded runs did not reach their states: {states}")
                await asyncio.sleep(0.02)
        await engine.start("tests.dash.unserved", "x", run_id="typo:1")
        await engine.start("tests.dash.archive", "y", run_id="old:1")
    sql(dsn, "UPDATE werkfluss.runs SET created_at = now() - interval '3 days' WHERE id = 'old:1'")


# --- the dashboard's role, as documented --------------------------------------------------


def documented_grants(role: str, *, actions: bool) -> list[str]:
    """The statements of the "dashboard grants" block in docs/operations.md, for ``role``
    (without the CREATE ROLE; only the read-only part unless ``actions``)."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    match = re.search(r"```sql\n-- dashboard grants\n(.*?)```", text, re.DOTALL)
    assert match, "docs/operations.md has no ```sql block starting with '-- dashboard grants'"
    block = match[1]
    if not actions:
        block = block.split("-- for the actions")[0]
    body = "\n".join(line.split("--")[0] for line in block.splitlines())
    statements = [" ".join(s.split()) for s in body.split(";") if s.strip()]
    return [s.replace("werkfluss_dashboard", f'"{role}"') for s in statements
            if not s.upper().startswith("CREATE ROLE")]


@contextmanager
def dashboard_role(dsn: str, *, actions: bool) -> Iterator[str]:
    """A login role granted exactly the documented dashboard grants; yields its DSN."""
    with login_role(dsn, prefix="werkfluss_test_dash") as role_dsn:
        role = conninfo_to_dict(role_dsn)["user"]
        for statement in documented_grants(role, actions=actions):
            sql(dsn, statement)
        yield role_dsn
