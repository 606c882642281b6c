"""The commands about runs: list, inspect, start, steer.

    werkfluss runs [--status failed] [--workflow NAME] [--limit 20] [--json]
    werkfluss show RUN [--json]
    werkfluss start NAME '["user-123"]' [--run-id ID] [--timeout 1h] [--wait [--wait-timeout 30s]]
                    [--queue Q] [--concurrency-key K] [--priority N] [--delay 10m]
    werkfluss send TOKEN '{"approved": true}'
    werkfluss cancel RUN
    werkfluss retry RUN

A pending run whose workflow no live worker serves is pointed out (``runs``,
``show``, ``start --wait``, ``retry``): it would otherwise wait silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from werkfluss import limits
from werkfluss.cli.output import cell, dump, format_runs, format_steps, run_json, seconds_text, short
from werkfluss.cli.workers import no_worker_note
from werkfluss.durations import parse_duration
from werkfluss.engine import Engine
from werkfluss.errors import InvalidArgument, RunCancelled, RunFailed
from werkfluss.flow import StartOptions
from werkfluss.runs import STATUSES, RunHandle, RunInfo
from werkfluss.store.workers import RunLease

UNSERVED_CHECK_AFTER = 2.0  # seconds `start --wait` waits before it checks that a worker serves the run


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    runs = sub.add_parser("runs", parents=[common], help="list recent runs, newest first")
    runs.add_argument("--status", choices=STATUSES, help="only runs in this state")
    runs.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs.set_defaults(handler=cmd_runs, check=check_runs)

    show = sub.add_parser("show", parents=[common], help="show one run and its log")
    show.add_argument("run_id", metavar="RUN", help="the run's id")
    show.add_argument("--json", action="store_true", help="print JSON, with tracebacks")
    show.set_defaults(handler=cmd_show, check=check_run_id)

    start = sub.add_parser("start", parents=[common], help="start a run by workflow name")
    start.add_argument("name", metavar="NAME", help="the workflow's registered name, e.g. app.onboard")
    start.add_argument("args", metavar="ARGS", nargs="?", default="[]",
                       help="positional arguments as a JSON array (default [])")
    start.add_argument("--run-id", metavar="ID",
                       help="idempotency key: starting again returns the same run")
    start.add_argument("--timeout", metavar="DURATION",
                       help="fail the run if it has not finished this long after the start, "
                            "e.g. 90s, 1h, 7d (default: no timeout)")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it as JSON")
    start.add_argument("--wait-timeout", metavar="DURATION",
                       help="with --wait: give up waiting after this long, e.g. 30s, 5m (the run goes "
                            "on; default: wait until it finishes)")
    start.add_argument("--queue", metavar="QUEUE", help="the queue (default: the workflow's queue)")
    start.add_argument("--concurrency-key", metavar="KEY", help="the key of the queue's per-key limit")
    start.add_argument("--priority", type=int, metavar="N", help="0 (first, the default) to 1000000")
    start.add_argument("--delay", metavar="DURATION", help="start no earlier than this from now, e.g. 10m")
    start.set_defaults(handler=cmd_start, check=check_start)

    send = sub.add_parser("send", parents=[common], help="deliver a payload to a hook")
    send.add_argument("token", metavar="TOKEN", help="the hook's token")
    send.add_argument("payload", metavar="JSON", nargs="?", default="null",
                      help="the payload as JSON (default null)")
    send.set_defaults(handler=cmd_send, check=check_send)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a run and its child runs")
    cancel.add_argument("run_id", metavar="RUN", help="the run's id")
    cancel.set_defaults(handler=cmd_cancel, check=check_run_id)

    retry = sub.add_parser(
        "retry", parents=[common], help="resume a failed or cancelled run from where it failed",
        description="Resume a failed or cancelled run: the steps that completed keep their "
                    "recorded results; the failed step (or child run) runs again.",
    )
    retry.add_argument("run_id", metavar="RUN", help="the run's id")
    retry.set_defaults(handler=cmd_retry, check=check_run_id)


# --- arguments, checked before connecting ------------------------------------------------


def check_runs(args: argparse.Namespace) -> None:
    if args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {args.limit}")


def check_run_id(args: argparse.Namespace) -> None:
    limits.check_existing_run_id(args.run_id)


def check_start(args: argparse.Namespace) -> None:
    limits.check_workflow_name(args.name)
    if args.run_id is not None:
        limits.check_run_id(args.run_id)
    if args.timeout is not None:
        args.timeout = parse_duration(args.timeout, what="--timeout", allow_zero=False)
    if args.wait_timeout is not None:
        args.wait_timeout = parse_duration(args.wait_timeout, what="--wait-timeout")
        if args.wait_timeout == 0:
            raise InvalidArgument("--wait-timeout must be a positive duration, e.g. 30s or 5m, got 0")
    try:
        args.positional = json.loads(args.args)
    except json.JSONDecodeError as err:
        raise InvalidArgument(
            f"ARGS must be a JSON array, e.g. '[\"user-123\"]'; {short(args.args)!r} is not JSON: {err}"
        ) from None
    if not isinstance(args.positional, list):
        raise InvalidArgument(f"ARGS must be a JSON array, e.g. '[\"user-123\"]', not {short(args.args)}")
    args.options = StartOptions(queue=args.queue, concurrency_key=args.concurrency_key,
                                priority=args.priority, delay=args.delay)


def check_send(args: argparse.Namespace) -> None:
    limits.check_token(args.token)
    try:
        args.payload_value = json.loads(args.payload)
    except json.JSONDecodeError as err:
        raise InvalidArgument(
            f"JSON must be a JSON value, e.g. '{{\"approved\": true}}'; {short(args.payload)!r} "
            f"is not JSON: {err}"
        ) from None


# --- commands ----------------------------------------------------------------------------


async def _notes(engine: Engine, runs: list[RunInfo], prog: str) -> dict[str, str]:
    """``{workflow: note}`` for the pending runs' workflows that no live worker serves."""
    pending = {r.workflow for r in runs if r.status == "pending"}
    if not pending:
        return {}
    served = await engine.served_workflows()
    return {name: no_worker_note(name, served, prog) for name in sorted(pending - served)}


