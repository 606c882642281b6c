"""The dashboard's pages, JSON endpoints and actions, through Starlette's TestClient,
on a database seeded with runs in every state (tests/dashboard_app.py).

The seeded database is shared by the module; a test that acts on runs uses
runs of its own (``hold:N``, ``fail:N``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from werkfluss import Engine, Queue, StartOptions
from werkfluss.cli.dashboard.app import create_app
from werkfluss.errors import ConfigurationError
from werkfluss.store.migrations import migrate

from ..conftest import create_database, drop_database
from ..dashboard_app import SEEDED, dashboard_role, seed
from ..helpers import login_role, sql, sql_value

TOKEN = "s3cret-token-for-the-dashboard-tests"
JSON = {"Accept": "application/json"}
WITH_TOKEN = {**JSON, "X-Werkfluss-Token": TOKEN}


@pytest.fixture(scope="module")
def seeded(pg_server: str) -> Iterator[str]:
    dsn = create_database(pg_server, prefix="werkfluss_dash")

    async def _prepare() -> None:
        async with Engine(dsn) as engine:
            await migrate(engine.connector)
        await seed(dsn)

    try:
        asyncio.run(_prepare())
        yield dsn
    finally:
        drop_database(pg_server, dsn)


@contextmanager
def dashboard(dsn: str, token: str | None = None) -> Iterator[TestClient]:
    app = create_app(Engine(dsn, pool_size=4), token=token, owns_engine=True)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def viewer(seeded: str) -> Iterator[TestClient]:
    """A read-only dashboard on the seeded database."""
    with dashboard(seeded) as client:
        yield client


@pytest.fixture(scope="module")
def operator(seeded: str) -> Iterator[TestClient]:
    """A dashboard with actions (the token is TOKEN)."""
    with dashboard(seeded, token=TOKEN) as client:
        yield client


def status_of(dsn: str, run_id: str) -> str:
    return str(sql_value(dsn, "SELECT status FROM werkfluss.runs WHERE id = %s", [run_id]))


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-run-id="([^"]+)"', html)


def audit(dsn: str, run_id: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT action, detail->>'outcome', client FROM werkfluss.audit WHERE run_id = %s"
                    " ORDER BY id", [run_id])


# --- the run list --------------------------------------------------------------------------


def test_the_run_list_shows_every_run_newest_first_with_counts_by_state(viewer: TestClient) -> None:
    page = viewer.get("/runs")
    assert page.status_code == 200
    ids = row_ids(page.text)
    assert sorted(ids) == sorted(SEEDED)
    assert ids[-1] == "old:1"  # created three days ago
    counts = dict(re.findall(r'data-status="(\w+)">\s*<span class="n">(\d+)</span>', page.text))
    expected: dict[str, int] = {}
    for state in SEEDED.values():
        expected[state] = expected.get(state, 0) + 1
    assert {k: int(v) for k, v in counts.items() if int(v)} == expected


def test_the_root_redirects_to_the_run_list(viewer: TestClient) -> None:
    answer = viewer.get("/", follow_redirects=False)
    assert answer.status_code == 307
    assert answer.headers["location"] == "/runs"


@pytest.mark.parametrize(("query", "expected"), [
    ("status=failed", {"checkout:cy", "fail:1", "fail:2", "fail:3"}),
    ("status=sleeping", {"nap:dee"}),
    ("workflow=tests.dash.parent", {"parent:eve"}),
    ("prefix=onboard:", {"onboard:ada", "onboard:bob", "onboard:ada::6"}),
    ("prefix=hold:&status=waiting&limit=2", {"hold:5", "hold:6"}),
    ("workflow=tests.dash.archive&age=7d", {"old:1"}),
    ("workflow=tests.dash.archive&age=24h", set()),
])
def test_filters_narrow_the_list(viewer: TestClient, query: str, expected: set[str]) -> None:
    page = viewer.get(f"/runs?{query}")
    assert page.status_code == 200
    assert set(row_ids(page.text)) == expected
    if not expected:
        assert "No runs match these filters." in page.text


def test_counts_follow_the_filters_except_status(viewer: TestClient) -> None:
    data = viewer.get("/api/runs?prefix=hold:&status=failed").json()
    assert data["runs"] == []
    assert data["counts"] == {"waiting": 6}
    assert data["total"] == 6
    assert data["capped"] is False


def test_the_json_list_carries_runs_counts_and_the_rendered_rows(viewer: TestClient) -> None:
    data = viewer.get("/api/runs?status=pending").json()
    runs = {r["run_id"]: r for r in data["runs"]}
    assert set(runs) == {"typo:1", "old:1"}
    assert runs["typo:1"]["workflow"] == "tests.dash.unserved"
    assert runs["typo:1"]["unserved"] is True  # no live worker serves it
    assert set(row_ids(data["html"]["run_rows"])) == {"typo:1", "old:1"}
    assert "no live worker serves it" in data["html"]["run_rows"]
    assert 'data-status="pending"' in data["html"]["counts"]


def test_the_list_says_what_waiting_and_failed_runs_wait_for_or_died_of(viewer: TestClient) -> None:
    page = viewer.get("/runs?prefix=checkout:").text
    assert "FatalError: card declined for cy" in page
    page = viewer.get("/runs?prefix=onboard:bob").text
    assert "waits for hook:approve:bob" in page


@pytest.mark.parametrize(("query", "message"), [
    ("status=bogus", "unknown status 'bogus'"),
    ("limit=0", "limit must be a whole number from 1 to 500"),
    ("limit=ten", "limit must be a whole number from 1 to 500"),
    ("age=soon", "age"),
    ("prefix=" + "x" * 300, "run ids have at most 255"),
])
def test_bad_filters_are_refused_with_what_to_fix(viewer: TestClient, query: str, message: str) -> None:
    page = viewer.get(f"/runs?{query}")
    assert page.status_code == 400
    assert message in unescape(page.text)
    api = viewer.get(f"/api/runs?{query}")
    assert api.status_code == 400
    assert message in api.json()["error"]


# --- a run's page ----------------------------------------------------------------------------


def bars(html: str) -> list[dict[str, str]]:
    rows = re.findall(r'<div class="tl-row" ([^>]*)>.*?<rect class="bar ([^"]*)" x="([\d.]+)%" y="4" '
                      r'width="([\d.]+)%"', html, re.DOTALL)
    found = []
    for attributes, classes, left, width in rows:
        bar = dict(re.findall(r'data-(\w+)="([^"]*)"', attributes))
        bar.update(classes=classes, left=left, width=width)
        found.append(bar)
    return found


def test_a_completed_run_shows_its_timeline_input_result_and_log(viewer: TestClient) -> None:
    page = viewer.get("/runs/onboard:ada")
    assert page.status_code == 200
    html = page.text
    timeline = bars(html)
    assert [(b["kind"], b.get("seq")) for b in timeline] == [
        ("run", None), ("step", "1"), ("step", "2"), ("sleep", "3"), ("wait", "5"), ("child", "6"),
    ]
    assert all(float(b["width"]) > 0 for b in timeline)
    assert all(0 <= float(b["left"]) <= 100 for b in timeline)
    # bars follow each other in time
    lefts = [float(b["left"]) for b in timeline[1:]]
    assert lefts == sorted(lefts)
    retried = timeline[2]
    assert retried["attempts"] == "3"
    assert "↻2" in html
    assert timeline[2]["classes"] == "kind-step st-completed retried"  # drawn striped
    sleep_bar = timeline[3]
    assert float(sleep_bar["width"]) > float(timeline[1]["width"])  # 200 ms against a 20 ms step
    assert 'href="/runs/onboard:ada::6"' in html  # the child run is linked
    text = unescape(html)
    assert '"approved": true' in text  # the received payload, in the log
    assert re.search(r'id="run-result">"welcome ada: \{.*\}"</pre>', text)  # the result
    assert html.count('<tr data-seq="') == 6  # steps, sleep, hook, receive, child


def test_a_failed_run_shows_its_error_and_traceback(viewer: TestClient) -> None:
    html = viewer.get("/runs/checkout:cy").text
    assert "werkfluss.errors.FatalError" in html
    assert "card declined for cy" in html
    assert "Traceback (most recent call last)" in html
    assert 'raise FatalError(f"card declined for {user}")' in unescape(html)
    assert [b["classes"] for b in bars(html) if b["kind"] == "step"][-1].endswith("st-failed")


def test_a_waiting_run_says_which_hook_it_waits_for(viewer: TestClient) -> None:
    html = viewer.get("/runs/onboard:bob").text
    waits = html[html.index('id="waits"'):html.index("<h2>Timeline")]
    assert 'data-token="approve:bob"' in waits
    assert "werkfluss send 'approve:bob'" in unescape(waits)  # read-only: how to send it instead
    open_bars = [b for b in bars(html) if b["status"] == "open"]
    assert {b["kind"] for b in open_bars} == {"run", "wait"}
    assert 'class="now"' in html


def test_a_run_waiting_on_a_child_links_it_and_the_child_shows_its_parent(viewer: TestClient) -> None:
    html = viewer.get("/runs/parent:eve").text
    waits = html[html.index('id="waits"'):html.index("<h2>Timeline")]
    assert 'child run <a href="/runs/parent:eve::1">parent:eve::1</a>' in waits
    assert "status-waiting" in waits
    child = viewer.get("/runs/parent:eve::1").text
    assert 'href="/runs/parent:eve"' in child
    assert 'data-token="child-approve:eve"' in child


def test_a_sleeping_run_shows_when_it_wakes(viewer: TestClient) -> None:
    html = viewer.get("/runs/nap:dee").text
    waits = html[html.index('id="waits"'):html.index("<h2>Timeline")]
    assert "wakes at" in waits
    assert re.search(r"in 1h 5\dm", waits)
    sleep_bar = next(b for b in bars(html) if b["kind"] == "sleep")
    assert sleep_bar["status"] == "open"
    assert float(sleep_bar["width"]) > 99  # two hours, against a few milliseconds of steps


def test_a_pending_run_that_no_worker_serves_says_so(viewer: TestClient) -> None:
    html = viewer.get("/runs/typo:1").text
    assert "no live worker serves this workflow" in html
    assert "Nothing recorded yet." in html


def test_a_running_run_names_the_worker_holding_it(seeded: str, viewer: TestClient) -> None:
    # the state a claim leaves: a worker row, and the run's queue row leased to it
    sql(seeded, """INSERT INTO werkfluss.workers
                          (id, host, pid, version, workflows, concurrency, lease_seconds)
                   VALUES ('web-7:4242:cafe', 'web-7', 4242, '0.2.0', '{tests.dash.hold}', 10, 30)""")
    sql(seeded, """UPDATE werkfluss.queue SET lease_id = gen_random_uuid(), worker_id = 'web-7:4242:cafe',
                          available_at = 'infinity' WHERE run_id = 'hold:6'""")
    sql(seeded, "UPDATE werkfluss.runs SET status = 'running' WHERE id = 'hold:6'")
    try:
        html = viewer.get("/runs/hold:6").text
        holder = html[html.index('id="holder"'):]
        assert "worker web-7:4242:cafe (web-7, pid 4242)" in holder
        assert "taken over after" in holder
        workers = viewer.get("/workers").text
        assert 'data-worker-id="web-7:4242:cafe"' in workers
    finally:
        sql(seeded, "UPDATE werkfluss.queue SET lease_id = NULL, worker_id = NULL WHERE run_id = 'hold:6'")
        sql(seeded, "UPDATE werkfluss.runs SET status = 'waiting' WHERE id = 'hold:6'")
        sql(seeded, "DELETE FROM werkfluss.workers WHERE id = 'web-7:4242:cafe'")


def test_the_run_json_has_its_state_and_a_version_that_changes_with_it(
    seeded: str, operator: TestClient
) -> None:
    before = operator.get("/api/runs/hold:5").json()
    assert (before["run_id"], before["status"]) == ("hold:5", "waiting")
    assert before["workflow"] == "tests.dash.hold"
    assert before["waiting_on"] == "hook:hold:5"
    assert operator.get("/api/runs/hold:5").json()["version"] == before["version"]
    operator.post("/actions/send", json={"token": "hold:5", "payload": "1"}, headers=WITH_TOKEN)
    assert operator.get("/api/runs/hold:5").json()["version"] != before["version"]


def test_an_unknown_run_is_a_404_with_a_message(viewer: TestClient) -> None:
    page = viewer.get("/runs/no-such-run")
    assert page.status_code == 404
    assert "no run with id 'no-such-run'" in unescape(page.text)
    api = viewer.get("/api/runs/no-such-run")
    assert api.status_code == 404
    assert "no run with id 'no-such-run'" in api.json()["error"]
    assert viewer.get("/nowhere").status_code == 404


def test_run_ids_with_slashes_and_odd_characters_have_working_links(seeded: str, viewer: TestClient) -> None:
    # (a '%' too, in the browser test: the TestClient decodes paths twice)
    sql(seeded, "SELECT werkfluss.start_run('tests.dash.unserved', '[]', 'odd/id?# 1')")
    html = viewer.get("/runs?prefix=odd/").text
    link = re.search(r'<td class="id"><a href="([^"]+)">odd/id', html)
    assert link
    assert link[1] == "/runs/odd%2Fid%3F%23%201"
    page = viewer.get(link[1])
    assert page.status_code == 200
    assert '<span id="run-id">odd/id?# 1</span>' in page.text


# --- workers and audit -------------------------------------------------------------------------


def test_the_workers_page_lists_the_worker_that_ran_the_seed(viewer: TestClient) -> None:
    html = viewer.get("/workers").text
    rows = re.findall(r'<tr data-worker-id="([^"]+)" data-state="(\w+)">', html)
    assert ("stopped" in {state for _, state in rows})
    assert "tests.dash.onboard" in html
    data = viewer.get("/api/workers").json()
    stopped = [w for w in data["workers"] if w["state"] == "stopped"]
    assert stopped
    assert stopped[0]["alive"] is False
    assert "tests.dash.onboard" in stopped[0]["workflows"]
    assert "data-worker-id" in data["html"]["worker_rows"]


def test_pages_are_sent_with_headers_that_forbid_framing_and_foreign_scripts(viewer: TestClient) -> None:
    page = viewer.get("/runs")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert viewer.get("/static/dashboard.js").status_code == 200
    assert viewer.get("/static/dashboard.css").status_code == 200


# --- read-only ---------------------------------------------------------------------------------


def test_a_read_only_dashboard_shows_no_actions_and_refuses_them(seeded: str, viewer: TestClient) -> None:
    html = viewer.get("/runs/hold:1").text
    assert "read-only" in html
    assert "data-action" not in html
    assert "Cancel run" not in html
    assert 'id="access-token"' not in html
    failed = viewer.get("/runs/fail:1").text
    assert "Retry" not in failed
    with capture_logs() as logs:
        for action, body in (("cancel", {"run_id": "hold:1"}), ("retry", {"run_id": "fail:1"}),
                             ("send", {"token": "hold:1", "payload": "true"})):
            answer = viewer.post(f"/actions/{action}", json=body, headers=WITH_TOKEN)
            assert answer.status_code == 403
            assert answer.json()["reason"] == "read_only"
            assert "--token or $WERKFLUSS_DASHBOARD_TOKEN" in answer.json()["message"]
    assert [e["reason"] for e in logs if e["event"] == "dashboard.action_refused"] == ["read_only"] * 3
    assert status_of(seeded, "hold:1") == "waiting"
    assert status_of(seeded, "fail:1") == "failed"
    assert audit(seeded, "hold:1") == []


# --- actions -----------------------------------------------------------------------------------


def test_actions_are_offered_when_a_token_is_configured(operator: TestClient) -> None:
    html = operator.get("/runs/hold:1").text
    assert 'id="cancel-button"' in html
    assert 'data-action="send"' in html
    assert 'id="access-token"' in html
    assert 'id="retry-button"' in operator.get("/runs/fail:1").text
    completed = operator.get("/runs/onboard:ada").text
    assert 'id="cancel-button"' not in completed
    assert 'id="retry-button"' not in completed


@pytest.mark.parametrize("headers", [
    JSON,
    {**JSON, "X-Werkfluss-Token": "not-the-token-at-all-1234"},
    {**JSON, "X-Werkfluss-Token": TOKEN[:-1]},
    {**JSON, "X-Werkfluss-Token": TOKEN + "x"},
], ids=["none", "wrong", "prefix", "longer"])
def test_an_action_without_the_right_token_is_refused_and_changes_nothing(
    seeded: str, operator: TestClient, headers: dict[str, str]
) -> None:
    with capture_logs() as logs:
        answer = operator.post("/actions/cancel", json={"run_id": "hold:1"}, headers=headers)
    assert answer.status_code == 403
    assert answer.json() == {"ok": False, "reason": "bad_token", "message": (
        "refused: the access token is missing or wrong; enter the dashboard's token at the top of the page")}
    assert status_of(seeded, "hold:1") == "waiting"
    assert audit(seeded, "hold:1") == []
    assert [e for e in logs if e["event"] == "dashboard.action_refused"] == [
        {"event": "dashboard.action_refused", "log_level": "warning", "action": "cancel",
         "reason": "bad_token", "client": "testclient"}]


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
], ids=["origin", "null-origin", "cross-site", "same-site"])
def test_a_cross_site_request_is_refused_even_with_the_token(
    seeded: str, operator: TestClient, headers: dict[str, str]
) -> None:
    answer = operator.post("/actions/cancel", data={"run_id": "hold:1", "access_token": TOKEN},
                           headers={**WITH_TOKEN, **headers})
    assert answer.status_code == 403
    assert answer.json()["reason"] == "cross_origin"
    assert status_of(seeded, "hold:1") == "waiting"


def test_cancel_with_the_token_cancels_records_and_logs(seeded: str, operator: TestClient) -> None:
    with capture_logs() as logs:
        answer = operator.post("/actions/cancel", json={"run_id": "hold:2"},
                               headers={**WITH_TOKEN, "Origin": "http://testserver",
                                        "Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "message": "Cancelled.", "outcome": "cancelled", "run_id": "hold:2"}
    assert status_of(seeded, "hold:2") == "cancelled"
    assert audit(seeded, "hold:2") == [("cancel", "cancelled", "testclient")]
    assert {"event": "dashboard.action", "log_level": "info", "action": "cancel", "run_id": "hold:2",
            "outcome": "cancelled", "client": "testclient"} in logs
    again = operator.post("/actions/cancel", json={"run_id": "hold:2"}, headers=WITH_TOKEN)
    assert again.json()["outcome"] == "already_finished"
    assert audit(seeded, "hold:2")[-1] == ("cancel", "already_finished", "testclient")
    page = operator.get("/runs/hold:2").text
    assert "Actions on this run" in page
    assert "already_finished" in page
    assert "hold:2" in operator.get("/audit").text


def test_a_plain_form_with_the_token_field_is_redirected_to_the_run(
    seeded: str, operator: TestClient
) -> None:
    answer = operator.post("/actions/cancel", data={"run_id": "hold:3", "access_token": TOKEN},
                           follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/runs/hold:3?done=cancel%3Acancelled"
    assert status_of(seeded, "hold:3") == "cancelled"
    page = operator.get(answer.headers["location"]).text
    assert '<div id="flash" role="status" class="flash ok">Cancelled.</div>' in page
    refused = operator.post("/actions/cancel", data={"run_id": "hold:3", "access_token": "nope"})
    assert refused.status_code == 403
    assert "access token is missing or wrong" in refused.text


def test_retry_resumes_a_failed_run(seeded: str, operator: TestClient) -> None:
    answer = operator.post("/actions/retry", json={"run_id": "fail:2"}, headers=WITH_TOKEN)
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "retried"
    assert status_of(seeded, "fail:2") == "pending"
    assert audit(seeded, "fail:2") == [("retry", "retried", "testclient")]
    completed = operator.post("/actions/retry", json={"run_id": "onboard:ada"}, headers=WITH_TOKEN)
    assert completed.json()["outcome"] == "not_retryable"
    assert status_of(seeded, "onboard:ada") == "completed"


def send(client: TestClient, token: str, payload: str | None = None, **fields: str) -> Any:
    body = {"token": token, **({"payload": payload} if payload is not None else {}), **fields}
    return client.post("/actions/send", json=body, headers=WITH_TOKEN)


def test_send_delivers_to_a_waiting_hook_and_says_why_when_it_cannot(
    seeded: str, operator: TestClient
) -> None:
    delivered = send(operator, "hold:4", '{"approved": true}', run_id="hold:4")
    assert delivered.status_code == 200
    assert delivered.json()["outcome"] == "delivered"
    assert sql_value(seeded, "SELECT payload::text FROM werkfluss.hook_payloads WHERE token = 'hold:4'") == (
        '{"approved": true}')
    again = send(operator, "hold:4", "2")
    assert again.status_code == 409
    assert again.json()["outcome"] == "already_used"
    assert "single-use and already received its payload" in again.json()["message"]
    ended = send(operator, "approve:ada", "1")
    assert ended.json()["outcome"] == "run_ended"
    stored = send(operator, "nobody:yet", "[1]")
    assert stored.json() == {"ok": True, "message": "Payload stored; no hook with this token yet.",
                             "outcome": "stored"}
    duplicate = send(operator, "nobody:yet", "[2]")
    assert duplicate.json()["outcome"] == "duplicate_early_payload"
    unknown = send(operator, "wfh_" + "0" * 64)
    assert unknown.json()["outcome"] == "unknown_token"
    rows = sql(seeded, "SELECT run_id, detail FROM werkfluss.audit WHERE action = 'send' ORDER BY id")
    assert ("hold:4", {"outcome": "delivered", "token": "hold:4", "payload": {"approved": True}}) in rows
    assert ("onboard:ada", {"outcome": "run_ended", "token": "approve:ada", "payload": 1}) in rows


def test_a_payload_that_is_not_json_is_refused_and_nothing_is_sent(seeded: str, operator: TestClient) -> None:
    answer = operator.post("/actions/send", json={"token": "hold:1", "payload": "{approved: yes}"},
                           headers=WITH_TOKEN)
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("the payload must be JSON")
    assert sql_value(seeded, "SELECT count(*) FROM werkfluss.hook_payloads WHERE token = 'hold:1'") == 0
    assert audit(seeded, "hold:1") == []


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/actions/cancel", {}, 400, "run_id is None"),
    ("/actions/cancel", {"run_id": "no-such-run"}, 404, "no run with id 'no-such-run'"),
    ("/actions/retry", {"run_id": ""}, 400, "run_id is empty"),
    ("/actions/send", {"payload": "1"}, 400, "token"),
])
def test_bad_action_requests_get_a_clear_error(
    operator: TestClient, path: str, body: dict[str, str], status: int, message: str
) -> None:
    answer = operator.post(path, json=body, headers=WITH_TOKEN)
    assert answer.status_code == status
    assert message in answer.json()["message"]


def test_an_oversized_or_malformed_body_is_refused(operator: TestClient) -> None:
    big = operator.post("/actions/send", content=b"x" * (1 << 20 + 1),
                        headers={**WITH_TOKEN, "Content-Type": "application/json"})
    assert big.status_code == 413
    broken = operator.post("/actions/cancel", content=b"{not json",
                           headers={**WITH_TOKEN, "Content-Type": "application/json"})
    assert broken.status_code == 400
    assert "not JSON" in broken.json()["message"]
    assert operator.get("/actions/cancel").status_code == 405


# --- queues and schedules ----------------------------------------------------------------------

EXPORTS = Queue("tests.dash.exports", concurrency=3, worker_concurrency=10, rate_limit="100/min")


@pytest.fixture(scope="module")
def flow(pg_server: str) -> Iterator[str]:
    """A database of its own (the run list's tests count every run): five runs in
    a queue limited to three at once, three of them holding a worker; two
    schedules, one of them paused, and one broken."""
    dsn = create_database(pg_server, prefix="werkfluss_dash_flow")

    async def _prepare() -> None:
        async with Engine(dsn) as engine:
            await migrate(engine.connector)
            for n in range(5):
                await engine.start("tests.dash.export", n, run_id=f"export:{n}",
                                   options=StartOptions(queue=EXPORTS))
            await engine.schedule("tests.dash.report", "0 3 * * *", name="nightly-report",
                                  timezone="Europe/Berlin")
            await engine.schedule("tests.dash.report", "*/5 * * * *", name="paused-report")
            await engine.pause_schedule("paused-report")
            await engine.schedule("tests.dash.report", "0 4 * * *", name="broken-report")

    try:
        asyncio.run(_prepare())
        # The claim the workers make: the queue's limit lets three of the five take a worker.
        claimed = sql(dsn, "SELECT (c.run).id"
                           "  FROM werkfluss._claim(ARRAY['tests.dash.export'], 10, 'w-test') c")
        assert len(claimed) == 3
        sql(dsn, "UPDATE werkfluss.schedules SET error = 'the workflow tests.dash.report is gone'"
                 " WHERE name = 'broken-report'")
        yield dsn
    finally:
        drop_database(pg_server, dsn)


def queue_row(html: str, name: str) -> str:
    match = re.search(rf'<tr data-queue="{re.escape(name)}">(.*?)</tr>', html, re.DOTALL)
    assert match, f"no row for queue {name} in {html}"
    return match[1]


def schedule_row(html: str, name: str) -> str:
    pattern = rf'<tr data-schedule="{re.escape(name)}" data-state="(\w+)">(.*?)</tr>'
    match = re.search(pattern, html, re.DOTALL)
    assert match, f"no row for schedule {name} in {html}"
    return f"{match[1]} {match[2]}"


def test_the_queues_page_shows_the_runs_holding_a_worker_against_the_limit(flow: str) -> None:
    with dashboard(flow) as client:
        page = client.get("/queues")
        assert page.status_code == 200
        assert 'class="current">Queues</a>' in page.text
        row = queue_row(page.text, "tests.dash.exports")
        assert re.search(r'class="num held">3/3<', row)
        assert re.search(r'class="num depth">2<', row)  # the two runs the limit keeps waiting
        assert "100 per 1m 00s" in row
        data = client.get("/api/queues").json()
    (exports,) = [q for q in data["queues"] if q["name"] == "tests.dash.exports"]
    assert (exports["concurrency"], exports["running"], exports["ready"], exports["depth"]) == (3, 3, 2, 2)
    assert (exports["worker_concurrency"], exports["rate_limit"], exports["rate_period"]) == (10, 100, 60.0)
    assert 0 < exports["tokens"] <= 97.5  # three starts taken from a full bucket of 100
    assert re.search(r'class="num held">3/3<', queue_row(data["html"]["queue_rows"], "tests.dash.exports"))


def test_the_queue_list_follows_the_queue_on_each_poll(flow: str) -> None:
    def exports(client: TestClient) -> dict[str, Any]:
        data = client.get("/api/queues").json()
        (queue,) = [q for q in data["queues"] if q["name"] == "tests.dash.exports"]
        assert f'class="num depth">{queue["depth"]}<' in queue_row(data["html"]["queue_rows"], queue["name"])
        return dict(queue)

    with dashboard(flow) as client:
        before = exports(client)
        sql(flow, "SELECT werkfluss.start_run('tests.dash.export', '[5]', run_id => 'export:5',"
                  " queue => 'tests.dash.exports')")
        try:
            assert exports(client)["depth"] == before["depth"] + 1
        finally:
            sql(flow, "SELECT werkfluss.cancel_run('export:5')")
        assert exports(client)["depth"] == before["depth"]


def test_the_schedules_page_shows_the_next_tick_the_state_and_the_error(flow: str) -> None:
    with dashboard(flow) as client:
        page = client.get("/schedules")
        assert page.status_code == 200
        assert 'class="current">Schedules</a>' in page.text
        data = client.get("/api/schedules").json()
    schedules = {s["name"]: s for s in data["schedules"]}
    assert set(schedules) == {"nightly-report", "paused-report", "broken-report"}
    nightly = schedules["nightly-report"]
    assert (nightly["cron"], nightly["timezone"], nightly["paused"]) == ("0 3 * * *", "Europe/Berlin", False)
    assert nightly["next_tick"] is not None
    next_tick = dt.datetime.fromisoformat(nightly["next_tick"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (next_tick.hour, next_tick.minute) == (3, 0)
    row = schedule_row(page.text, "nightly-report")
    assert row.startswith("active ")
    assert f'<time datetime="{nightly["next_tick"]}">' in row
    assert "no run yet" in row
    paused = schedule_row(page.text, "paused-report")
    assert paused.startswith("paused ")
    assert "none while paused" in paused
    assert schedules["paused-report"]["next_tick"] is None
    broken = schedule_row(page.text, "broken-report")
    assert broken.startswith("broken ")
    assert "the workflow tests.dash.report is gone" in broken
    assert set(schedules) == {n for n in ("nightly-report", "paused-report", "broken-report")
                              if f'data-schedule="{n}"' in data["html"]["schedule_rows"]}


def test_a_schedules_last_run_links_to_its_page_with_its_status(flow: str) -> None:
    run_id = sql_value(flow, "SELECT werkfluss.trigger_schedule('nightly-report')")
    with dashboard(flow) as client:
        row = schedule_row(client.get("/schedules").text, "nightly-report")
        assert f'<a href="/runs/{run_id}">{run_id}</a>' in row
        assert '<span class="pill status-pending">pending</span>' in row
        assert client.get(f"/runs/{run_id}").status_code == 200


def test_the_queues_page_shows_a_per_key_start_rate_and_the_starts_waiting_for_it(flow: str) -> None:
    sql(flow, "SELECT werkfluss.declare_queue('tests.dash.keyed', key_rate_limit => 1,"
              " key_rate_period => '1 hour')")
    sql(flow, "SELECT werkfluss.start_run('tests.dash.keyed_export', '[]', 'keyed:' || i,"
              " queue => 'tests.dash.keyed', concurrency_key => 'customer-42') FROM generate_series(1, 3) i")
    try:
        claimed = sql(flow, "SELECT (c.run).id"
                            "  FROM werkfluss._claim(ARRAY['tests.dash.keyed_export'], 10, 'w') c")
        assert claimed == [("keyed:1",)]
        with dashboard(flow) as client:
            row = queue_row(client.get("/queues").text, "tests.dash.keyed")
            assert re.search(r'class="key-rate">1 per 1h 00m<div class="sub">for each key</div>', row), row
            assert re.search(r'class="num throttled">2<', row)
            assert re.search(r'class="num depth">2<', row)
            listed = client.get("/api/queues").json()["queues"]
            (keyed,) = [q for q in listed if q["name"] == "tests.dash.keyed"]
            assert (keyed["key_rate_limit"], keyed["key_rate_period"], keyed["throttled"]) == (1, 3600.0, 2)
            page = unescape(client.get("/runs/keyed:2").text)
            assert "rate limit queue tests.dash.keyed key customer-42 until " in page
    finally:
        sql(flow, "SELECT werkfluss.cancel_run('keyed:' || i) FROM generate_series(1, 3) i")
        sql(flow, "DELETE FROM werkfluss.queues WHERE name = 'tests.dash.keyed'")


def test_the_queues_page_offers_no_actions(flow: str) -> None:
    with dashboard(flow, token=TOKEN) as client:
        assert "data-action" not in client.get("/queues").text


# --- schedule actions ----------------------------------------------------------------------------


@contextmanager
def schedule(dsn: str, name: str, *, paused: bool = False) -> Iterator[str]:
    """A schedule of its own for a test (deleted afterwards, with the runs it started)."""
    sql(dsn, "SELECT werkfluss.create_schedule(%s, 'tests.dash.report', '0 5 * * *', 'Europe/Berlin')",
        [name])
    if paused:
        sql(dsn, "SELECT werkfluss.pause_schedule(%s)", [name])
    try:
        yield name
    finally:
        sql(dsn, "DELETE FROM werkfluss.schedules WHERE name = %s", [name])
        sql(dsn, "DELETE FROM werkfluss.queue WHERE run_id LIKE %s", [f"schedule:{name}:%"])
        sql(dsn, "DELETE FROM werkfluss.runs WHERE id LIKE %s", [f"schedule:{name}:%"])


def schedule_audit(dsn: str, name: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT action, run_id, detail->>'outcome', client FROM werkfluss.audit"
                    " WHERE detail->>'schedule' = %s ORDER BY id", [name])


def paused(dsn: str, name: str) -> bool | None:
    value = sql_value(dsn, "SELECT paused FROM werkfluss.schedules WHERE name = %s", [name])
    return None if value is None else bool(value)


def act(client: TestClient, action: str, name: str | None, headers: dict[str, str] = WITH_TOKEN) -> Any:
    body = {} if name is None else {"schedule": name}
    return client.post(f"/actions/schedule/{action}", json=body, headers=headers)


def test_schedule_actions_are_offered_with_the_token_only(flow: str) -> None:
    with schedule(flow, "offered-report"), schedule(flow, "offered-paused", paused=True):
        with dashboard(flow) as client:
            page = client.get("/schedules").text
            assert "data-action" not in page
            assert "werkfluss schedules pause|resume|trigger|delete NAME" in page
        with dashboard(flow, token=TOKEN) as client:
            page = client.get("/schedules").text
            polled = client.get("/api/schedules").json()["html"]["schedule_rows"]
    for html in (page, polled):
        active, held = schedule_row(html, "offered-report"), schedule_row(html, "offered-paused")
        assert 'data-action="pause"' in active
        assert 'data-action="resume"' not in active
        assert 'data-action="resume"' in held
        assert 'data-action="pause"' not in held
        for row in (active, held):
            assert 'data-action="trigger" data-confirm="Start a run of ' in row
            assert 'data-action="delete" data-confirm="Delete schedule ' in row
    # A schedule declared in code comes back when a worker starts: the confirmation says so.
    code = schedule_row(page, "nightly-report")
    assert "Delete schedule nightly-report? The runs it started are kept." in unescape(code)


def test_pause_resume_trigger_and_delete_a_schedule_with_the_token(flow: str) -> None:
    with schedule(flow, "acted-report") as name, dashboard(flow, token=TOKEN) as client:
        with capture_logs() as logs:
            paused_now = act(client, "pause", name)
        assert paused_now.status_code == 200
        assert paused_now.json() == {
            "ok": True, "message": "Paused: the schedule starts no run until it is resumed.",
            "outcome": "paused", "schedule": name}
        assert paused(flow, name) is True
        assert {"event": "dashboard.action", "log_level": "info", "action": "pause", "run_id": None,
                "outcome": "paused", "client": "testclient"} in logs
        assert act(client, "pause", name).json()["outcome"] == "already_paused"
        assert act(client, "resume", name).json()["outcome"] == "resumed"
        assert paused(flow, name) is False
        assert act(client, "resume", name).json()["outcome"] == "not_paused"

        triggered = act(client, "trigger", name)
        assert triggered.status_code == 200
        run_id = triggered.json()["run_id"]
        assert run_id.startswith(f"schedule:{name}:manual:")
        assert status_of(flow, run_id) == "pending"
        assert f'<a href="/runs/{run_id}">{run_id}</a>' in schedule_row(client.get("/schedules").text, name)

        deleted = act(client, "delete", name)
        assert deleted.json()["outcome"] == "deleted"
        assert paused(flow, name) is None
        assert status_of(flow, run_id) == "pending"  # the runs it started are kept
        gone = act(client, "delete", name)
        assert gone.status_code == 404
        assert gone.json()["message"] == (
            f"no schedule named {name!r}; list schedules with `python -m werkfluss schedules`")
        assert schedule_audit(flow, name) == [
            ("pause", None, "paused", "testclient"), ("pause", None, "already_paused", "testclient"),
            ("resume", None, "resumed", "testclient"), ("resume", None, "not_paused", "testclient"),
            ("trigger", run_id, "triggered", "testclient"), ("delete", None, "deleted", "testclient")]
        audit_page = client.get("/audit").text
        assert '<tr data-action="trigger">' in audit_page
        assert "<code>schedule</code> acted-report" in audit_page


@pytest.mark.parametrize("action", ["pause", "resume", "trigger", "delete"])
def test_a_schedule_action_without_the_token_is_refused_and_changes_nothing(flow: str, action: str) -> None:
    with schedule(flow, "guarded-report") as name:
        with dashboard(flow) as viewer:
            read_only = act(viewer, action, name)
        assert read_only.status_code == 403
        assert read_only.json()["reason"] == "read_only"
        with dashboard(flow, token=TOKEN) as client:
            for headers in (JSON, {**JSON, "X-Werkfluss-Token": "not-the-token-at-all-1234"}):
                answer = act(client, action, name, headers)
                assert answer.status_code == 403
                assert answer.json()["reason"] == "bad_token"
            cross = act(client, action, name, {**WITH_TOKEN, "Origin": "https://evil.example"})
            assert cross.json()["reason"] == "cross_origin"
        assert paused(flow, name) is False
        assert sql_value(flow, "SELECT count(*) FROM werkfluss.runs WHERE id LIKE %s",
                         [f"schedule:{name}:%"]) == 0
        assert schedule_audit(flow, name) == []


def test_a_plain_form_acting_on_a_schedule_is_redirected(flow: str) -> None:
    with schedule(flow, "form-report") as name, dashboard(flow, token=TOKEN) as client:
        answer = client.post("/actions/schedule/pause", data={"schedule": name, "access_token": TOKEN},
                             follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/schedules?done=pause%3Apaused"
        page = client.get(answer.headers["location"]).text
        assert ('<div id="flash" role="status" class="flash ok">'
                'Paused: the schedule starts no run until it is resumed.</div>') in page
        started = client.post("/actions/schedule/trigger", data={"schedule": name, "access_token": TOKEN},
                              follow_redirects=False)
        assert started.status_code == 303
        assert started.headers["location"].startswith(f"/runs/schedule:{name}:manual:")
        assert started.headers["location"].endswith("?done=trigger%3Atriggered")


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 400, "the schedule name is None"),
    ({"schedule": "a:b"}, 400, "contains ':'"),
    ({"schedule": "no-such-schedule"}, 404, "no schedule named 'no-such-schedule'"),
])
def test_bad_schedule_action_requests_get_a_clear_error(
    flow: str, body: dict[str, str], status: int, message: str
) -> None:
    with dashboard(flow, token=TOKEN) as client:
        for action in ("pause", "resume", "trigger", "delete"):
            answer = client.post(f"/actions/schedule/{action}", json=body, headers=WITH_TOKEN)
            assert answer.status_code == status, action
            assert message in answer.json()["message"]


# --- its database role -------------------------------------------------------------------------


def test_the_dashboard_works_with_exactly_the_documented_grants(seeded: str) -> None:
    with dashboard_role(seeded, actions=True) as role_dsn, dashboard(role_dsn, token=TOKEN) as client:
        for path in ("/runs", "/api/runs?status=waiting&age=1h", "/runs/onboard:ada", "/runs/parent:eve",
                     "/runs/nap:dee", "/api/runs/onboard:bob", "/workers", "/api/workers", "/audit",
                     "/queues", "/api/queues", "/schedules", "/api/schedules"):
            assert client.get(path).status_code == 200, path
        cancel = client.post("/actions/cancel", json={"run_id": "hold:6"}, headers=WITH_TOKEN)
        assert cancel.status_code == 200
        retry = client.post("/actions/retry", json={"run_id": "fail:3"}, headers=WITH_TOKEN)
        assert retry.status_code == 200
        sent = send(client, "approve:bob", '"yes"')
        assert sent.json()["outcome"] == "delivered"
        with schedule(seeded, "granted-report") as name:
            for action in ("pause", "resume", "trigger", "delete"):
                assert act(client, action, name).status_code == 200, action
    assert status_of(seeded, "hold:6") == "cancelled"
    assert status_of(seeded, "fail:3") == "pending"
    assert audit(seeded, "onboard:bob") == [("send", "delivered", "testclient")]


def test_a_read_only_dashboard_needs_only_the_read_grants(seeded: str) -> None:
    with dashboard_role(seeded, actions=False) as role_dsn:
        with dashboard(role_dsn) as client:
            assert client.get("/runs/onboard:ada").status_code == 200
            assert client.get("/workers").status_code == 200
            assert client.get("/api/queues").status_code == 200
            assert client.get("/api/schedules").status_code == 200
        with pytest.raises(ConfigurationError) as refused, dashboard(role_dsn, token=TOKEN):
            pass
    message = str(refused.value)
    assert "INSERT on werkfluss.audit" in message
    assert "EXECUTE on werkfluss.retry_run(text)" in message
    assert "EXECUTE on werkfluss.pause_schedule(text)" in message
    assert "see the Dashboard section of docs/operations.md" in message


def test_a_role_without_read_access_is_told_which_grants_it_lacks(seeded: str) -> None:
    with login_role(seeded, "werkfluss_client") as client_dsn, \
            pytest.raises(ConfigurationError) as refused, dashboard(client_dsn):
        pass
    assert "lacks SELECT on werkfluss.runs, SELECT on werkfluss.events" in str(refused.value)
