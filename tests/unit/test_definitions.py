"""@step and @workflow: options, names, the registry, and behaviour outside a run."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from werkfluss import step, step_info, workflow
from werkfluss.errors import InvalidArgument, NotAWorkflowError, NotInRunError, UnknownWorkflowError
from werkfluss.runtime import workflows
from werkfluss.runtime.steps import Step, StepOptions
from werkfluss.runtime.workflows import Workflow

MODULE = __name__  # "tests.unit.test_definitions"


@step
async def fetch_profile(user_id: str) -> dict[str, str]:
    return {"id": user_id, "name": "Ana"}


@step
def add(a: int, b: int) -> int:
    return a + b


@workflow
async def greet(name: str) -> str:
    return f"hello {name}"


# --- outside a run: plain functions ---------------------------------------------------


async def test_async_step_outside_a_run_returns_the_plain_functions_coroutine() -> None:
    result = fetch_profile("u1")
    assert inspect.iscoroutine(result)
    assert result.cr_code is fetch_profile.fn.__code__
    assert await result == {"id": "u1", "name": "Ana"}


def test_sync_step_outside_a_run_returns_its_value_directly() -> None:
    assert add(2, 3) == 5


async def test_workflow_outside_a_run_is_a_plain_coroutine_function() -> None:
    result = greet("Bo")
    assert inspect.iscoroutine(result)
    assert await result == "hello Bo"


async def test_a_workflow_called_outside_a_run_can_await_its_sync_steps() -> None:
    @workflow(name="tests.unit.plain_with_sync_step")
    async def totals(a: int, b: int) -> int:
        return await add(a, b) * 10

    assert await totals(2, 3) == 50
    assert add(2, 3) == 5  # and a direct call is still the plain function


def test_step_info_outside_a_step_raises_not_in_run() -> None:
    with pytest.raises(NotInRunError, match="only inside a @step"):
        step_info()


def test_step_info_inside_a_step_called_outside_a_run_raises_not_in_run() -> None:
    @step
    def who_am_i() -> Any:
        return step_info()

    with pytest.raises(NotInRunError):
        who_am_i()


def test_decorated_functions_keep_their_metadata() -> None:
    assert fetch_profile.__name__ == "fetch_profile"
    assert greet.__name__ == "greet"
    assert greet.__wrapped__ is greet.fn  # type: ignore[attr-defined]


# --- @step options ---------------------------------------------------------------------


def test_bare_step_has_default_options_and_module_qualname_name() -> None:
    assert isinstance(fetch_profile, Step)
    assert fetch_profile.name == f"{MODULE}.fetch_profile"
    assert fetch_profile.options == StepOptions(retries=0, retry_delay=1.0, backoff=2.0, timeout=None)
    assert fetch_profile.is_async is True
    assert add.is_async is False


def test_step_with_options_parses_them() -> None:
    @step(retries=3, retry_delay="500ms", backoff=3, timeout="2s", name="billing.charge")
    async def charge(card: str) -> str:
        return card

    assert charge.name == "billing.charge"
    assert charge.options == StepOptions(retries=3, retry_delay=0.5, backoff=3.0, timeout=2.0)


def test_step_default_name_of_a_nested_function_uses_its_qualname() -> None:
    @step()
    def inner() -> None:
        return None

    assert inner.name == (
        f"{MODULE}.test_step_default_name_of_a_nested_function_uses_its_qualname.<locals>.inner"
    )


def test_retry_delays_grow_by_the_backoff_factor() -> None:
    options = StepOptions(retries=3, retry_delay=0.5, backoff=2.0)
    assert [options.delay_before(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"retries": 1.5},
        {"retries": True},
        {"retries": "3"},
        {"backoff": 0.5},
        {"backoff": "2"},
        {"retry_delay": "soon"},
        {"retry_delay": -1},
        {"timeout": 0},
        {"timeout": "0s"},
        {"timeout": "-1s"},
        {"timeout": "a while"},
    ],
    ids=repr,
)
def test_invalid_step_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        step(**options)


def test_a_step_cannot_be_decorated_twice() -> None:
    with pytest.raises(InvalidArgument, match="already a step"):
        step(add)


def test_step_refuses_something_that_is_not_callable() -> None:
    with pytest.raises(InvalidArgument, match="needs a function"):
        step(42)  # type: ignore[call-overload]


# --- @workflow -------------------------------------------------------------------------


def test_bare_workflow_is_registered_under_module_qualname() -> None:
    assert isinstance(greet, Workflow)
    assert greet.name == f"{MODULE}.greet"
    assert workflows.get(f"{MODULE}.greet") is greet
    assert f"{MODULE}.greet" in workflows.registered()


def test_workflow_with_a_name_is_registered_under_that_name() -> None:
    @workflow(name="tests.unit.definitions.named")
    async def flow() -> int:
        return 1

    assert flow.name == "tests.unit.definitions.named"
    assert workflows.get("tests.unit.definitions.named") is flow


@pytest.mark.parametrize("name", ["tests.unit.definitions.sync", None])
def test_workflow_requires_an_async_def(name: str | None) -> None:
    def not_async() -> str:
        return "x"

    with pytest.raises(InvalidArgument, match="async def"):
        workflow(name=name)(not_async)


def test_an_async_generator_is_not_a_workflow() -> None:
    async def generator() -> Any:
        yield 1

    with pytest.raises(InvalidArgument, match="async def"):
        workflow(generator)


def test_a_workflow_cannot_be_decorated_twice() -> None:
    with pytest.raises(InvalidArgument, match="already a workflow"):
        workflow(greet)


def test_a_blank_workflow_name_is_refused() -> None:
    async def flow() -> None:
        return None

    with pytest.raises(InvalidArgument, match="is empty"):
        workflow(name="   ")(flow)


def test_an_empty_workflow_name_is_refused() -> None:
    async def flow() -> None:
        return None

    with pytest.raises(InvalidArgument, match="is empty"):
        workflow(name="")(flow)


def test_a_different_function_under_a_taken_name_is_refused() -> None:
    async def first() -> int:
        return 1

    async def second() -> int:
        return 2

    registered = workflow(name="tests.unit.definitions.taken")(first)
    with pytest.raises(InvalidArgument, match="already used by"):
        workflow(name="tests.unit.definitions.taken")(second)
    assert workflows.get("tests.unit.definitions.taken") is registered


def test_registering_the_same_function_again_is_fine() -> None:
    async def flow() -> int:
        return 1

    workflow(name="tests.unit.definitions.again")(flow)
    again = workflow(name="tests.unit.definitions.again")(flow)
    assert workflows.get("tests.unit.definitions.again") is again


def test_get_of_an_unregistered_name_raises_unknown_workflow() -> None:
    with pytest.raises(UnknownWorkflowError, match="tests.unit.definitions.nobody"):
        workflows.get("tests.unit.definitions.nobody")


def test_registered_returns_a_copy() -> None:
    snapshot = workflows.registered()
    snapshot.clear()
    assert f"{MODULE}.greet" in workflows.registered()


# --- name_of ---------------------------------------------------------------------------


def test_name_of_a_workflow_or_a_name() -> None:
    assert workflows.name_of(greet) == f"{MODULE}.greet"
    assert workflows.name_of("app.onboard") == "app.onboard"


def test_name_of_an_undecorated_function_raises_not_a_workflow() -> None:
    async def plain() -> None:
        return None

    with pytest.raises(NotAWorkflowError, match="plain"):
        workflows.name_of(plain)


def test_name_of_a_step_raises_not_a_workflow() -> None:
    with pytest.raises(NotAWorkflowError):
        workflows.name_of(add)


def test_name_of_a_blank_name_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        workflows.name_of("  ")