async def cmd_runs(engine: Engine, args: argparse.Namespace) -> int:
    runs = await engine.runs(status=args.status, workflow=args.workflow, limit=args.limit)
    notes = await _notes(engine, runs, args.prog)
    if args.json:
        print(dump([
            {**run_json(r), "note": notes.get(r.workflow) if r.status == "pending" else None}
            for r in runs
        ]))
    elif runs:
        print(format_runs(runs))
        for note in notes.values():
            print(f"\n  pending runs wait: {note}")
    else:
        print("no runs")
    return 0


def _lease_lines(lease: RunLease) -> list[tuple[str, str]]:
    who = f"{lease.host}:{lease.pid}" if lease.host else "a worker no longer registered"
    lines = [("held by", f"{who} (worker {lease.worker_id})")]
    if lease.expires_at is None or lease.seconds_left is None:
        return lines
    if lease.seconds_left >= 0:
        lines.append(("lease", f"until {cell(lease.expires_at)} ({seconds_text(lease.seconds_left)} "
                               "from now), renewed by each heartbeat; if the worker dies, another "
                               "takes the run over then"))
    else:
        lines.append(("lease", f"expired {seconds_text(lease.seconds_left)} ago ({cell(lease.expires_at)}): "
                               "the worker stopped beating; the next live worker's reaper frees the run"))
    return lines


