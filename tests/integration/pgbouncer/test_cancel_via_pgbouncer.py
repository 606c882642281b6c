"""Timeouts and cancelling through PgBouncer (see conftest.py)."""

from ..test_timeouts_and_cancel import (  # noqa: F401
    _reset,
    test_a_run_timeout_fires_during_a_sleep,
    test_a_run_timeout_fires_while_waiting_for_a_hook,
    test_cancel_a_sleeping_run,
    test_cancel_a_waiting_run_from_the_command_line,
)
