"""Every example in README.md and docs/**/*.md is run, and its output compared.

The convention (docs/contributing-docs.md has it in full, with examples):

* ```` ```python ```` whose first line is ``# some/path.py`` is a file, written
  to the page's directory; a later block must run or import it
  (``$ python some/path.py``, ``--app some.path``, ``import some.path``).
  ``toml``/``ini``/``yaml`` fences whose first line is ``# name.ext`` are files too.
* any other ```` ```python ```` runs in the page's one namespace, in page
  order, top-level ``await`` allowed; a ```` ```text ```` fence right after it
  is what it must print.
* ```` ```console ```` (``shell``/``bash``/``sh``): each ``$ command`` runs in
  bash in the page's directory; the lines after it are what it must print.
  A command may exit non-zero only where its output is shown. Workers and
  the dashboard (``BACKGROUND`` in ``execute.py``) run in the background
  until the page ends.
* ```` ```sql ````: each statement runs through psycopg (autocommit); a
  psql-style result or ``-- ERROR:  …`` in comments after it is compared;
  ``-- as ROLE`` as the first line runs the block as that role.
* Directives, HTML comments invisible on GitHub: ``<!-- no-run: reason -->``
  (counted and listed in the summary), ``<!-- setup: python -->`` and
  ``<!-- setup-sql: … -->`` (hidden code), ``<!-- roles: a b -->`` (roles
  renamed per run and dropped), ``<!-- output: any order -->``.
* Output: run ids, times, hook tokens, worker ids and measured durations
  match any value of their kind; ``…`` matches any text, a ``…`` line any
  lines; werkfluss's log lines count only if the output shows one.

Each page gets a fresh database, without the werkfluss schema, on the test
server (``$WERKFLUSS_TEST_DSN``); its code sees it as
``$WERKFLUSS_DATABASE_URL`` (and ``PGDATABASE`` & co.). Pages run side by side
(``WERKFLUSS_DOCS_PARALLEL``, default 4).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..helpers import ROOT
from .execute import Outcome, run_page
from .pages import CONFIG, PYTHON, SHELL, SQL, pages, parse

PAGES = pages(ROOT)
SUMMARY: dict[str, Outcome] = {}  # page -> what ran, printed by conftest's summary
# Pages are independent (a database and a directory each) and mostly wait:
# they run side by side, and each page's test reports its own outcome.
PARALLEL = int(os.environ.get("WERKFLUSS_DOCS_PARALLEL", "4"))


@pytest.fixture(scope="session")
def page_outcomes(request: pytest.FixtureRequest, pg_server: str,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Outcome | BaseException]:
    """Run every page selected in this session (at once) and keep each one's outcome or error."""
    selected = sorted({
        item.callspec.params["path"] for item in request.session.items
        # this module's page tests only (other tests have a "path" parameter too)
        if item.path == Path(__file__) and hasattr(item, "callspec") and "path" in item.callspec.params
    })

    def run(path: Path) -> Outcome | BaseException:
        workdir = tmp_path_factory.mktemp(path.stem)
        try:
            return run_page(parse(path, ROOT), pg_server, workdir)
        except BaseException as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, PARALLEL)) as pool:
        return dict(zip(selected, pool.map(run, selected), strict=True))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_examples_of_the_page_run_and_print_what_it_shows(
    path: Path, page_outcomes: dict[Path, Outcome | BaseException]
) -> None:
    outcome = page_outcomes[path]
    if isinstance(outcome, AssertionError):  # ExampleFailed: says which block and why
        pytest.fail(str(outcome), pytrace=False)
    if isinstance(outcome, BaseException):
        raise outcome
    SUMMARY[str(path.relative_to(ROOT))] = outcome
    page = parse(path, ROOT)
    assert len(outcome.run) + len(outcome.no_run) >= len(page.blocks)


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
            assert block.lang in PYTHON | SHELL | SQL | CONFIG
            assert block.no_run is None or block.no_run.strip(), block.where
