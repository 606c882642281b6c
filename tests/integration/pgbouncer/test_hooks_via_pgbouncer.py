"""Hooks and send through PgBouncer (see conftest.py)."""

from ..test_hooks import (  # noqa: F401
    _reset,
    test_a_chosen_token_accepts_one_payload_before_the_hook_exists,
    test_a_payload_sent_before_the_run_waits_is_kept,
    test_a_payload_sent_while_no_worker_runs_is_delivered_later,
    test_a_token_never_issued_is_refused_and_nothing_is_stored,
    test_iterating_a_hook_receives_many_payloads_in_order,
    test_send_from_the_command_line,
    test_the_same_payload_sent_twice_is_delivered_once,
)
