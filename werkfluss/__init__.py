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

from werkfluss.context import StepInfo, step_info
from werkfluss.engine import Engine
from werkfluss.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    FatalError,
    HookConflict,
    HookRefused,
    InvalidArgument,
    NonDeterminismError,
    NotAWorkflowError,
    NotInRunError,
    RunCancelled,
    RunFailed,
    RunIdConflict,
    RunNotFound,
    SchemaNotReady,
    SerializationError,
    StepFailed,
    UnknownWorkflowError,
    WerkflussError,
)
from werkfluss.hooks import Hook, hook
from werkfluss.racing import race
from werkfluss.runs import RunHandle, RunInfo, StepRecord
from werkfluss.steps import step
from werkfluss.telemetry import configure_logging
from werkfluss.timers import sleep
from werkfluss.worker import Worker
from werkfluss.workflows import workflow

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "Engine",
    "FatalError",
    "Hook",
    "HookConflict",
    "HookRefused",
    "InvalidArgument",
    "NonDeterminismError",
    "NotAWorkflowError",
    "NotInRunError",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunIdConflict",
    "RunInfo",
    "RunNotFound",
    "SchemaNotReady",
    "SerializationError",
    "StepFailed",
    "StepInfo",
    "StepRecord",
    "UnknownWorkflowError",
    "WerkflussError",
    "Worker",
    "configure_logging",
    "hook",
    "race",
    "sleep",
    "step",
    "step_info",
    "workflow",
]