async def cmd_show(engine: Engine, args: argparse.Namespace) -> int:
    handle = engine.handle(args.run_id)
    info = await handle.info()
    steps = await handle.log()
    lease = await handle.lease() if info.status == "running" else None
    notes = await _notes(engine, [info], args.prog)
    if lease is not None and lease.seconds_left is not None and lease.seconds_left < 0:
        served = await engine.served_workflows()
        if info.workflow not in served:
            notes[info.workflow] = no_worker_note(info.workflow, served, args.prog)
    note = notes.get(info.workflow)
    if args.json:
        out = run_json(info)
        out["lease"] = None if lease is None else lease.__dict__
        out["note"] = note
        out["steps"] = [s.__dict__ for s in steps]
        print(dump(out))
        return 0
    print(f"run {info.run_id}")
    fields: list[tuple[str, Any]] = [
        ("workflow", info.workflow), ("status", info.status), ("args", info.args),
        ("kwargs", info.kwargs or None), ("created", info.created_at),
        ("finished", info.finished_at), ("wakes at", info.wake_at),
        ("waits on", info.waiting_on), ("parent", info.parent_id), ("queue", info.queue),
        ("key", info.concurrency_key), ("priority", info.priority or None), ("blocked by", info.blocked_by),
        ("result", info.result if info.status == "completed" else None),
    ]
    for label, value in fields:
        if value is not None:
            print(f"  {label + ':':10} {cell(value, 200)}")
    for label, text in _lease_lines(lease) if lease is not None else []:
        print(f"  {label + ':':10} {text}")
    if note:
        print(f"  {'note:':10} {note}")
    if info.error:
        print(f"  {'error:':10} {info.error.get('type')}: {info.error.get('message')}")
    print(format_steps(steps) if steps else "  (no steps recorded)")
    return 0


async def _unserved_note(engine: Engine, handle: RunHandle, prog: str) -> str | None:
    info = await handle.info()
    if info.status != "pending":
        return None
    return (await _notes(engine, [info], prog)).get(info.workflow)


async def _wait(engine: Engine, handle: RunHandle, timeout: float | None, prog: str) -> Any:
    """The run's result. Without a ``timeout``, says once on stderr if the run
    waits for a worker that nobody runs; with one, says it when it runs out."""
    if timeout is not None:
        try:
            return await handle.result(timeout=timeout)
        except TimeoutError:
            status = await handle.status()
            note = await _unserved_note(engine, handle, prog)
            raise TimeoutError(
                f"run {handle.run_id} did not finish within {seconds_text(timeout)} (status: {status})"
                + (f"; {note}" if note else "")
            ) from None
    try:
        return await handle.result(timeout=UNSERVED_CHECK_AFTER)
    except TimeoutError:
        note = await _unserved_note(engine, handle, prog)
        if note:
            print(f"{prog}: run {handle.run_id} is pending: {note}; still waiting "
                  "(Ctrl-C stops waiting; the run stays)", file=sys.stderr, flush=True)
    return await handle.result()


async def cmd_start(engine: Engine, args: argparse.Namespace) -> int:
    handle = await engine.start(args.name, *args.positional, run_id=args.run_id, timeout=args.timeout,
                                options=args.options)
    print(handle.run_id, flush=True)
    if args.wait:
        try:
            result = await _wait(engine, handle, args.wait_timeout, args.prog)
        except (RunFailed, RunCancelled, TimeoutError) as err:
            print(f"werkfluss: {err}", file=sys.stderr)
            return 1
        print(dump(result))
    return 0


async def cmd_send(engine: Engine, args: argparse.Namespace) -> int:
    outcome = await engine.send(args.token, args.payload_value)
    print("delivered" if outcome == "delivered" else "stored; no hook with this token yet")
    return 0


async def cmd_cancel(engine: Engine, args: argparse.Namespace) -> int:
    cancelled = await engine.cancel(args.run_id)
    print("cancelled" if cancelled else "already finished; nothing to cancel")
    return 0


async def cmd_retry(engine: Engine, args: argparse.Namespace) -> int:
    handle = engine.handle(args.run_id)
    if not await engine.retry(args.run_id):
        status = await handle.status()
        print(f"nothing to retry: run {args.run_id} is {status}; only failed or cancelled runs "
              "are retried")
        return 0
    print(f"retried: run {args.run_id} is pending and resumes from where it failed")
    note = await _unserved_note(engine, handle, args.prog)
    if note:
        print(f"  note: {note}")
    return 0
