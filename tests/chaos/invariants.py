"""The invariants a chaos scenario must keep, checked from what was collected:
the database (runs, events with their commit timestamps, hooks and payloads),
the side effects the step bodies wrote, the faults as they were injected, and
the workers' logs.

Each check returns a :class:`Check` whose ``violations`` name the offending runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from werkfluss.limits import CHILD_ID_SEPARATOR as CHILD

from . import plan
from .harness import log_time, pid_of, read_log, skew_seconds
from .scenario import Collected

_NONCE = re.compile(r"\[([0-9a-f]{16})\]")


@dataclass
class Check:
    name: str
    description: str
    violations: list[str] = field(default_factory=list)
    tags: list[str | None] = field(default_factory=list)  # per violation: what it looks like, if known
    runs: list[str] = field(default_factory=list)  # offending runs, for evidence from the logs
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, run_id: str | None, message: str, tag: str | None = None) -> None:
        self.violations.append(f"[{tag}] {message}" if tag else message)
        self.tags.append(tag)
        if run_id is not None and run_id not in self.runs:
            self.runs.append(run_id)


# -- what every run is -------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    kind: str  # a shape, or "kid" / "doomed_kid" for child runs
    n: int
    j: int = 0  # kid: which of its parent's kids


def identify(run_id: str, runs: dict[str, dict[str, Any]]) -> Identity | None:
    if CHILD in run_id:
        parent_id, _, seq_text = run_id.rpartition(CHILD)
        parent = identify(parent_id, runs)
        if parent is None or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if parent.kind == "parent" and 1 <= seq <= plan.KIDS:
            return Identity("kid", parent.n, seq - 1)
        if parent.kind == "doomed" and seq == 2 and plan.doomed_waits_on_child(parent.n):
            return Identity("doomed_kid", parent.n)
        return None
    match = re.fullmatch(r"chaos-([a-z]+)-(\d+)", run_id)
    if match is None or match.group(1) not in plan.SHAPES:
        return None
    return Identity(match.group(1), int(match.group(2)))


Entry = tuple[int, str, str, str]  # seq, kind, name, status


def expected_log(who: Identity) -> list[Entry]:
    n = who.n
    if who.kind == "chain":
        return [(i, "step", "chaos.chain_step", "completed") for i in range(1, plan.CHAIN_LENGTH + 1)]
    if who.kind == "fanout":
        return [(i, "step", "chaos.fan_step", "completed") for i in range(1, plan.FAN_WIDTH + 1)]
    if who.kind == "flaky":
        log = [(i, "step", "chaos.flaky_step", "completed") for i in range(1, plan.FLAKY_STEPS + 1)]
        if plan.flaky_mode(n) != "clean":
            log.append((plan.FLAKY_STEPS + 1, "step", "chaos.hopeless_step", "failed"))
        return log
    if who.kind == "sleeper":
        return [(1, "step", "chaos.nap_step", "completed"), (2, "sleep", "sleep", "completed"),
                (3, "step", "chaos.nap_step", "completed"), (4, "sleep", "sleep", "completed"),
                (5, "step", "chaos.nap_step", "completed")]
    if who.kind == "approval":
        token = plan.approval_token(n)
        head = [(1, "hook", token, "completed"), (2, "step", "chaos.approval_step", "completed")]
        if plan.approval_mode(n) == "timeout":
            # wait(timeout=): the wait (seq 3) races a durable timer (seq 4); the
            # timer fires first and the wait, never received, records nothing.
            return [*head, (4, "sleep", "sleep", "completed"),
                    (5, "step", "chaos.approval_step", "completed")]
        return [*head, (3, "receive", token, "completed"), (4, "step", "chaos.approval_step", "completed")]
    if who.kind == "parent":
        # A child's record is written when its outcome reaches the parent: failed
        # if the child failed (the parent catches the RunFailed).
        return [*((s, "child", "chaos.kid", "failed" if plan.kid_fails(n, s - 1) else "completed")
                  for s in range(1, plan.KIDS + 1)),
                (plan.KIDS + 1, "step", "chaos.parent_step", "completed")]
    if who.kind == "kid":
        last = ((3, "step", "chaos.kid_refuses", "failed") if plan.kid_fails(n, who.j)
                else (3, "step", "chaos.kid_step", "completed"))
        return [(1, "step", "chaos.kid_step", "completed"), (2, "sleep", "sleep", "completed"), last]
    if who.kind == "doomed":
        # Cancelled while it waits: on its sleep (recorded when it starts), or on its
        # child (recorded only when the child's outcome reaches it: never, here).
        if plan.doomed_waits_on_child(n):
            return [(1, "step", "chaos.doomed_step", "completed")]
        return [(1, "step", "chaos.doomed_step", "completed"), (2, "sleep", "sleep", "completed")]
    if who.kind == "doomed_kid":
        return [(1, "hook", plan.doomed_token(n), "completed")]
    raise AssertionError(who)


def expected_outcome(who: Identity) -> tuple[str, Any, str | None, str | None]:
    """(status, result value, error type, error message prefix)."""
    n = who.n
    if who.kind == "chain":
        return "completed", plan.chain_value(n), None, None
    if who.kind == "fanout":
        return "completed", plan.fanout_value(n), None, None
    if who.kind == "flaky":
        if plan.flaky_mode(n) == "fails":
            return "failed", None, "ValueError", plan.hopeless_message(n)
        return "completed", plan.flaky_value(n), None, None
    if who.kind == "sleeper":
        return "completed", plan.sleeper_value(n), None, None
    if who.kind == "approval":
        return "completed", plan.approval_value(n), None, None
    if who.kind == "parent":
        return "completed", plan.parent_value(n), None, None
    if who.kind == "kid":
        if plan.kid_fails(n, who.j):
            return "failed", None, "werkfluss.errors.FatalError", plan.kid_message(n, who.j)
        return "completed", plan.kid_value(n, who.j), None, None
    return "cancelled", None, None, None  # doomed and doomed_kid


def sleep_seconds(who: Identity, seq: int) -> float | None:
    if who.kind == "sleeper":
        return plan.sleeper_naps(who.n)[0 if seq == 2 else 1]
    if who.kind == "kid":
        return 0.3
    if who.kind == "approval":
        return plan.APPROVAL_TIMEOUT
    if who.kind == "doomed":
        return 3600.0
    return None


def expected_bodies(who: Identity, seq: int, step: str) -> int:
    """Step bodies a fault-free run executes for this step call."""
    if step == "chaos.flaky_step":
        return plan.flaky_failures(who.n, seq) + 1
    if step == "chaos.hopeless_step":
        return plan.HOPELESS_RETRIES + 1
    return 1


def recorded_nonce(event: dict[str, Any]) -> str | None:
    if event["status"] == "completed" and isinstance(event["output"], dict):
        value = event["output"].get("x")
        return value if isinstance(value, str) else None
    message = (event["error"] or {}).get("message", "")
    match = _NONCE.search(message)
    return match.group(1) if match else None


def _wake_at(event: dict[str, Any]) -> float | None:
    output = event.get("output")
    if isinstance(output, dict) and isinstance(output.get("wake_at"), str):
        return datetime.fromisoformat(output["wake_at"]).timestamp()
    return None


# -- the checks --------------------------------------------------------------------------

def self_takeovers(data: Collected) -> dict[str, list[tuple[float, int]]]:
    """run -> (when, pid) of every ``worker.lease_taken_over`` in which a worker took a run
    over from itself: its lease had expired while it was still executing the run."""
    found: dict[str, list[tuple[float, int]]] = {}
    for pid, event, stamp in worker_events(data, "worker.lease_taken_over"):
        if event.get("previous_worker_id") == event.get("worker_id") and isinstance(event.get("run_id"), str):
            found.setdefault(event["run_id"], []).append((stamp, pid))
    return found


def check_all(data: Collected) -> list[Check]:
    identities = {run_id: identify(run_id, data.runs) for run_id in data.runs}
    return [
        check_outcomes(data, identities),
        check_logs(data, identities),
        check_recorded_once(data, identities),
        check_no_body_after_record(data),
        check_log_closed(data),
        check_sleeps(data, identities),
        check_drained(data),
        check_pickup(data),
        check_hooks(data),
        check_cancels(data),
        check_claim_loops(data),
        check_takeover(data),
        check_stale_worker(data),
        check_reexecutions(data, identities),
    ]


def check_outcomes(data: Collected, identities: dict[str, Identity | None]) -> Check:
    check = Check("outcome", "every run reached its correct terminal state and result")
    planned = {run.run_id for run in data.workload}
    for run_id in sorted(planned - set(data.runs)):
        check.fail(run_id, f"{run_id}: never started")
    for run_id, run in sorted(data.runs.items()):
        who = identities[run_id]
        if who is None:
            check.fail(run_id, f"{run_id}: a run nobody started")
            continue
        status, value, error_type, message = expected_outcome(who)
        if run["status"] != status:
            detail = run["error"].get("message", "")[:120] if run["error"] else ""
            unfinished = run["status"] not in ("completed", "failed", "cancelled")
            check.fail(run_id, f"{run_id}: {run['status']} (expected {status}) {detail}".rstrip(),
                       "unfinished" if unfinished else None)
            continue
        if status == "completed":
            result = run["result"]
            if not isinstance(result, dict) or result.get("value") != value:
                got = result.get("value") if isinstance(result, dict) else result
                check.fail(run_id, f"{run_id}: result {got!r}, expected {value!r}")
        elif status == "failed":
            error = run["error"] or {}
            if error.get("type") != error_type or not str(error.get("message", "")).startswith(message or ""):
                check.fail(run_id, f"{run_id}: error {error.get('type')}: {error.get('message')!r}, "
                                   f"expected {error_type}: {message}…")
        if who.kind == "parent" and run["status"] == "completed":
            kids = sorted(r for r, info in data.runs.items() if info["parent_id"] == run_id)
            wanted = [f"{run_id}{CHILD}{s}" for s in range(1, plan.KIDS + 1)]
            if kids != wanted:
                check.fail(run_id, f"{run_id}: child runs {kids}, expected {wanted}")
        if CHILD in run_id and run["parent_id"] != run_id.rpartition(CHILD)[0]:
            check.fail(run_id, f"{run_id}: parent_id {run['parent_id']!r}")
    return check


def check_logs(data: Collected, identities: dict[str, Identity | None]) -> Check:
    check = Check("log", "each run's log is exactly the expected records, seq by seq, no gaps "
                         "(a cancelled run's a prefix of it), with the expected attempts")
    for run_id, run in sorted(data.runs.items()):
        who = identities[run_id]
        if who is None:
            continue
        events = data.events.get(run_id, [])
        got = [(e["seq"], e["kind"], e["name"], e["status"]) for e in events]
        want = expected_log(who)
        if run["status"] == "cancelled":
            if got != want[:len(got)]:
                check.fail(run_id, f"{run_id} (cancelled): log {got}, expected a prefix of {want}")
        elif run["status"] in ("completed", "failed") and got != want:
            check.fail(run_id, f"{run_id}: log {got}, expected {want}")
        for event in events:
            if event["kind"] != "step":
                continue
            attempts = expected_bodies(who, event["seq"], event["name"])
            if event["attempts"] != attempts:
                check.fail(run_id, f"{run_id} seq {event['seq']}: recorded attempts {event['attempts']}, "
                                   f"expected {attempts}")
    return check


def check_recorded_once(data: Collected, identities: dict[str, Identity | None]) -> Check:
    check = Check("recorded-once", "every (run, seq) holds one record, of an execution that really "
                                   "happened, and the workflow went on with exactly the recorded values")
    selves = self_takeovers(data)
    for run_id, events in sorted(data.events.items()):
        seqs = Counter(e["seq"] for e in events)
        for seq, count in seqs.items():
            if count > 1:
                check.fail(run_id, f"{run_id} seq {seq}: recorded {count} times")
        trace: list[Any] = []
        for event in events:
            if event["kind"] != "step":
                continue
            nonce = recorded_nonce(event)
            rows = data.effects.get((run_id, event["seq"]), [])
            match = [r for r in rows if r["nonce"] == nonce]
            if not match:
                check.fail(run_id, f"{run_id} seq {event['seq']}: recorded execution {nonce} never ran")
            elif event["status"] == "completed" and event["output"].get("pid") != match[0]["pid"]:
                check.fail(run_id, f"{run_id} seq {event['seq']}: recorded pid {event['output'].get('pid')}"
                                   f" but execution {nonce} ran in pid {match[0]['pid']}")
            if event["status"] == "completed":
                trace.append(event["output"].get("x"))
            else:
                trace.append((event["error"] or {}).get("message"))
        run = data.runs.get(run_id)
        if run is None:
            continue
        if run["status"] == "completed" and isinstance(run["result"], dict):
            if run["result"].get("trace") != trace:
                twice = [pid for _, pid in selves.get(run_id, [])]
                check.fail(run_id, f"{run_id}: the workflow went on with {run['result'].get('trace')}, "
                                   f"the log holds {trace}"
                                   + (f" (pid {twice[0]} took the run over from itself while executing it)"
                                      if twice else ""),
                           "self-takeover" if twice else None)
        elif run["status"] == "failed" and events and events[-1]["status"] == "failed":
            recorded = (events[-1]["error"] or {}).get("message")
            if (run["error"] or {}).get("message") != recorded:
                check.fail(run_id, f"{run_id}: failed with {(run['error'] or {}).get('message')!r}, "
                                   f"the log's last failure is {recorded!r}")
    for (run_id, seq), rows in sorted(data.effects.items()):
        run = data.runs.get(run_id)
        recorded = any(e["seq"] == seq for e in data.events.get(run_id, []))
        if not recorded and (run is None or run["status"] != "cancelled"):
            unfinished = run is not None and run["status"] not in ("completed", "failed", "cancelled")
            check.fail(run_id, f"{run_id} seq {seq}: {len(rows)} bodies ran, nothing recorded, and the run "
                               f"is {run['status'] if run else 'missing'}",
                       "unfinished" if unfinished else None)
    return check


def check_no_body_after_record(data: Collected) -> Check:
    check = Check("no-body-after-record",
                  "no step body started after its record committed (body start on the machine's "
                  "monotonic clock vs. pg_xact_commit_timestamp of the record)")
    tolerance = data.clock_tolerance
    check.info.append(f"clock tolerance {tolerance * 1000:.1f} ms")
    for run_id, events in sorted(data.events.items()):
        for event in events:
            if event["kind"] != "step" or event["committed"] is None:
                continue
            for row in data.effects.get((run_id, event["seq"]), []):
                late = row["started"] - event["committed"]
                if late > tolerance:
                    thawed = any(s.pid == row["pid"] and row["started"] >= s.stopped for s in data.stops)
                    check.fail(run_id, f"{run_id} seq {event['seq']}: body {row['nonce']} (pid {row['pid']}, "
                                       f"attempt {row['attempt']}) started {late * 1000:.0f} ms after the "
                                       f"record committed", "stale-after-thaw" if thawed else None)
            if event["committed"] is None:
                check.fail(run_id, f"{run_id} seq {event['seq']}: no commit timestamp")
    return check


def check_log_closed(data: Collected) -> Check:
    check = Check("log-closed", "nothing was recorded for a run after it ended (completed, failed, "
                                "cancelled): every record committed no later than the run's end")
    for run_id, run in sorted(data.runs.items()):
        if run["status"] not in ("completed", "failed", "cancelled") or run["committed"] is None:
            continue
        for event in data.events.get(run_id, []):
            if event["committed"] is not None and event["committed"] > run["committed"]:
                check.fail(run_id, f"{run_id} seq {event['seq']} ({event['kind']}) committed "
                                   f"{(event['committed'] - run['committed']) * 1000:.0f} ms after the run "
                                   f"was {run['status']}")
    return check


# How long an outcome's record may take to commit after the outcome reached the
# workflow, beyond the worker's lease (a write retried through a cut stops once
# the worker's heartbeat no longer vouches for it, at the latest a lease later):
# a sleep that began from that outcome is at most this far ahead of the commit.
OUTCOME_TO_COMMIT = 5.0


def check_sleeps(data: Collected, identities: dict[str, Identity | None]) -> Check:
    check = Check("sleeps", "a durable sleep's wake time is its start plus its duration on the "
                            "database's clock, and nothing after it started before that time")
    tolerance = data.clock_tolerance + 0.003
    for run_id, events in sorted(data.events.items()):
        who = identities.get(run_id)
        if who is None:
            continue
        by_seq = {e["seq"]: e for e in events}
        for event in events:
            if event["kind"] != "sleep":
                continue
            wake = _wake_at(event)
            seconds = sleep_seconds(who, event["seq"])
            if wake is None or seconds is None:
                check.fail(run_id, f"{run_id} seq {event['seq']}: sleep record without a wake time")
                continue
            # The sleep began no later than its own record committed. (It may begin a
            # moment before the record preceding it commits: an outcome reaches the
            # workflow as soon as it is known, while its record is being written;
            # what must wait for commits is step bodies, checked elsewhere.)
            began = wake - seconds
            committed = event["committed"]
            before = max((e["committed"] for e in events if e["seq"] < event["seq"] and e["committed"]),
                         default=None)
            if committed is not None and began > committed + tolerance:
                check.fail(run_id, f"{run_id} seq {event['seq']}: sleep of {seconds}s, wake_at "
                                   f"{event['output']['wake_at']}: began {began - committed:.3f}s after its "
                                   f"own record committed")
            elif (before is not None
                  and began < before - tolerance - OUTCOME_TO_COMMIT - 2 * data.settings.lease):
                check.fail(run_id, f"{run_id} seq {event['seq']}: sleep of {seconds}s, wake_at "
                                   f"{event['output']['wake_at']}: began {before - began:.3f}s before the "
                                   f"record preceding it committed")
            following = by_seq.get(event["seq"] + 1)
            if following is None:
                continue
            if following["kind"] == "step":
                for row in data.effects.get((run_id, following["seq"]), []):
                    if row["started"] < wake - tolerance:
                        check.fail(run_id, f"{run_id} seq {following['seq']}: body started "
                                           f"{(wake - row['started']) * 1000:.0f} ms before the sleep's wake "
                                           f"time (pid {row['pid']})")
            elif following["kind"] == "race" and isinstance(following["output"], dict) \
                    and following["output"].get("index") == 1 and following["committed"] < wake - tolerance:
                check.fail(run_id, f"{run_id} seq {following['seq']}: the timeout won the race "
                                   f"{(wake - following['committed']) * 1000:.0f} ms before its wake time")
    return check


def check_drained(data: Collected) -> Check:
    check = Check("drained", f"every run ended within {data.settings.drain_timeout:.0f}s of the faults "
                             "stopping")
    alive = {w["pid"] for w in data.workers if w["alive_at_end"]}
    unfinished = {row[0] for row in data.pickup.unfinished}
    for row in data.pickup.unfinished:
        (run_id, status, waiting_on, worker_id, available_at, leased, claims, wakeups, children, last_seq,
         claimable, parent_status) = row
        extra = ""
        if parent_status in ("completed", "failed", "cancelled"):
            tag = "orphan"
            run, parent = data.runs.get(run_id, {}), data.runs.get(run_id.rpartition(CHILD)[0], {})
            if run.get("created") and parent.get("committed"):
                extra = (f"; created {run['created'] - parent['committed']:+.3f}s from the commit that "
                         f"made its parent {parent_status}")
        elif claimable:
            tag = "claimable"  # new, due, or its lease expired: any worker may claim it
        elif leased and pid_of(worker_id) in alive:
            tag = "held"  # by a worker that is up and renews the lease, yet nothing happens
        elif status == "waiting" and any(f"run:{u}" in (waiting_on or "") for u in unfinished):
            tag = "blocked"  # waits for a child that is itself stuck
        elif available_at not in (None, "infinity"):
            tag = "asleep"  # due only later
        else:
            tag = "stranded"
        check.fail(run_id, f"{run_id}: still {status} (waiting_on={waiting_on}, worker={worker_id}, "
                           f"available_at={available_at}, leased={leased}, claims={claims}, "
                           f"wakeups={wakeups}, children: {children or 'none'}, last seq {last_seq}{extra})",
                   tag)
    if data.pickup.drained is not None:
        check.info.append(f"drained {data.pickup.drained - data.pickup.calm:.1f}s after faults stopped")
    elif data.pickup.gave_up:
        check.info.append(f"stopped waiting {time_since(data)}s after faults stopped: {data.pickup.gave_up}")
    return check


def time_since(data: Collected) -> str:
    return f"{data.ended - data.pickup.calm:.1f}" if data.ended else "?"


def check_pickup(data: Collected) -> Check:
    bound = data.settings.lease + data.settings.pickup_margin
    check = Check("pickup", f"once faults stopped, no run stayed claimable and unclaimed (while a worker "
                            f"had a free slot) for more than lease + margin = {bound:.1f}s")
    for run_id, waited in sorted(data.pickup.worst_idle.items(), key=lambda kv: -kv[1]):
        if waited > bound:
            check.fail(run_id, f"{run_id}: claimable and unclaimed for {waited:.1f}s")
    worst = max(data.pickup.worst.values(), default=0.0)
    worst_idle = max(data.pickup.worst_idle.values(), default=0.0)
    check.info.append(f"longest wait for a claim after faults stopped: {worst_idle:.2f}s with free slots, "
                      f"{worst:.2f}s in all ({data.pickup.samples} samples)")
    return check


def check_hooks(data: Collected) -> Check:
    check = Check("hooks", "every payload sent was stored once, consumed once by its run's wait, "
                           "and is in the run's result; no send was refused on its first answer")
    approvals = [r for r in data.workload if r.shape == "approval"]
    early_kept = 0
    for run in approvals:
        token = plan.approval_token(run.n)
        rows = data.payloads.get(token, [])
        mode = plan.approval_mode(run.n)
        if mode == "timeout":
            if rows:
                check.fail(run.run_id, f"{run.run_id}: payloads for a token nobody sent to: {rows}")
            continue
        sent = data.sender.get(token)
        if sent is None:
            check.fail(run.run_id, f"{run.run_id}: the sender never finished sending to {token}")
        elif sent["outcome"] not in ("delivered", "refused-after-error"):
            check.fail(run.run_id, f"{run.run_id}: send to {token}: {sent['outcome']} "
                                   f"(attempts {sent['attempts']})")
        if len(rows) != 1:
            check.fail(run.run_id, f"{run.run_id}: {len(rows)} payload rows for {token}")
            continue
        row = rows[0]
        if row["payload"] != plan.approval_payload(run.n):
            check.fail(run.run_id, f"{run.run_id}: stored payload {row['payload']!r}")
        status = data.runs.get(run.run_id, {}).get("status")
        receive = [e for e in data.events.get(run.run_id, []) if e["kind"] == "receive"]
        if status == "completed":
            if row["consumed_run"] != run.run_id or row["consumed_seq"] != 3:
                check.fail(run.run_id, f"{run.run_id}: payload consumed by {row['consumed_run']} "
                                       f"seq {row['consumed_seq']}")
            if len(receive) != 1 or receive[0]["output"] != row["payload"]:
                check.fail(run.run_id, f"{run.run_id}: receive records {[e['output'] for e in receive]}")
        hook = data.hooks.get(token)
        if hook is not None and row["received"] < hook["created"]:
            early_kept += 1
    sent_early = sum(1 for r in approvals if plan.approval_mode(r.n) == "early")
    sent_late = sum(1 for r in approvals if plan.approval_mode(r.n) == "late")
    retried = sum(1 for s in data.sender.values() if len(s.get("attempts", [])) > 1)
    check.info.append(f"payloads sent: {sent_early} before their run started, {sent_late} after; "
                      f"{early_kept} arrived before their hook existed; {retried} sends retried; "
                      f"{len(approvals) - sent_early - sent_late} waits timed out by design")
    for token, rows in data.payloads.items():
        if not token.endswith(":approval"):
            check.fail(None, f"payload for unexpected token {token}: {rows}")
    return check


def check_cancels(data: Collected) -> Check:
    check = Check("cancels", "engine.cancel() of a run that cannot have ended answered True "
                             "(or False only after a failed attempt that may have committed)")
    for run in data.workload:
        if run.shape != "doomed":
            continue
        record = data.cancels.get(run.run_id)
        if record is None:
            check.fail(run.run_id, f"{run.run_id}: never cancelled")
            continue
        answers = record["attempts"]
        answered_false_after_error = answers and answers[-1] is False and len(answers) > 1
        if not answers or (answers[-1] is not True and not answered_false_after_error):
            check.fail(run.run_id, f"{run.run_id}: cancel answered {answers}")
    return check


LOOP_CLAIMS, LOOP_SECONDS = 5, 5.0


def check_claim_loops(data: Collected) -> Check:
    check = Check("claim-loop", f"no worker claimed one run {LOOP_CLAIMS} times within {LOOP_SECONDS:g}s "
                                f"without recording anything for it in between (a claim/suspend loop)")
    for worker in data.workers:
        shift = skew_seconds(worker["skew"])
        claims: dict[str, list[float]] = {}
        for event in read_log(Path(worker["log"])):
            if event.get("event") == "run.claimed" and isinstance(event.get("run_id"), str):
                stamp = log_time(event)
                if stamp is not None:
                    claims.setdefault(event["run_id"], []).append(stamp - shift)
        for run_id, times in sorted(claims.items()):
            times.sort()
            commits = [e["committed"] for e in data.events.get(run_id, []) if e["committed"]]
            for i in range(len(times) - LOOP_CLAIMS + 1):
                first, last = times[i], times[i + LOOP_CLAIMS - 1]
                if last - first <= LOOP_SECONDS and not any(first < c < last for c in commits):
                    clock = worker["skew"] or "right"
                    check.fail(run_id, f"{run_id}: claimed {LOOP_CLAIMS} times in {last - first:.1f}s by "
                                       f"{worker['name']} (pid {worker['pid']}, clock {clock}), nothing "
                                       f"recorded in between", "skewed" if worker["skew"] else None)
                    break
    return check


def check_takeover(data: Collected) -> Check:
    # Its lease runs out within one lease of the freeze; then a worker with a free slot
    # claims it. A second lease allows for workers whose slots are all busy.
    bound = 2 * data.settings.lease + data.settings.pickup_margin
    check = Check("takeover", f"the runs of a SIGSTOPped worker were taken over by others within two "
                              f"leases + margin = {bound:.1f}s of the freeze (unless the database or the "
                              f"network was cut meanwhile)")
    cuts = [f for f in data.faults if f.kind in ("restart", "terminate", "stall", "blip")]
    delays: list[float] = []
    for stop in data.stops:
        if any(f.began <= stop.stopped + bound and f.ended >= stop.stopped for f in cuts):
            check.info.append(f"pid {stop.pid} frozen at {stop.stopped - data.t0:.1f}s: not judged, the "
                              f"database or network was cut meanwhile")
            continue
        for run_id, (seen, by) in sorted(stop.taken_over.items()):
            delays.append(seen - stop.stopped)
            if seen - stop.stopped > bound:
                check.fail(run_id, f"{run_id}: held by frozen pid {stop.pid}, taken over by {by} only "
                                   f"{seen - stop.stopped:.1f}s after the freeze")
        for run_id in stop.never:
            check.fail(run_id, f"{run_id}: held by frozen pid {stop.pid}, not taken over in the "
                               f"{stop.resumed - stop.stopped:.1f}s it was frozen (then it was thawed)",
                       "open-transaction" if stop.open_transactions not in ([], ["none"]) else None)
        if stop.open_transactions:
            check.info.append(f"pid {stop.pid} frozen at {stop.stopped - data.t0:.1f}s; sessions idle in "
                              f"transaction while its runs waited: {'; '.join(stop.open_transactions)}")
    if delays:
        check.info.append(f"takeovers seen after {min(delays):.1f}-{max(delays):.1f}s ({len(delays)} runs)")
    return check


def check_stale_worker(data: Collected) -> Check:
    check = Check("stale-worker", "a SIGSTOPped worker wrote nothing for a run after another worker "
                                  "took it over (records and results carry the writer's pid)")
    cancelled_by_test = {run_id: rec["began"] for run_id, rec in data.cancels.items()}
    bodies_by_run: dict[str, list[list[dict[str, Any]]]] = {}
    for (effect_run, _), rows in data.effects.items():
        bodies_by_run.setdefault(effect_run, []).append(rows)
    stale_bodies = 0
    for stop in data.stops:
        log = next((w["log"] for w in data.workers if w["pid"] == stop.pid), None)
        claims: dict[str, list[float]] = {}
        if log is not None:
            for event in read_log(Path(log)):
                if event.get("event") == "run.claimed" and isinstance(event.get("run_id"), str):
                    stamp = log_time(event)
                    if stamp is not None:
                        claims.setdefault(event["run_id"], []).append(stamp)
        takeovers = dict(stop.taken_over)
        for run_id, seen in stop.gone.items():
            root = run_id.split(":")[0]
            if root not in cancelled_by_test:
                takeovers[run_id] = (seen, "?")
        for run_id, (seen, by) in takeovers.items():
            # Until the stale worker claims the run again itself (after it was handed on).
            until = min((t for t in claims.get(run_id, []) if t > seen), default=float("inf"))
            for event in data.events.get(run_id, []):
                output = event["output"] if isinstance(event["output"], dict) else {}
                if output.get("pid") == stop.pid and event["committed"] is not None \
                        and seen < event["committed"] < until:
                    check.fail(run_id, f"{run_id} seq {event['seq']}: recorded by stale pid {stop.pid} "
                                       f"{event['committed'] - seen:.2f}s after {by} was seen holding "
                                       "the run")
            run = data.runs.get(run_id)
            if run and isinstance(run["result"], dict) and run["result"].get("pid") == stop.pid \
                    and run["committed"] is not None and seen < run["committed"] < until:
                check.fail(run_id, f"{run_id}: finished by stale pid {stop.pid} "
                                   f"{run['committed'] - seen:.2f}s after the takeover")
            for rows in bodies_by_run.get(run_id, []):
                stale_bodies += sum(1 for r in rows if r["pid"] == stop.pid and seen < r["started"] < until)
        check.info.append(f"pid {stop.pid}: frozen {stop.resumed - stop.stopped:.1f}s holding "
                          f"{len(stop.held)} runs, {len(takeovers)} seen taken over or ended by another")
    if data.stops:
        check.info.append(f"step bodies the stale workers started after the takeover: {stale_bodies}")
    return check


def _sessions(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive attempts by one process form a session (a claim starts a new one, at
    attempt 1). Sessions of different processes may overlap in time (a stale worker going
    on beside the one that took over); they are ordered by their first start."""
    sessions: list[list[dict[str, Any]]] = []
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["started"]):
        by_pid.setdefault(row["pid"], []).append(row)
    for own in by_pid.values():
        for row in own:
            last = sessions[-1][-1] if sessions and sessions[-1][-1]["pid"] == row["pid"] else None
            if last is not None and row["attempt"] == last["attempt"] + 1:
                sessions[-1].append(row)
            else:
                sessions.append([row])
    return sorted(sessions, key=lambda s: s[0]["started"])


