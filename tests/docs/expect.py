"""Comparing what an example printed with the output its page shows.

Both sides are normalized first, so a page can show realistic values:

* run ids (UUIDs), timestamps, hook tokens (``wfh_…``), worker ids
  (``host:pid:hex``) and measured durations (``0.4 ms``, ``0.12s``) stand
  for any value of their kind;
* runs of spaces count as one space (column widths follow the values), and
  a line of a table's dashes matches any width;
* ANSI colours are ignored.

In the expected text, ``…`` matches any text within a line, and a line that
is only ``…`` matches any number of lines (none included).

werkfluss's own log lines (structlog's console format, ``<time> [info ] …``)
are left out of the comparison unless the expected text shows one.
"""

from __future__ import annotations

import difflib
import re
from functools import cache

ELLIPSIS = "…"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUBSTITUTIONS = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"\bwfh_[A-Za-z0-9_-]+"), "<token>"),
    (re.compile(r"\b[A-Za-z0-9][\w.-]*:\d+:[0-9a-f]{8}\b"), "<worker>"),
    (re.compile(r"\b\d+\.\d+ ?(?:ms|µs|s)\b"), "<duration>"),
    (re.compile(r"\b(duration_ms|delay_s|lease_s)=\d+(?:\.\d+)?"), r"\1=<n>"),
]
_SPACES = re.compile(r"\s+")
_RULE = re.compile(r"^[-+| ]*-{2,}[-+| ]*$")  # a table's header rule
LOG_LINE = re.compile(
    r"^(?:\S+ )?(?:\S+ )?\[\s*(?:debug|info|warning|warn|error|critical)\s*\] \S"
)


def normalize_line(line: str) -> str:
    line = _ANSI.sub("", line)
    for pattern, replacement in _SUBSTITUTIONS:
        line = pattern.sub(replacement, line)
    line = _SPACES.sub(" ", line).strip()
    if _RULE.match(line):
        line = re.sub(r"-+", "-", line)
    return line


def is_log_line(line: str) -> bool:
    return bool(LOG_LINE.match(_ANSI.sub("", line).strip()))


def normalize(text: str, *, drop_log_lines: bool = False) -> list[str]:
    lines = [
        normalize_line(line)
        for line in text.splitlines()
        if not (drop_log_lines and is_log_line(line))
    ]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


@cache
def _line_pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(part) for part in expected.split(ELLIPSIS)]
    return re.compile(".*?".join(parts) + r"\Z", re.S)


def _lines_match(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` matches ``expected`` (both normalized), with ``…`` wildcards."""

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(expected):
            return j == len(actual)
        if expected[i] == ELLIPSIS:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and bool(_line_pattern(expected[i]).match(actual[j])) and match(i + 1, j + 1)

    return match(0, 0)


def compare(expected: str, actual: str, *, prefix: bool = False, unordered: bool = False) -> str | None:
    """``None`` if ``actual`` matches ``expected``, else a readable diff.

    ``prefix``: ``actual`` may go on after what ``expected`` shows (the
    output so far of a process that is still running). ``unordered``: the
    lines may come in any order (compared sorted, after normalizing).
    """
    shows_logs = any(is_log_line(line) for line in expected.splitlines())
    want = normalize(expected)
    got = normalize(actual, drop_log_lines=not shows_logs)
    if unordered:
        want, got = sorted(want), sorted(got)
    if prefix:
        want = [*want, ELLIPSIS]
    if _lines_match(want, got):
        return None
    diff = "\n".join(difflib.unified_diff(want, got, "expected (normalized)", "actual (normalized)",
                                          lineterm=""))
    return f"{diff}\n--- actual output, as printed:\n{actual.rstrip()}"
