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
from werkfluss.runs import RunHandle, RunInfo, StepRecord
from werkfluss.runtime.context import StepInfo, step_info
from werkfluss.runtime.hooks import Hook, hook
from werkfluss.runtime.racing import race
from werkfluss.runtime.steps import step
from werkfluss.runtime.timers import sleep
from werkfluss.runtime.workflows import workflow
from werkfluss.telemetry import configure_logging
from werkfluss.worker import Worker

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