GRACE = {"kill": 0.0, "cancel": 1.0}  # others: a lease + 1 s (a cut-off worker may go on until it notices)


def worker_events(data: Collected, name: str) -> Iterator[tuple[int, dict[str, Any], float]]:
    """(pid, event, time) for every ``name`` event the workers logged, times corrected
    for a skewed worker's clock."""
    for worker in data.workers:
        shift = skew_seconds(worker["skew"])
        for event in read_log(Path(worker["log"])):
            if event.get("event") == name:
                stamp = log_time(event)
                if stamp is not None:
                    yield worker["pid"], event, stamp - shift


def dropped_as_cancelled(data: Collected) -> dict[tuple[int, str], list[float]]:
    """(pid, run) -> when that worker logged ``run.cancelled`` for a run the test never
    cancelled (nor any of its ancestors); times corrected for a skewed worker's clock."""
    cancelled = set(data.cancels)
    found: dict[tuple[int, str], list[float]] = {}
    for pid, event, stamp in worker_events(data, "run.cancelled"):
        run_id = event.get("run_id")
        if isinstance(run_id, str) and run_id.split(":")[0] not in cancelled:
            found.setdefault((pid, run_id), []).append(stamp)
    return found


def reaped_at(data: Collected) -> dict[int, list[float]]:
    """pid -> when that worker learnt it had been reaped: its heartbeat lapsed for a
    whole lease by the database's clock (a starved machine can do that with no
    injected fault), so its runs were given away; times corrected for skew."""
    found: dict[int, list[float]] = {}
    for pid, _, stamp in worker_events(data, "worker.reaped"):
        found.setdefault(pid, []).append(stamp)
    return found


