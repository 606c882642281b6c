"""Child runs: awaiting a workflow inside a workflow.

    @workflow
    async def ship(order_id: str) -> str:
        label = await print_label(order_id)     # print_label is a @workflow: a child run
        return label

The child is a run of its own (own id ``<parent id>:<seq>``, own log, linked
by ``parent_id``), started in the same transaction that records its start in
the parent's log, so a replayed parent never starts it twice. The parent
waits passively (status ``waiting``) and returns the child's result, or
raises :class:`RunFailed` / :class:`RunCancelled`, which it may catch.
Children that are still running when their parent ends are cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkfluss import serializer
from werkfluss.errors import RunCancelled, RunFailed
from werkfluss.runtime import context
from werkfluss.runtime.replay import RunExecution
from werkfluss.runtime.waits import parse_time, utcnow
from werkfluss.store.recorder import Lease

if TYPE_CHECKING:
    from werkfluss.runtime.workflows import Workflow


def child_run_id(parent_id: str, seq: int) -> str:
    return f"{parent_id}:{seq}"


def call_child(
    execution: RunExecution, workflow: Workflow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    seq, recorded = execution.next_seq("child", workflow.name)
    execution.children_started = True  # the run cancels unfinished children when it ends
    return execution.register_call(_child(execution, seq, recorded, workflow, args, kwargs), seq)


async def _child(
    execution: RunExecution,
    seq: int,
    recorded: dict[str, Any] | None,
    workflow: Workflow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    execution.check(recorded)
    if recorded is not None:
        child_id = recorded["output"]["run_id"]
    else:
        await execution.before_durable()
        what = f"child workflow {workflow.name}"
        args_json = serializer.dumps(list(args), what=f"the arguments of {what}")
        kwargs_json = serializer.dumps(kwargs, what=f"the keyword arguments of {what}")
        child_id = child_run_id(execution.run_id, seq)
        lease: Lease = execution.lease
        await execution.write(execution.recorder.start_child(
            lease, seq, child_id, workflow.name, args_json, kwargs_json, utcnow()
        ))
    branch = context.race_branch_for(seq)
    if branch is not None:
        branch.child_id = child_id
    outcome = await execution.waits.until("child", child_id, lambda: execution.waits.children.get(child_id))
    if branch is not None:
        branch.event_time = parse_time(outcome["finished_at"]) if outcome.get("finished_at") else None
    if outcome["status"] == "completed":
        return serializer.decode(outcome["result"])
    if outcome["status"] == "failed":
        raise RunFailed.from_record(child_id, outcome.get("error"))
    raise RunCancelled(child_id)
