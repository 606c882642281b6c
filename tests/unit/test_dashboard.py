"""The dashboard's pure parts: the timeline, what a run waits for, the filters,
the token and same-origin rules, the command's options (no database)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from werkfluss import telemetry
from werkfluss.cli.dashboard import serve, views
from werkfluss.cli.dashboard.filters import RunFilters
from werkfluss.cli.dashboard.guard import BAD_TOKEN, CROSS_ORIGIN, READ_ONLY, Guard, check_token, same_origin
from werkfluss.cli.main import main, parser
from werkfluss.errors import ConfigurationError, InvalidArgument
from werkfluss.runs import RunInfo, StepRecord
from werkfluss.store.dashboard import ChildRun, HookState

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.UTC)
TOKEN = "a-token-of-twenty-chars"


def at(ms: float) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=ms)


def run(status: str = "completed", **fields: Any) -> RunInfo:
    values: dict[str, Any] = dict(
        run_id="r1", workflow="app.onboard", status=status, args=["ada"], kwargs={}, result=None,
        error=None, parent_id=None, wake_at=None, waiting_on=None, deadline=None, created_at=at(0),
        started_at=at(10), finished_at=at(1000) if status in ("completed", "failed", "cancelled") else None,
        updated_at=at(500),
    )
    values.update(fields)
    return RunInfo(**values)


def record(seq: int, kind: str, name: str, start: float, end: float, **fields: Any) -> StepRecord:
    values: dict[str, Any] = dict(seq=seq, name=name, status="completed", input=None, output=None, error=None,
                                  attempts=1, started_at=at(start), finished_at=at(end), kind=kind)
    values.update(fields)
    return StepRecord(**values)


# --- the timeline ----------------------------------------------------------------------------


def test_each_durable_call_becomes_a_bar_placed_on_the_runs_time_axis() -> None:
    log = [
        record(1, "step", "app.fetch_data", 10, 110),
        record(2, "step", "app.reserve", 110, 310, attempts=3),
        record(3, "sleep", "sleep", 310, 310, output={"wake_at": at(510).isoformat()}),
        record(4, "hook", "approve:ada", 510, 510),
        record(5, "receive", "approve:ada", 700, 710, output={"approved": True}),
        record(6, "child", "app.welcome", 800, 900, output={"run_id": "r1::6", "status": "completed"}),
    ]
    children = [ChildRun("r1::6", "app.welcome", "completed", at(720), at(730), at(790), None, None)]
    hooks = [HookState("approve:ada", 4, False, at(510), 1, 0)]
    timeline = views.build_timeline(run(), log, children, hooks, now=at(5000))
    got = [(b.kind, b.seq, b.left, b.width, b.status) for b in timeline.bars]
    assert got == [
        ("run", None, 0.0, 100.0, "completed"),
        ("step", 1, 1.0, 10.0, "completed"),
        ("step", 2, 11.0, 20.0, "completed"),
        ("sleep", 3, 31.0, 20.0, "completed"),
        ("wait", 5, 51.0, 20.0, "completed"),  # from the hook's creation to the payload's receipt
        ("child", 6, 72.0, 7.0, "completed"),  # the child run's own lifetime
    ]
    assert timeline.now_at is None  # a finished run has no "now"
    assert timeline.bars[2].retries == 2
    assert timeline.bars[5].link == "r1::6"
    assert timeline.span == "1.00 s"
    assert [label for _, label in timeline.ticks] == ["0", "+250.0 ms", "+500.0 ms", "+750.0 ms", "+1.00 s"]


def test_a_run_still_going_has_open_bars_up_to_now() -> None:
    info = run("waiting", waiting_on="hook:approve:bob, run:r1::3", updated_at=at(300))
    log = [record(1, "step", "app.fetch_data", 10, 110), record(2, "hook", "approve:bob", 200, 200)]
    children = [ChildRun("r1::3", "app.child", "running", at(250), at(260), None, None, None)]
    hooks = [HookState("approve:bob", 2, False, at(200), 0, 0)]
    timeline = views.build_timeline(info, log, children, hooks, now=at(1000))
    by_kind = {b.kind: b for b in timeline.bars}
    assert (by_kind["wait"].left, by_kind["wait"].width, by_kind["wait"].status) == (20.0, 80.0, "open")
    assert (by_kind["child"].left, by_kind["child"].width, by_kind["child"].status) == (25.0, 75.0, "open")
    assert by_kind["run"].status == "open"
    assert timeline.now_at == 100.0


def test_a_long_sleep_stretches_the_axis_and_short_steps_stay_visible() -> None:
    info = run("sleeping", wake_at=at(7_200_000))
    log = [record(1, "step", "app.fetch_data", 10, 11),
           record(2, "sleep", "sleep", 11, 11, output={"wake_at": at(7_200_011).isoformat()})]
    timeline = views.build_timeline(info, log, [], [], now=at(1000))
    step, sleep = timeline.bars[1], timeline.bars[2]
    assert step.width == views.MIN_WIDTH  # a millisecond in two hours, still drawn
    assert sleep.status == "open"
    assert sleep.width > 99
    assert timeline.now_at is not None
    assert 0 < timeline.now_at < 1


def test_a_long_log_draws_its_first_bars_and_what_is_still_open() -> None:
    info = run("waiting", waiting_on="hook:last", updated_at=at(900))
    log = [record(n, "step", "app.tick", n, n + 0.5) for n in range(1, 501)]
    hooks = [HookState("last", 501, False, at(600), 0, 0)]
    timeline = views.build_timeline(info, log, [], hooks, now=at(1000), max_bars=100)
    assert [b.seq for b in timeline.bars[1:101]] == list(range(1, 101))
    assert timeline.bars[-1].label == "hook last"
    assert timeline.bars[-1].status == "open"
    assert len(timeline.bars) == 102
    assert timeline.hidden == 400


def test_a_failed_step_carries_its_error_in_the_tooltip() -> None:
    log = [record(1, "step", "app.charge", 10, 20, status="failed", attempts=4,
                  error={"type": "ValueError", "message": "card declined"})]
    bar = views.build_timeline(run("failed"), log, [], [], now=at(2000)).bars[1]
    assert bar.status == "failed"
    assert "ValueError: card declined" in bar.detail
    assert "4 attempts" in bar.detail


def test_bars_never_leave_the_chart_even_with_clocks_that_disagree() -> None:
    # a record stamped before the run's creation (the run row and the log written by different clocks)
    log = [record(1, "step", "app.fetch_data", -50, 20)]
    timeline = views.build_timeline(run("running", finished_at=None), log, [], [], now=at(-10))
    for bar in timeline.bars:
        assert 0 <= bar.left <= 100
        assert bar.left + bar.width <= 100.0001
        assert bar.width >= views.MIN_WIDTH


# --- waits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("waiting_on", "hooks", "runs"), [
    (None, [], []),
    ("hook:approve", ["approve"], []),
    ("hook:order-42:approval, run:p1::5", ["order-42:approval"], ["p1::5"]),
    ("run:a::1, run:a::2, hook:x, y", ["x, y"], ["a::1", "a::2"]),  # a token with ", " in it
])
def test_waiting_on_is_split_into_hook_tokens_and_child_runs(
    waiting_on: str | None, hooks: list[str], runs: list[str]
) -> None:
    assert views.parse_waiting_on(waiting_on) == (hooks, runs)


def test_waits_name_the_wake_time_the_hooks_and_the_children() -> None:
    info = run("waiting", waiting_on="hook:h1, run:r1::3", wake_at=at(9000))
    hooks = [HookState("h1", 2, False, at(100), 0, 0), HookState("other", 5, False, at(100), 1, 1)]
    children = [ChildRun("r1::3", "app.child", "waiting", at(1), None, None, None, None)]
    waits = views.waits_of(info, hooks, children)
    assert waits.anything
    assert waits.wake_at == at(9000)
    assert [h.token for h in waits.hooks] == ["h1"]
    assert [c.run_id for c in waits.children] == ["r1::3"]
    assert not views.waits_of(run("completed"), hooks, children).anything


@pytest.mark.parametrize(("seconds", "text"), [
    (None, ""), (-1, "0.0 ms"), (0.0004, "0.4 ms"), (0.5, "500.0 ms"), (4.2, "4.20 s"), (187, "3m 07s"),
    (7500, "2h 05m"), (90061, "1d 01h"),
])
def test_durations_are_short_and_readable(seconds: float | None, text: str) -> None:
    assert views.format_duration(seconds) == text


def test_relative_times_say_ago_or_in() -> None:
    assert views.relative(at(0), at(3000)) == "3.00 s ago"
    assert views.relative(at(7_200_000), at(0)) == "in 2h 00m"
    assert views.relative(at(0), at(100)) == "now"
    assert views.relative(None, at(0)) == ""


# --- filters ----------------------------------------------------------------------------------


def test_filters_are_read_and_written_back_as_a_query_string() -> None:
    filters = RunFilters.parse({"status": "failed", "workflow": " app.onboard ", "age": "24h",
                                "prefix": "order:", "limit": "100"})
    assert filters == RunFilters("failed", "app.onboard", "24h", "order:", 100)
    assert filters.since_seconds == 86400
    assert filters.query() == "status=failed&workflow=app.onboard&age=24h&prefix=order%3A&limit=100"
    assert filters.query(status="") == "workflow=app.onboard&age=24h&prefix=order%3A&limit=100"
    assert RunFilters.parse({}) == RunFilters()
    assert RunFilters().since_seconds is None
    assert RunFilters().query() == ""


@pytest.mark.parametrize(("params", "message"), [
    ({"status": "done"}, "unknown status 'done'; use one of pending, running"),
    ({"workflow": "x" * 300}, "255"),
    ({"age": "0s"}, "age must be positive"),
    ({"age": "yesterday"}, "age"),
    ({"limit": "501"}, "limit must be a whole number from 1 to 500, got 501"),
    ({"prefix": "p" * 256}, "run ids have at most 255"),
])
def test_bad_filters_say_what_to_fix(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        RunFilters.parse(params)
    assert message in str(refused.value)


# --- the token and the origin ---------------------------------------------------------------


def test_without_a_token_every_action_is_refused_as_read_only() -> None:
    guard = Guard(None)
    assert guard.read_only
    assert guard.check({"x-werkfluss-token": TOKEN}, host="h", given=TOKEN) is READ_ONLY


def test_the_token_is_taken_from_the_header_or_the_form_and_must_match_exactly() -> None:
    guard = Guard(TOKEN)
    assert not guard.read_only
    assert guard.check({"x-werkfluss-token": TOKEN}, host="h", given=None) is None
    assert guard.check({}, host="h", given=TOKEN) is None
    assert guard.check({}, host="h", given=None) is BAD_TOKEN
    assert guard.check({}, host="h", given="") is BAD_TOKEN
    assert guard.check({"x-werkfluss-token": TOKEN.upper()}, host="h", given=None) is BAD_TOKEN
    assert guard.check({"x-werkfluss-token": "wrong"}, host="h", given=TOKEN) is BAD_TOKEN  # the header wins
    assert guard.check({}, host="h", given="ü" * 20) is BAD_TOKEN


@pytest.mark.parametrize(("headers", "host", "allowed"), [
    ({}, "127.0.0.1:8080", True),  # curl, a script: no browser to trick
    ({"origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"}, "127.0.0.1:8080", True),
    ({"origin": "https://Dash.Example.com"}, "dash.example.com", True),  # TLS ends at a proxy
    ({"sec-fetch-site": "none"}, "h", True),  # typed into the address bar
    ({"origin": "http://127.0.0.1:8081"}, "127.0.0.1:8080", False),
    ({"origin": "https://evil.example"}, "127.0.0.1:8080", False),
    ({"origin": "null"}, "127.0.0.1:8080", False),
    ({"origin": "http://127.0.0.1:8080"}, None, False),
    ({"sec-fetch-site": "cross-site"}, "h", False),
    ({"sec-fetch-site": "same-site"}, "h", False),
])
def test_only_same_origin_requests_may_act(headers: dict[str, str], host: str | None, allowed: bool) -> None:
    assert same_origin(headers, host) is allowed
    expected = None if allowed else CROSS_ORIGIN
    assert Guard(TOKEN).check({**headers, "x-werkfluss-token": TOKEN}, host=host, given=None) is expected


@pytest.mark.parametrize(("token", "message"), [
    ("short", "at least 16 characters long (got 5)"),
    (" " * 20, "at least 16 characters"),
    ("a token with spaces in it", "printable ASCII characters without spaces"),
    ("ünïcödé-token-of-length", "printable ASCII"),
])
def test_a_weak_or_unsendable_token_is_refused(token: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_token(token)
    assert message in str(refused.value)
    assert check_token("") is None


# --- the command -----------------------------------------------------------------------------


def options(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["dashboard", *argv])


def test_the_command_defaults_to_this_machine_and_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WERKFLUSS_DASHBOARD_TOKEN", raising=False)
    args = options()
    serve.check_arguments(args)
    assert (args.host, args.port, args.access_token) == ("127.0.0.1", 8080, None)


def test_the_token_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKFLUSS_DASHBOARD_TOKEN", "from-the-environment-1")
    args = options()
    serve.check_arguments(args)
    assert args.access_token == "from-the-environment-1"
    args = options("--token", TOKEN)
    serve.check_arguments(args)
    assert args.access_token == TOKEN


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "--port must be from 0 to 65535, got 70000"),
    (["--port", "-1"], "--port must be from 0 to 65535, got -1"),
    (["--host", " "], "--host is empty"),
    (["--token", "1234"], "the dashboard's access token must be at least 16 characters long"),
])
def test_bad_options_are_one_line_errors_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() would configure structlog to print to this test's captured stderr, for good
    monkeypatch.setattr(telemetry, "configure_logging", lambda *a, **k: None)
    # the DSN points nowhere: the options are refused before any connection
    assert main(["dashboard", *argv, "--dsn", "postgresql://nobody@127.0.0.1:1/none"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"werkfluss: {message}")
    assert err.count("\n") == 1


def test_a_port_in_use_is_a_clear_error() -> None:
    taken = serve._listen("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigurationError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*another --port"):
            serve._listen("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


async def test_without_the_dashboard_extra_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(ConfigurationError) as refused:
        await serve.serve(None, options())  # type: ignore[arg-type]
    assert "pip install 'werkfluss[dashboard]'" in str(refused.value)


# --- packaging -----------------------------------------------------------------------------


def test_the_wheel_ships_the_templates_and_static_files(tmp_path: Path) -> None:
    from hatchling.builders.wheel import WheelBuilder

    package = ROOT / "werkfluss" / "cli" / "dashboard"
    wanted = {str(p.relative_to(ROOT))
              for folder in ("templates", "static") for p in (package / folder).iterdir()}
    assert any(name.endswith("run.html") for name in wanted)
    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert wanted <= shipped
    assert "werkfluss/sql/migrations/0010_dashboard_audit.sql" in shipped
