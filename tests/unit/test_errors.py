"""werkfluss.errors, and exceptions rebuilt from their log records (failures.rebuild_exception)."""

from __future__ import annotations

import inspect

import pytest

import werkfluss
from werkfluss import errors
from werkfluss.errors import (
    FatalError,
    InvalidArgument,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    SchemaNotReady,
    SerializationError,
    StepFailed,
    WerkflussError,
)
from werkfluss.runtime.failures import error_record, rebuild_exception, type_name


class InsufficientFunds(Exception):
    """A module-level exception with simple positional args."""

    def __init__(self, account: str, missing: int) -> None:
        super().__init__(account, missing)
        self.account = account
        self.missing = missing


class NeedsKeyword(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


class CodeError(Exception):
    """Builds its message from its argument, so ``args`` is not what ``__init__`` takes."""

    def __init__(self, code: int) -> None:
        super().__init__(f"payment failed with code {code}")
        self.code = code


class Outer:
    class InnerError(Exception):
        pass


def raised(exc: Exception) -> Exception:
    """``exc`` with a traceback, as a step body would leave it."""
    try:
        raise exc
    except Exception as caught:
        return caught


# --- messages -----------------------------------------------------------------------------


def test_run_failed_reads_run_id_type_and_message() -> None:
    failure = RunFailed("run-1", "ValueError", "bad input", "Traceback ...")
    assert str(failure) == "run run-1 failed: ValueError: bad input"
    assert (failure.run_id, failure.error_type, failure.message, failure.traceback) == (
        "run-1",
        "ValueError",
        "bad input",
        "Traceback ...",
    )


def test_run_failed_from_record_carries_the_recorded_error() -> None:
    failure = RunFailed.from_record(
        "run-2", {"type": "billing.CardDeclined", "message": "declined", "traceback": "tb"}
    )
    assert str(failure) == "run run-2 failed: billing.CardDeclined: declined"
    assert failure.traceback == "tb"


def test_run_failed_from_an_empty_record_is_still_readable() -> None:
    failure = RunFailed.from_record("run-3", None)
    assert str(failure) == "run run-3 failed: UnknownError: "
    assert failure.traceback is None


def test_run_failed_from_error_record_of_a_real_exception() -> None:
    failure = RunFailed.from_record("run-4", error_record(raised(ValueError("boom"))))
    assert str(failure) == "run run-4 failed: ValueError: boom"
    assert failure.traceback is not None
    assert "ValueError: boom" in failure.traceback


def test_non_determinism_error_names_seq_expected_and_actual() -> None:
    error = NonDeterminismError("run-5", 3, "step 'send_email'", "step 'send_sms'")
    message = str(error)
    assert "run run-5" in message
    assert "at seq 3 the log has step 'send_email' but the workflow called step 'send_sms'" in message
    assert (error.seq, error.expected, error.actual) == (3, "step 'send_email'", "step 'send_sms'")


def test_other_error_messages() -> None:
    assert str(RunCancelled("r")) == "run r was cancelled"
    assert "no run with id 'r'" in str(RunNotFound("r"))
    assert str(StepFailed("app.Err", "went wrong")) == "app.Err: went wrong"
    assert "engine.migrate()" in str(SchemaNotReady())
    assert str(SchemaNotReady("missing migrations: 0002_x")).endswith("(missing migrations: 0002_x)")


def test_errors_survive_a_round_trip_through_their_args() -> None:
    # Exceptions that keep their constructor args can be copied (pickle, rebuild).
    for error in (
        RunFailed("r", "T", "m", "tb"),
        RunCancelled("r"),
        RunNotFound("r"),
        StepFailed("T", "m", None),
        NonDeterminismError("r", 1, "a", "b"),
        SchemaNotReady("detail"),
    ):
        copy = type(error)(*error.args)
        assert str(copy) == str(error)


# --- hierarchy ------------------------------------------------------------------------------


def _error_classes() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ]


def test_every_error_class_derives_from_werkfluss_error() -> None:
    classes = _error_classes()
    assert len(classes) >= 15
    assert [c.__name__ for c in classes if not issubclass(c, WerkflussError)] == []


def test_every_exported_exception_derives_from_werkfluss_error() -> None:
    exported = [getattr(werkfluss, name) for name in werkfluss.__all__]
    exceptions = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert RunFailed in exceptions
    assert all(issubclass(obj, WerkflussError) for obj in exceptions)


def test_argument_errors_can_also_be_caught_as_builtins() -> None:
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(SerializationError, TypeError)


