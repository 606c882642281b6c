"""A closing summary of the docs test: what ran, what was compared, what was not run and why."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .test_docs import SUMMARY

    if not SUMMARY:
        return
    write = terminalreporter.write_line
    terminalreporter.section("docs examples")
    total_run = sum(int(s["run"]) for s in SUMMARY.values())  # type: ignore[call-overload]
    total_compared = sum(int(s["compared"]) for s in SUMMARY.values())  # type: ignore[call-overload]
    not_run = [item for s in SUMMARY.values() for item in s["no_run"]]  # type: ignore[attr-defined]
    write(f"{total_run} examples run, {total_compared} outputs compared, {len(not_run)} blocks not run:")
    for where, reason in not_run:
        write(f"  {where}: {reason}")
    slow = sorted((item for s in SUMMARY.values() for item in s["seconds"]), reverse=True)  # type: ignore[attr-defined]
    write("slowest blocks: " + ", ".join(f"{where} {took:.1f}s" for took, where in slow[:8]))