def check_reexecutions(data: Collected, identities: dict[str, Identity | None]) -> Check:
    check = Check("reexecution", "a step body ran again only if the execution before it was in flight at a "
                                 "fault that hit its worker (or at the run's cancel)")
    lease_grace = data.settings.lease + 1.0
    dropped = dropped_as_cancelled(data)
    selves = self_takeovers(data)
    reaped = reaped_at(data)
    by_kind: Counter[str] = Counter()
    per_fault: Counter[int] = Counter()
    reexecuted = 0
    bodies = 0
    for (run_id, seq), rows in sorted(data.effects.items()):
        who = identities.get(run_id)
        if who is None:
            continue
        rows = sorted(rows, key=lambda r: r["started"])
        bodies += len(rows)
        event = next((e for e in data.events.get(run_id, []) if e["seq"] == seq), None)
        nonce = recorded_nonce(event) if event else None
        reexecuted += max(0, len(rows) - expected_bodies(who, seq, rows[0]["step"]))
        sessions = _sessions(rows)
        run = data.runs.get(run_id, {})
        for session in sessions:
            if any(r["nonce"] == nonce for r in session):
                continue
            began = session[0]["started"]
            ended = run.get("status") in ("completed", "failed", "cancelled")
            # It was given up for the execution that was recorded, if that one began after its
            # last attempt; else for the next that did (a stale worker's parallel execution
            # is no such reason).
            recorded = next((s for s in sessions if any(r["nonce"] == nonce for r in s)), None)
            later = [s[0]["started"] for s in sessions if s[0]["started"] > session[-1]["started"]]
            if recorded is not None and recorded[0]["started"] > session[-1]["started"]:
                until = recorded[0]["started"]
            elif later:
                until = min(later)
            elif event is not None and event["committed"] is not None:
                until = event["committed"]
            elif not ended:
                # The last execution of a step whose run never ended: that run is stuck
                # ('drained' says why), and this execution with it.
                check.fail(run_id, f"{run_id} seq {seq}: execution by pid {session[0]['pid']} started "
                                   f"{began - data.t0:.2f}s, never recorded: the run did not end",
                           "unfinished")
                continue
            else:
                until = run.get("committed") or data.ended
            pid = session[0]["pid"]
            causes = [f for f in data.faults
                      if f.hits(pid, run_id) and f.began <= until
                      and f.ended + GRACE.get(f.kind, lease_grace) >= began]
            if causes:
                by_kind[causes[0].kind] += 1
                per_fault[id(causes[0])] += len(session)
                continue
            if any(began <= t <= until + lease_grace for t in reaped.get(pid, [])):
                by_kind["reaped"] += 1  # its heartbeat lapsed: its runs were given away by design
                continue
            near = [f"{f.kind}@{f.began - data.t0:.1f}s" for f in data.faults
                    if f.kind != "cancel" and abs(f.began - began) < 10]
            spurious = any(began <= t <= until for t in dropped.get((pid, run_id), []))
            itself = any(p == pid and began - 1 <= t <= until + 1 for t, p in selves.get(run_id, []))
            check.fail(run_id, f"{run_id} seq {seq}: execution by pid {pid} (attempts "
                               f"{[r['attempt'] for r in session]}, started {began - data.t0:.2f}s) was "
                               f"abandoned and run again at {until - data.t0:.2f}s with no fault hitting pid "
                               f"{pid} in between (faults nearby: {near})"
                               + ("; that worker logged run.cancelled for it, and nobody cancelled it"
                                  if spurious else "")
                               + ("; that worker took the run over from itself meanwhile" if itself else ""),
                       "spurious-cancel" if spurious else "self-takeover" if itself else None)
    check.info.append(f"step bodies executed: {bodies}; re-executed beyond a fault-free run: {reexecuted}; "
                      f"abandoned executions by cause: {dict(by_kind) or 'none'}")
    # The bound: a worker holds at most `concurrency` runs, each with at most FAN_WIDTH step
    # bodies in flight at once (a fan-out), so one fault that hits one worker can leave at
    # most concurrency x FAN_WIDTH bodies abandoned.
    kills = [f for f in data.faults if f.kind == "kill"]
    if kills:
        worst = max(per_fault.get(id(f), 0) for f in kills)
        check.info.append(f"most bodies abandoned by one kill: {worst} (bound: concurrency x fan-out = "
                          f"{data.settings.concurrency * plan.FAN_WIDTH})")
    return check
