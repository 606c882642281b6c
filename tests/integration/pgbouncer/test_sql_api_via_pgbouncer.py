"""Runs started, inspected and cancelled from SQL and by the engine, through PgBouncer (see conftest.py)."""

from ..test_engine import (  # noqa: F401
    test_a_failed_run_raises_run_failed_with_the_recorded_error,
    test_result_times_out_with_the_builtin_timeout_error,
    test_run_id_makes_start_idempotent,
    test_typed_arguments_and_results_round_trip,
)
from ..test_sql_api import (  # noqa: F401
    test_a_run_started_from_sql_is_executed_by_a_worker,
    test_a_run_started_from_sql_with_kwargs_and_timeout,
    test_a_start_in_a_rolled_back_transaction_leaves_nothing,
    test_cancel_run_cancels_a_pending_run_once,
    test_run_status_reports_the_status_then_the_result_or_the_error,
    test_start_run_with_run_id_is_idempotent,
)
