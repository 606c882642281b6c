"""The docs test itself: it fails when a page's example does not do what the page shows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import pytest

from .execute import ExampleFailed, Outcome, run_page
from .expect import compare, normalize
from .pages import PageError, parse


def _run(tmp_path: Path, text: str, pg_server: str) -> Outcome:
    page = tmp_path / "page.md"
    page.write_text(text)
    workdir = tmp_path / "work"
    workdir.mkdir()
    return run_page(parse(page, tmp_path), pg_server, workdir)


# --- comparing outputs ------------------------------------------------------------------


def test_ids_times_tokens_and_durations_match_any_value_of_their_kind() -> None:
    shown = ("run 1eceed28-bd15-403d-be48-8a3284fd48d3 at 2026-11-26 14:29:34.836457+00:00"
             " took 0.1 ms, token wfh_abc, worker laptop:8838:79bc9e24")
    printed = ("run 7a2c1e00-0000-4000-8000-000000000001 at 2030-01-02T03:04:05Z"
               " took 12.5 ms, token wfh_x-Y_z, worker ci-runner.local:1:0123abcd")
    assert compare(shown, printed) is None
    assert compare("run 1eceed28-bd15-403d-be48-8a3284fd48d3 failed", "run 42 failed") is not None


def test_spaces_and_table_rules_do_not_need_the_same_widths() -> None:
    shown = "  seq  name\n  ---  ----\n  1    fetch_user\n"
    printed = "  seq  name\n  ---  ----------\n  1    fetch_user\n"
    assert compare(shown, printed) is None


def test_an_ellipsis_matches_text_in_a_line_and_a_line_of_it_any_lines() -> None:
    assert compare("run … was cancelled", "run abc was cancelled") is None
    assert compare("first\n…\nlast", "first\na\nb\nlast") is None
    assert compare("first\n…\nlast", "first\nlast") is None
    assert compare("first\n…\nlast", "first\na\nb") is not None
    assert compare("run … was cancelled", "run abc was stopped") is not None


def test_log_lines_count_only_where_the_page_shows_one() -> None:
    printed = "2026-11-26 14:08:31 [info     ] run.started    run_id=x\nhello\n"
    assert compare("hello", printed) is None
    assert compare("2026-11-26 14:08:31 [info     ] run.started    run_id=x\nhello", printed) is None
    assert compare("2026-11-26 14:08:31 [info     ] run.completed  run_id=x\nhello", printed) is not None


def test_a_missing_or_extra_line_is_a_difference() -> None:
    assert compare("a\nb", "a") is not None
    assert compare("a", "a\nb") is not None
    assert normalize("\n\na  b \n\n") == ["a b"]


def test_unordered_output_matches_in_any_order_but_not_other_lines() -> None:
    assert compare("a\nb", "b\na", unordered=True) is None
    assert compare("a\nb", "b\nc", unordered=True) is not None


# --- reading pages --------------------------------------------------------------------------


def test_a_fence_in_an_unknown_language_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text("# x\n\n```ruby\nputs 1\n```\n")
    with pytest.raises(PageError, match="```ruby"):
        parse(page, tmp_path)


def test_no_run_needs_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text("<!-- no-run: -->\n```python\nprint(1)\n```\n")
    with pytest.raises(PageError, match="needs a reason"):
        parse(page, tmp_path)


def test_a_directive_that_applies_to_nothing_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text("```python\nprint(1)\n```\n\n<!-- no-run: later -->\n")
    with pytest.raises(PageError, match="applies to nothing"):
        parse(page, tmp_path)


def test_a_text_fence_right_after_python_is_its_output_and_prose_in_between_is_not(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text("```python\nprint(1)\n```\n```text\n1\n```\n\n```python\nprint(2)\n```\n\nprose\n\n"
                    "```text\na diagram\n```\n")
    blocks = parse(page, tmp_path).blocks
    assert [(b.lang, b.output) for b in blocks] == [("python", "1\n"), ("python", None)]


# --- running pages --------------------------------------------------------------------------


def test_python_blocks_share_one_namespace_and_their_output_is_compared(
    tmp_path: Path, pg_server: str
) -> None:
    outcome = _run(tmp_path, "```python\nx = 41\n```\n\n```python\nprint(x + 1)\n```\n```text\n42\n```\n",
                   pg_server)
    assert outcome.run == ["python", "python"]
    assert outcome.compared == 1


def test_a_wrong_output_fails_the_page(tmp_path: Path, pg_server: str) -> None:
    with pytest.raises(ExampleFailed, match=r"page.md:1: the output differs"):
        _run(tmp_path, "```python\nprint(1)\n```\n```text\n2\n```\n", pg_server)


def test_an_example_that_raises_fails_the_page(tmp_path: Path, pg_server: str) -> None:
    with pytest.raises(ExampleFailed, match="ZeroDivisionError"):
        _run(tmp_path, "```python\n1 / 0\n```\n", pg_server)


def test_a_file_is_written_and_run_by_a_command_with_the_page_database(
    tmp_path: Path, pg_server: str
) -> None:
    text = ("```python\n# hello.py\nimport os\nfrom psycopg.conninfo import conninfo_to_dict\n\n"
            "print(conninfo_to_dict(os.environ['WERKFLUSS_DATABASE_URL'])['dbname'][:15])\n"
            "```\n\n```console\n$ python hello.py\nwerkfluss_docs_\n```\n")
    outcome = _run(tmp_path, text, pg_server)
    assert outcome.run == ["file", "console"]
    assert outcome.compared == 1


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_on_a_page_reaches_the_page_database(tmp_path: Path, pg_server: str) -> None:
    outcome = _run(tmp_path, "```console\n$ psql -XAtc 'SELECT left(current_database(), 15)'\n"
                             "werkfluss_docs_\n```\n", pg_server)
    assert outcome.compared == 1


def test_a_file_nothing_runs_fails_the_page(tmp_path: Path, pg_server: str) -> None:
    with pytest.raises(ExampleFailed, match="never executed"):
        _run(tmp_path, "```python\n# lonely.py\nprint(1)\n```\n", pg_server)


def test_a_failing_command_fails_unless_the_page_shows_its_output(tmp_path: Path, pg_server: str) -> None:
    with pytest.raises(ExampleFailed, match="exited with status 3"):
        _run(tmp_path, "```console\n$ exit 3\n```\n", pg_server)
    (tmp_path / "page.md").unlink()
    (tmp_path / "work").rmdir()
    outcome = _run(tmp_path, "```console\n$ echo refused; exit 1\nrefused\n```\n", pg_server)
    assert outcome.compared == 1


def test_a_shell_block_without_prompts_is_refused(tmp_path: Path, pg_server: str) -> None:
    with pytest.raises(ExampleFailed, match="not a `\\$ ` command"):
        _run(tmp_path, "```bash\necho hi\n```\n", pg_server)


def test_sql_results_and_errors_are_compared(tmp_path: Path, pg_server: str) -> None:
    text = ("```sql\nSELECT 1 AS one;\n--  one\n-- -----\n--    1\nSELECT * FROM nowhere;\n"
            "-- ERROR:  relation \"nowhere\" does not exist\n```\n")
    assert _run(tmp_path, text, pg_server).compared == 2
    (tmp_path / "page.md").unlink()
    (tmp_path / "work").rmdir()
    with pytest.raises(ExampleFailed, match="differs"):
        _run(tmp_path, "```sql\nSELECT 2 AS one;\n--  one\n-- -----\n--    1\n```\n", pg_server)


def test_no_run_blocks_are_counted_with_their_reason(tmp_path: Path, pg_server: str) -> None:
    outcome = _run(tmp_path, "<!-- no-run: needs a cluster -->\n```console\n$ kubectl apply -f x\n```\n",
                   pg_server)
    assert outcome.run == []
    assert outcome.no_run == [("page.md:2", "needs a cluster")]


def test_the_page_roles_are_private_and_dropped(tmp_path: Path, pg_server: str) -> None:
    text = ("<!-- roles: docs_probe -->\n\n```sql\nCREATE ROLE docs_probe;\nSELECT current_user;\n```\n\n"
            "```sql\n-- as docs_probe\nSELECT current_user LIKE 'docs_probe_%' AS private;\n"
            "--  private\n-- ---------\n--  t\n```\n")
    assert _run(tmp_path, text, pg_server).compared == 1
    with psycopg.connect(pg_server) as conn:
        left = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s",
                            [f"docs_probe_{os.getpid()}_%"]).fetchone()
    assert left == (0,)
