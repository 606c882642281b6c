"""Steps, retries, failures, cancelling and stopping, through PgBouncer (see conftest.py)."""

from ..test_smoke import (  # noqa: F401
    test_gathered_steps_get_seq_in_call_order,
    test_run_executes_steps_and_records_each_once,
)
from ..test_worker import (  # noqa: F401
    _reset,
    test_a_step_that_exhausts_its_retries_fails_the_run,
    test_an_expired_lease_is_taken_over_and_logged,
    test_cancelling_a_running_run_stops_its_step_at_once,
    test_concurrency_limits_runs_in_flight,
    test_fatal_error_is_not_retried,
    test_graceful_stop_releases_runs_at_the_next_step_boundary,
    test_group_commit_shares_transactions_between_runs,
    test_recorded_steps_are_replayed_not_executed,
    test_retries_wait_with_exponential_backoff,
)
