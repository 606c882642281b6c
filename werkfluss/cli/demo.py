"""``python -m werkfluss demo [onboard|approval]``: werkfluss in a few seconds.

``demo`` (or ``demo onboard``): the example werkfluss grew from, then a crash.

1. A run of ``onboard("user-123")`` — fetch the user's data, save it, send an
   email, return ``"done"`` — executed by a worker in this process; its log
   is printed.
2. Resumption: a worker *process* starts ``onboard("user-456")`` and is killed
   (SIGKILL) right after ``save_data`` is recorded, while ``send_email`` is in
   flight. Another worker takes the run over when the lease runs out and
   finishes it: ``fetch_data`` and ``save_data`` return their recorded results
   and are not executed again; only ``send_email`` runs again.

``demo approval``: a run waits on a hook (holding no worker), is approved
from the command line (``python -m werkfluss send``), and races a timeout;
a second run gets no answer and the timeout wins. ``--interactive`` waits
for you to send the approval yourself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid

from werkfluss import Engine, hook, race, sleep, step, workflow
from werkfluss.runs import RunHandle
from werkfluss.store import embedded
from werkfluss.store.connector import without_password

STEP_SECONDS = float(os.environ.get("WERKFLUSS_DEMO_STEP_SECONDS", "0.3"))
DEMO_LEASE = "2s"


def _say(message: str) -> None:
    print(f"    [pid {os.getpid()}] {message}", flush=True)


@step
async def fetch_data(user_id: str) -> dict:
    _say(f"fetch_data({user_id!r}) executing")
    await asyncio.sleep(STEP_SECONDS)
    return {"user_id": user_id, "email": f"{user_id}@example.com", "executed_by": os.getpid()}


@step
async def save_data(data: dict) -> dict:
    _say(f"save_data({data['user_id']!r}) executing")
    await asyncio.sleep(STEP_SECONDS)
    return {"saved": True, "executed_by": os.getpid()}


@step(retries=2, retry_delay="200ms")
async def send_email(data: dict) -> dict:
    _say(f"send_email({data['email']!r}) executing")
    await asyncio.sleep(STEP_SECONDS * 3)
    return {"sent_to": data["email"], "executed_by": os.getpid()}


@workflow(name="werkfluss.demo.onboard")
async def onboard(user_id: str) -> str:
    data = await fetch_data(user_id)
    await save_data(data)
    await send_email(data)
    return "done"


def _print_database(engine: Engine) -> None:
    """Which database the demo uses, and a psql command to look at its tables."""
    assert engine.dsn is not None
    if engine.embedded:
        print(f"  database: the embedded PostgreSQL in {embedded.default_data_dir()}")
        print(f"  psql:     {embedded.psql_command(engine.dsn)}")
        print("            (while a werkfluss process uses the server; `python -m werkfluss dsn --hold` "
              "keeps it up)")
    else:
        print(f"  database: {engine.connector.description}")
        bare = without_password(engine.dsn)
        print(f"  psql:     {embedded.psql_command(bare or engine.dsn, shipped=False)}")


async def print_log(handle: RunHandle) -> None:
    from werkfluss.cli.output import format_steps

    print(format_steps(await handle.log()))


async def _wait_for_steps(handle: RunHandle, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(await handle.steps()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo run did not reach {count} steps in {timeout}s")
        await asyncio.sleep(0.02)


async def run_demo(dsn: str | None = None) -> None:
    print("werkfluss demo")
    async with Engine(dsn) as engine:
        _print_database(engine)
        await engine.migrate()

        print("\n1. onboard('user-123'), executed by a worker in this process")
        handle = await engine.start(onboard, "user-123")
        async with engine.worker(concurrency=4, workflows=[onboard]):
            result = await handle.result(timeout=60)
        print(f"  run {handle.run_id}: {await handle.status()}, result {result!r}")
        await print_log(handle)

        print("\n2. a crash between steps, and resumption on another worker")
        assert engine.dsn is not None
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "werkfluss.worker", "--app", "werkfluss.cli.demo",
            "--dsn", engine.dsn, "--lease", DEMO_LEASE, "--log-level", "warning",
        )
        try:
            handle = await engine.start(onboard, "user-456")
            print(f"  started run {handle.run_id}; worker process {worker.pid} executes it")
            await _wait_for_steps(handle, 2, timeout=60)
        finally:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        print(f"  killed worker process {worker.pid} (SIGKILL) after save_data was recorded;")
        print(f"  status now: {await handle.status()}. The log so far:")
        await print_log(handle)
        print(f"  a new worker (pid {os.getpid()}) takes the run over once the lease "
              f"({DEMO_LEASE}) runs out:")
        async with engine.worker(concurrency=4, workflows=[onboard]):
            result = await handle.result(timeout=60)
        print(f"  run {handle.run_id}: {await handle.status()}, result {result!r}")
        await print_log(handle)
        steps = await handle.steps()
        first, second = steps[0].output["executed_by"], steps[-1].output["executed_by"]
        print(f"  fetch_data and save_data ran once, in process {first}; only send_email ran "
              f"again, in process {second}.")


# --- python -m werkfluss demo approval ------------------------------------------------


@step
async def request_approval(order_id: str, token: str) -> str:
    print(f"    approval requested for {order_id} (hook token {token!r})", flush=True)
    return token


@step
async def fulfil(order_id: str, decision: dict) -> str:
    return f"{order_id} shipped (approved by {decision.get('by', 'someone')})"


@step
async def reject(order_id: str, reason: str) -> str:
    return f"{order_id} not shipped: {reason}"


@workflow(name="werkfluss.demo.approve_order")
async def approve_order(order_id: str, wait_seconds: float) -> str:
    approval = hook(token=f"{order_id}:approval")
    await request_approval(order_id, approval.token)
    index, decision = await race(approval.wait(), sleep(wait_seconds))
    if index == 1:
        return await reject(order_id, f"no approval within {wait_seconds:g}s")
    if not decision.get("approved"):
        return await reject(order_id, "rejected")
    return await fulfil(order_id, decision)


async def _wait_for_status(handle: RunHandle, status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await handle.status() != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo run did not become {status} in {timeout}s")
        await asyncio.sleep(0.02)


async def run_approval_demo(dsn: str | None = None, *, interactive: bool = False) -> None:
    print("werkfluss demo: approval")
    suffix = uuid.uuid4().hex[:6]
    async with Engine(dsn) as engine:
        _print_database(engine)
        await engine.migrate()
        assert engine.dsn is not None
        async with engine.worker(concurrency=4, workflows=[approve_order]):
            order = f"order-{suffix}-1"
            wait_seconds = 120.0 if interactive else 30.0
            print(f"\n1. {order} waits for an approval (racing a {wait_seconds:g}s timeout)")
            handle = await engine.start(approve_order, order, wait_seconds)
            await _wait_for_status(handle, "waiting", timeout=30)
            info = await handle.info()
            print(f"  run {handle.run_id} is {info.status} on {info.waiting_on}; it holds no worker")
            if interactive:
                dsn_arg = "" if engine.embedded else f" --dsn '{engine.dsn}'"
                print("  approve it from another shell, within two minutes:")
                print(f"    python -m werkfluss send '{order}:approval' '{{\"approved\": true}}'{dsn_arg}")
            else:
                print("  approving it from the command line:")
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "werkfluss", "send", f"{order}:approval",
                    '{"approved": true, "by": "the demo"}', "--dsn", engine.dsn,
                )
                await proc.wait()
            print(f"  result: {await handle.result(timeout=wait_seconds + 30)!r}")
            await print_log(handle)

            order = f"order-{suffix}-2"
            print(f"\n2. {order}: nobody answers, and the 2s timeout wins the race")
            handle = await engine.start(approve_order, order, 2.0)
            print(f"  result: {await handle.result(timeout=60)!r}")
            await print_log(handle)
