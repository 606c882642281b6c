"""Child runs: awaiting a workflow inside a workflow.

    @workflow
    async def ship(order_id: str) -> str:
        label = await print_label(order_id)     # print_label is a @workflow: a child run
        return label

The child is a run of its own (id ``<parent id>::<seq>``, own log, linked by
``parent_id``). Run ids containing ``::`` are reserved for child runs, so no
user-chosen id can take a child's. Starting a child is idempotent by its id:
a replayed parent never starts it twice. The parent waits passively (status
``waiting``) and returns the child's result, or raises :class:`RunFailed` /
:class:`RunCancelled`, which it may catch; the outcome it saw is recorded in
its own log. Children still running when their parent ends are cancelled.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from werkfluss import serializer
from werkfluss.errors import RunCancelled, RunFailed, SerializationError
from werkfluss.limits import CHILD_ID_SEPARATOR
from werkfluss.records import LogRecord
from werkfluss.runtime.context import error_from_json
from werkfluss.runtime.durable import DurableCall

if TYPE_CHECKING:
    from werkfluss.runtime.instance import WorkflowInstance
    from werkfluss.runtime.workflows import Workflow


def child_run_id(parent_id: str, seq: int) -> str:
    return f"{parent_id}{CHILD_ID_SEPARATOR}{seq}"


class ChildCall(DurableCall):
    """Awaiting a ``@workflow`` inside a run: a child run."""

    kind = "child"
    delivers = True

    def __init__(self, workflow: Workflow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.workflow = workflow
        self.name = workflow.name
        what = f"child workflow {workflow.name}"
        self._args = serializer.dumps(list(args), what=f"the arguments of {what}")
        self._kwargs = serializer.dumps(kwargs, what=f"the keyword arguments of {what}")
        self._input = f'{{"args":{self._args},"kwargs":{self._kwargs}}}'
        self.child_id = ""
        self.legacy = False  # started by an older release: its outcome is not recorded here

    def input_json(self) -> str:
        return self._input

    def begin(self, run: WorkflowInstance, seq: int) -> None:
        self.child_id = child_run_id(run.run_id, seq)
        self.wait_key = f"run:{self.child_id}"
        run.start_child(seq, self.child_id, self.workflow.name, self._args, self._kwargs)

    def restore(self, run: WorkflowInstance, seq: int, record: LogRecord) -> None:
        # A legacy record: the child's start, written by releases before 0.2.
        output = json.loads(record.output or "{}")
        self.child_id = str(output.get("run_id", f"{run.run_id}:{seq}"))
        self.wait_key = f"run:{self.child_id}"
        self.legacy = True
        run.has_children = True

    def deliverable(self, run: WorkflowInstance, seq: int) -> LogRecord | None:
        outcome = run.child_outcome(self.child_id)
        if outcome is None:
            return None
        head = f'{{"run_id":{json.dumps(self.child_id)},"status":{json.dumps(outcome.status)}'
        if outcome.status == "completed":
            output = f'{head},"result":{outcome.result or "null"}}}'
            return LogRecord(seq=seq, kind="child", name=self.name or "", status="completed",
                             input=self._input, output=output, started_at=outcome.finished_at)
        return LogRecord(seq=seq, kind="child", name=self.name or "", status="failed",
                         input=self._input, output=head + "}", error=outcome.error,
                         started_at=outcome.finished_at)

    def resolve(self, run: WorkflowInstance, record: LogRecord) -> Any:
        output = json.loads(record.output or "{}")
        child_id = str(output.get("run_id", self.child_id))
        status = output.get("status", record.status)
        if status == "completed":
            return _decode(output.get("result"))
        if status == "cancelled":
            raise RunCancelled(child_id)
        raise RunFailed.from_record(child_id, error_from_json(record.error))

    def cancel(self, run: WorkflowInstance, seq: int) -> None:
        if self.child_id:
            run.cancel_child(self.child_id)


def _decode(value: Any) -> Any:
    try:
        return serializer.decode(value)
    except SerializationError:
        raise
    except (Exception, RecursionError) as exc:
        raise SerializationError(f"{type(exc).__name__}: {exc}"[:500]) from None