# --- rebuilding recorded exceptions -------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [ValueError("bad input"), KeyError("missing"), TimeoutError("too slow"), ZeroDivisionError()],
    ids=repr,
)
def test_builtin_exceptions_are_rebuilt_as_their_own_class(original: Exception) -> None:
    rebuilt = rebuild_exception(error_record(raised(original)))
    assert type(rebuilt) is type(original)
    assert rebuilt.args == original.args
    assert str(rebuilt) == str(original)


def test_module_level_custom_exception_is_rebuilt_with_its_args() -> None:
    rebuilt = rebuild_exception(error_record(raised(InsufficientFunds("acct-1", 5))))
    assert type(rebuilt) is InsufficientFunds
    assert isinstance(rebuilt, InsufficientFunds)
    assert (rebuilt.account, rebuilt.missing) == ("acct-1", 5)


def test_nested_exception_class_is_rebuilt() -> None:
    rebuilt = rebuild_exception(error_record(raised(Outer.InnerError("deep"))))
    assert type(rebuilt) is Outer.InnerError
    assert str(rebuilt) == "deep"


def test_werkfluss_errors_are_rebuilt() -> None:
    rebuilt = rebuild_exception(error_record(raised(FatalError("card is blocked"))))
    assert type(rebuilt) is FatalError
    assert str(rebuilt) == "card is blocked"


def test_exception_with_serializable_non_json_args_is_rebuilt() -> None:
    rebuilt = rebuild_exception(error_record(raised(ValueError(("a", 1), b"raw"))))
    assert rebuilt.args == (("a", 1), b"raw")


def test_exception_needing_a_keyword_only_arg_becomes_step_failed() -> None:
    record = error_record(raised(NeedsKeyword(code=7)))
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is StepFailed
    assert rebuilt.error_type == f"{__name__}.NeedsKeyword"
    assert rebuilt.message == "code 7"
    assert rebuilt.traceback == record["traceback"]


def test_exception_from_an_unknown_module_becomes_step_failed() -> None:
    record = {
        "type": "gone.module.PaymentError",
        "message": "declined",
        "traceback": "Traceback ...",
        "class": "gone.module:PaymentError",
        "args": ["declined"],
    }
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is StepFailed
    assert (rebuilt.error_type, rebuilt.message) == ("gone.module.PaymentError", "declined")


def test_exception_defined_inside_a_function_becomes_step_failed() -> None:
    class LocalError(Exception):
        pass

    rebuilt = rebuild_exception(error_record(raised(LocalError("local"))))
    assert type(rebuilt) is StepFailed
    assert rebuilt.message == "local"


def test_exception_with_unserializable_args_becomes_step_failed() -> None:
    record = error_record(raised(ValueError(object())))
    assert "args" not in record
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is StepFailed
    assert rebuilt.error_type == "ValueError"


def test_a_recorded_class_that_is_not_an_exception_becomes_step_failed() -> None:
    record = {"type": "dict", "message": "x", "class": "builtins:dict", "args": []}
    assert type(rebuild_exception(record)) is StepFailed


def test_base_exceptions_are_not_rebuilt_as_themselves() -> None:
    record = error_record(KeyboardInterrupt())
    assert type(rebuild_exception(record)) is StepFailed


def test_rebuilt_exception_carries_the_original_traceback_as_a_note() -> None:
    record = error_record(raised(ValueError("bad")))
    rebuilt = rebuild_exception(record, where=" for run r1 seq 2")
    notes = getattr(rebuilt, "__notes__", [])
    assert len(notes) == 1
    assert notes[0].startswith("recorded by werkfluss for run r1 seq 2; original traceback:")
    assert "ValueError: bad" in notes[0]


def test_rebuilt_exception_keeps_the_recorded_message() -> None:
    record = error_record(raised(CodeError(51)))
    assert record["message"] == "payment failed with code 51"
    rebuilt = rebuild_exception(record)
    message = rebuilt.message if isinstance(rebuilt, StepFailed) else str(rebuilt)
    assert message == "payment failed with code 51"


def test_type_name_is_short_for_builtins_and_qualified_otherwise() -> None:
    assert type_name(ValueError()) == "ValueError"
    assert type_name(FatalError()) == "werkfluss.errors.FatalError"
    assert type_name(Outer.InnerError()) == f"{__name__}.Outer.InnerError"


def test_error_record_holds_type_message_traceback_class_and_args() -> None:
    record = error_record(raised(InsufficientFunds("acct-2", 3)))
    assert record["type"] == f"{__name__}.InsufficientFunds"
    assert record["message"] == "('acct-2', 3)"
    assert record["class"] == f"{__name__}:InsufficientFunds"
    assert record["args"] == ["acct-2", 3]
    assert "in raised" in record["traceback"]
