"""Every example in README.md and docs/**/*.md is run, and its output compared.

How a page is written so that this test runs it (the full description, with
examples, is docs/contributing-docs.md):

* ```` ```python ```` whose first line is ``# some/path.py``: a file, written
  to the page's working directory (with ``__init__.py`` for its packages);
  a later block must run or import it (``$ python some/path.py``,
  ``--app some.path``, ``import some.path``).
* any other ```` ```python ````: run in the page's one python namespace, in
  page order, top-level ``await`` allowed. A ```` ```text ```` fence right
  after it is what it must print.
* ```` ```console ```` (or ``shell``/``bash``/``sh``): each ``$ command`` runs
  in bash in the page's directory; the lines after it are what it must print
  (when shown; a command may exit non-zero only where its output is shown).
  Workers and the dashboard (``BACKGROUND`` in ``execute.py``) keep running
  in the background until the page ends.
* ```` ```sql ````: each statement runs through psycopg (autocommit); a
  psql-style result in ``--`` comments after a statement is compared.
  ``-- as ROLE`` as the first line runs the block as that role.
* Directives, HTML comments invisible on GitHub:
  ``<!-- no-run: reason -->`` before a fence that cannot run here;
  ``<!-- setup: python code -->`` hidden code run in the page's namespace;
  ``<!-- roles: a b -->`` roles the page creates, renamed per run and dropped;
  ``<!-- output: any order -->`` before an output whose line order varies.
* Expected output: run ids, times, tokens, worker ids and measured durations
  match any value of their kind; ``…`` matches any text, a ``…`` line any
  lines; werkfluss's log lines are ignored unless the output shows one.

Each page gets a fresh database (``$WERKFLUSS_TEST_DSN``'s server), no
schema: the page migrates as a user would. Its commands and scripts see it as
``$WERKFLUSS_DATABASE_URL``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers import ROOT
from .execute import ExampleFailed, run_page
from .pages import NOT_CODE, PYTHON, SHELL, SQL, PageError, pages, parse

PAGES = pages(ROOT)
SUMMARY: dict[str, dict[str, object]] = {}  # page -> counts, printed by conftest's summary


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_examples_of_the_page_run_and_print_what_it_shows(path: Path, pg_server: str,
                                                              tmp_path: Path) -> None:
    page = parse(path, ROOT)
    try:
        outcome = run_page(page, pg_server, tmp_path)
    except ExampleFailed as failed:
        message = str(failed)
    else:
        message = ""
    if message:
        pytest.fail(message, pytrace=False)
    SUMMARY[str(page.path)] = {"run": len(outcome.run), "compared": outcome.compared,
                               "no_run": outcome.no_run, "seconds": outcome.seconds}
    assert outcome.run or outcome.no_run or not page.blocks


def test_every_page_is_covered() -> None:
    found = {p.relative_to(ROOT) for p in PAGES}
    assert Path("README.md") in found
    assert Path("docs/quickstart.md") in found
    assert {p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md")} <= found


def test_every_code_block_is_run_or_says_why_not() -> None:
    """No silent skip: every fence is code that runs, an output, or marked no-run with a reason."""
    for path in PAGES:
        page = parse(path, ROOT)
        for block in page.blocks:
            assert block.lang in PYTHON | SHELL | SQL
            assert block.no_run is None or block.no_run.strip(), block.where


def test_a_fence_in_an_unknown_language_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "x.md"
    page.parent.mkdir()
    page.write_text("# x\n\n```ruby\nputs 1\n```\n")
    with pytest.raises(PageError, match="```ruby"):
        parse(page, tmp_path)
    assert "ruby" not in NOT_CODE


def test_no_run_needs_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text("<!-- no-run: -->\n```python\nprint(1)\n```\n")
    with pytest.raises(PageError, match="needs a reason"):
        parse(page, tmp_path)
