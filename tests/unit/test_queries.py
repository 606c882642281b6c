"""werkfluss.store.queries: the named queries in sql/queries.sql and the numbered migrations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import werkfluss
from werkfluss.store import queries
from werkfluss.store.queries import QUERIES, load_migrations, load_queries, parse_queries, sql_dir

PACKAGE_DIR = Path(werkfluss.__file__).resolve().parent

# How Python code names a query: connector.fetch_all("name", ...), tx.fetch_one("name"),
# connector.execute("name"), and run_batch statements as ("name", params) tuples.
_QUERY_CALL = re.compile(r"\b(?:fetch_all|fetch_one|execute)\(\s*[\"'](\w+)[\"']")
_BATCH_STATEMENT = re.compile(r"(?:statements\.append\(|run_batch\(\s*\[)\s*\(\s*[\"'](\w+)[\"']\s*,")


def _query_names_used_in_source() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in (_QUERY_CALL, _BATCH_STATEMENT):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                where = f"{path.relative_to(PACKAGE_DIR.parent)}:{line}"
                used.setdefault(match[1], []).append(where)
    return used


def test_every_name_header_in_queries_sql_is_parsed() -> None:
    text = (sql_dir() / "queries.sql").read_text(encoding="utf-8")
    # A looser pattern than the loader's: a header it does not recognise (a typo,
    # a dash in the name) would silently glue that query onto the previous one.
    headers = re.findall(r"^--\s*name\s*:\s*(\S+)", text, flags=re.MULTILINE)
    assert headers, "no queries found"
    assert sorted(load_queries()) == sorted(headers)


def test_every_query_has_a_body_and_a_comment() -> None:
    for name, sql in load_queries().items():
        lines = sql.splitlines()
        assert lines, f"query {name} is empty"
        assert lines[0].startswith("-- "), f"query {name} has no one-line comment"
        body = [line for line in lines if line.strip() and not line.lstrip().startswith("--")]
        assert body, f"query {name} has no SQL"


def test_known_core_queries_exist() -> None:
    for name in ("claim_runs", "append_events", "finish_runs", "worker_heartbeat", "start_run", "get_run"):
        assert name in QUERIES


def test_parse_queries_splits_by_header_and_drops_the_preamble() -> None:
    text = "-- preamble\n\n-- name: one\n-- first\nSELECT 1;\n\n-- name: two\nSELECT 2;\n"
    assert parse_queries(text) == {"one": "-- first\nSELECT 1;", "two": "SELECT 2;"}


def test_parse_queries_rejects_a_duplicate_name() -> None:
    text = "-- name: same\nSELECT 1;\n-- name: other\nSELECT 2;\n-- name: same\nSELECT 3;\n"
    with pytest.raises(ValueError, match="'same' is defined twice"):
        parse_queries(text)


def test_a_misspelled_query_name_fails_loudly() -> None:
    assert "claim_rnus" not in QUERIES
    with pytest.raises(KeyError, match="no query named 'claim_rnus'"):
        QUERIES["claim_rnus"]


def test_every_query_name_used_in_the_code_exists() -> None:
    from werkfluss.store.writes import ORDER

    used = _query_names_used_in_source()
    for kind in ORDER:  # the recorder's statements, one per kind of write
        used.setdefault(kind.statement, []).append(f"werkfluss/store/writes.py:{kind.__name__}")
    # The scan must actually see the code's queries, or this test proves nothing.
    assert {"claim_runs", "append_events", "finish_runs", "migrations_lock", "get_run"} <= set(used)
    missing = {name: where for name, where in used.items() if name not in QUERIES}
    assert missing == {}, f"queries used in the code but not defined in sql/queries.sql: {missing}"


def test_the_source_scan_recognises_every_call_form() -> None:
    sample = (
        'await connector.fetch_all(\n    "claim_runs", limit=1)\n'
        "await tx.fetch_one('schema_state')\n"
        'await connector.execute("cancel_run", run_id=x)\n'
        'statements.append(("append_events", params))\n'
        'await connector.run_batch([("finish_runs", {}), ("renew_leases", {})])\n'
    )
    found = {m[1] for p in (_QUERY_CALL, _BATCH_STATEMENT) for m in p.finditer(sample)}
    assert found == {"claim_runs", "schema_state", "cancel_run", "append_events", "finish_runs"}


# --- migrations -------------------------------------------------------------------------


def test_migrations_are_numbered_from_one_in_order() -> None:
    migrations = load_migrations()
    assert migrations, "no migrations found"
    versions = [m.version for m in migrations]
    assert versions[0] == 1
    assert versions == sorted(set(versions))
    assert migrations[0].name == "initial"
    assert all(m.sql.strip() for m in migrations)


def test_every_file_in_the_migrations_folder_is_a_numbered_migration() -> None:
    files = sorted(p.name for p in (sql_dir() / "migrations").iterdir())
    expected = [f"{m.version:04d}_{m.name}.sql" for m in load_migrations()]
    assert files == expected


@pytest.fixture
def fake_sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "queries.sql").write_text("-- name: x\nSELECT 1;\n", encoding="utf-8")
    monkeypatch.setattr(queries, "sql_dir", lambda: tmp_path)
    load_migrations.cache_clear()
    yield tmp_path
    load_migrations.cache_clear()


def test_a_gap_in_migration_numbers_is_allowed(fake_sql_dir: Path) -> None:
    (fake_sql_dir / "migrations" / "0001_initial.sql").write_text("SELECT 1;", encoding="utf-8")
    (fake_sql_dir / "migrations" / "0003_later.sql").write_text("SELECT 3;", encoding="utf-8")
    assert [m.version for m in load_migrations()] == [1, 3]


def test_a_migration_number_used_twice_is_rejected(fake_sql_dir: Path) -> None:
    (fake_sql_dir / "migrations" / "0001_initial.sql").write_text("SELECT 1;", encoding="utf-8")
    (fake_sql_dir / "migrations" / "0002_a.sql").write_text("SELECT 2;", encoding="utf-8")
    (fake_sql_dir / "migrations" / "0002_b.sql").write_text("SELECT 2;", encoding="utf-8")
    with pytest.raises(ValueError, match="0002 is used twice"):
        load_migrations()


def test_the_first_migration_is_0001(fake_sql_dir: Path) -> None:
    (fake_sql_dir / "migrations" / "0002_later.sql").write_text("SELECT 2;", encoding="utf-8")
    with pytest.raises(ValueError, match="must be 0001"):
        load_migrations()


def test_a_badly_named_migration_file_is_rejected(fake_sql_dir: Path) -> None:
    (fake_sql_dir / "migrations" / "1_initial.sql").write_text("SELECT 1;", encoding="utf-8")
    with pytest.raises(ValueError, match="must be named NNNN_name.sql"):
        load_migrations()


def test_array_parameters_are_sent_in_binary() -> None:
    # psycopg's text format escapes every array element with regular
    # expressions (~40x the binary format's cost, in every write batch).
    text = (sql_dir() / "queries.sql").read_text()
    in_text = re.findall(r"%\((\w+)\)s::[a-z ]+\[\]", text)
    assert in_text == [], f"send these arrays as %(name)b: {sorted(set(in_text))}"
    assert re.search(r"%\(\w+\)b::[a-z ]+\[\]", text)  # the scan sees the placeholders it checks
