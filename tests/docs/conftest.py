"""A closing summary of the docs test: what ran, what was compared, what was not run and why."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .test_docs import SUMMARY

    if not SUMMARY:
        return
    write = terminalreporter.write_line
    terminalreporter.section("docs examples")
    run = sum(len(o.run) for o in SUMMARY.values())
    compared = sum(o.compared for o in SUMMARY.values())
    not_run = [item for o in SUMMARY.values() for item in o.no_run]
    write(f"{len(SUMMARY)} pages: {run} examples run, {compared} outputs compared,"
          f" {len(not_run)} blocks not run:")
    for where, reason in not_run:
        write(f"  {where}: {reason}")
    slow = sorted((item for o in SUMMARY.values() for item in o.seconds), reverse=True)
    write("slowest: " + ", ".join(f"{where} {took:.1f}s" for took, where in slow[:8]))
