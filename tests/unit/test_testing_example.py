"""The example in ``werkfluss.testing``'s docstring, run as written."""

from __future__ import annotations

from werkfluss import sleep, step, workflow
from werkfluss.testing import Simulation

sent: list[str] = []


@step(name="app.fetch_data")
async def fetch_data(user: str) -> dict[str, str]:
    return {"user": user, "email": f"{user}@example.com"}


@step(name="app.send_email")
async def send_email(address: str) -> None:
    sent.append(address)


@workflow(name="app.onboard")
async def onboard(user: str) -> str:
    data = await fetch_data(user)
    await sleep("1 day")
    await send_email(data["email"])
    return "done"


async def test_onboarding_sends_one_email() -> None:
    sim = Simulation()
    run = sim.start(onboard, "user-123")
    await run.run_steps()
    assert run.status == "sleeping"
    assert run.wake_at is not None
    sim.clock.advance(86400 - 1)
    run.tick()
    assert run.status == "sleeping"  # not yet
    sim.clock.set(run.wake_at)
    run.tick()
    await run.run_steps()
    assert run.result() == "done"
    assert [r.name for r in run.steps()] == ["app.fetch_data", "app.send_email"]
    assert sent == ["user-123@example.com"]
