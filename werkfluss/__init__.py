"""werkfluss: durable workflows for Python that live entirely in PostgreSQL.

    from werkfluss import Engine, step, workflow

    @step
    async def fetch_data(user_id: str) -> dict: ...

    @workflow
    async def onboard(user_id: str) -> str:
        data = await fetch_data(user_id)
        return "done"

    async with Engine() as engine:
        await engine.migrate()
        handle = await engine.start(onboard, "user-123")
        async with engine.worker():
            print(await handle.result())
"""

from werkfluss.cron import Schedule
from werkfluss.engine import Engine
from werkfluss.errors import (
    AppImportError,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    FatalError,
    HookConflict,
    HookRefused,
    InvalidArgument,
    InvalidCron,
    InvalidDsn,
    InvalidTransition,
    NonDeterminismError,
    NotAWorkflowError,
    NotInRunError,
    QueueNotFound,
    RateLimitKeyError,
    RecordRefused,
    RunCancelled,
    RunFailed,
    RunIdConflict,
    RunNotFound,
    ScheduleNotFound,
    SchemaNotReady,
    SerializationError,
    StepFailed,
    UnknownTimezone,
    UnknownWorkflowError,
    ValueRefused,
    WerkflussError,
    WorkflowBlocked,
    WorkflowSandboxError,
)
from werkfluss.flow import Queue, RateLimit, StartOptions
from werkfluss.runs import RunHandle, RunInfo, StepRecord
from werkfluss.runtime.context import StepInfo, now, step_info, uuid4
from werkfluss.runtime.hooks import Hook, hook
from werkfluss.runtime.racing import race
from werkfluss.runtime.steps import step
from werkfluss.runtime.timers import sleep
from werkfluss.runtime.workflows import workflow
from werkfluss.store.flow import QueueInfo
from werkfluss.store.schedules import ScheduleInfo
from werkfluss.telemetry import configure_logging
from werkfluss.worker.worker import Worker

__version__ = "0.2.0"

__all__ = [
    "AppImportError",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "Engine",
    "FatalError",
    "Hook",
    "HookConflict",
    "HookRefused",
    "InvalidArgument",
    "InvalidCron",
    "InvalidDsn",
    "InvalidTransition",
    "NonDeterminismError",
    "NotAWorkflowError",
    "NotInRunError",
    "Queue",
    "QueueInfo",
    "QueueNotFound",
    "RateLimit",
    "RateLimitKeyError",
    "RecordRefused",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunIdConflict",
    "RunInfo",
    "RunNotFound",
    "Schedule",
    "ScheduleInfo",
    "ScheduleNotFound",
    "SchemaNotReady",
    "SerializationError",
    "StartOptions",
    "StepFailed",
    "StepInfo",
    "StepRecord",
    "UnknownTimezone",
    "UnknownWorkflowError",
    "ValueRefused",
    "WerkflussError",
    "Worker",
    "WorkflowBlocked",
    "WorkflowSandboxError",
    "configure_logging",
    "hook",
    "now",
    "race",
    "sleep",
    "step",
    "step_info",
    "uuid4",
    "workflow",
]
