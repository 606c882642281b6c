"""Durable sleeps through PgBouncer (see conftest.py)."""

from ..test_sleep import (  # noqa: F401
    _reset,
    test_a_due_run_is_picked_up_promptly_without_polling,
    test_a_sleep_survives_every_worker_stopping,
    test_a_sleeping_run_leaves_the_worker_and_resumes_when_due,
)
