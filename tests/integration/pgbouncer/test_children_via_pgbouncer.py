"""Child runs and races through PgBouncer (see conftest.py)."""

from ..test_race_and_children import (  # noqa: F401
    _reset,
    test_a_child_failure_raises_run_failed_in_the_parent,
    test_a_child_run_has_its_own_id_and_log,
    test_cancelling_a_waiting_parent_cancels_its_child,
    test_replaying_the_parent_does_not_start_the_child_again,
    test_the_hook_wins_and_its_payload_is_consumed,
    test_the_sleep_wins_and_the_running_step_is_cancelled,
)
