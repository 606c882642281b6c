"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium.

`werkfluss dashboard` runs as a process of its own, logged in as a role with
exactly the grants docs/operations.md gives, on runs in every state
(tests/dashboard_app.py). The browser loads the pages, filters, opens a run
and sees its timeline, sends a payload, cancels a run with the token after
being refused without it, and pauses and deletes a schedule.

Nothing is downloaded: the browser is /usr/bin/chromium and the driver
/usr/bin/chromedriver (``apt-get install chromium chromium-driver``; .ci/run
does it), and Selenium Manager is kept offline. Without them the test is
skipped. ``WERKFLUSS_WRITE_SCREENSHOT=1`` also writes the run page's
screenshot to docs/img/dashboard-run.png.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..dashboard_app import SEEDED, dashboard_role, seed
from ..helpers import ROOT, sql, sql_value

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-test-token-0123456789"
SCREENSHOT = ROOT / "docs" / "img" / "dashboard-run.png"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
           "install them with: apt-get install chromium chromium-driver",
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT = 10.0  # seconds any state may take to show


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver or browser
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1360,1000", "--lang=en-US", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard_url(dsn: str, tmp_path: Path) -> Iterator[str]:
    """`werkfluss dashboard` on the seeded runs, as the documented dashboard role, with a token."""
    asyncio.run(seed(dsn))
    with dashboard_role(dsn, actions=True) as role_dsn:
        log = (tmp_path / "dashboard.log").open("w")
        env = dict(os.environ, PYTHONPATH=str(ROOT), WERKFLUSS_DASHBOARD_TOKEN=TOKEN)
        process = subprocess.Popen(
            [sys.executable, "-m", "werkfluss", "dashboard", "--port", "0", "--dsn", role_dsn],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
        )
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            address = re.search(r"(http://127\.0\.0\.1:\d+/) \(actions allowed", first)
            log_text = (tmp_path / "dashboard.log").read_text()
            assert address, f"unexpected first line {first!r}; log:\n{log_text}"
            yield address[1]
        finally:
            process.terminate()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
            log.close()


def wait_for(driver: WebDriver, condition: object, message: str) -> object:
    return WebDriverWait(driver, WAIT, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)


def click(driver: WebDriver, by: str, value: str) -> None:
    """Click an element, again if the page's polling replaced it in between."""
    def clicked(d: WebDriver) -> bool:
        d.find_element(by, value).click()
        return True
    wait_for(driver, clicked, f"a click on {value}")


def text_of(driver: WebDriver, by: str, value: str) -> str:
    return str(wait_for(driver, lambda d: d.find_element(by, value).text or None, f"the text of {value}"))


def listed(driver: WebDriver) -> set[str]:
    return {row.get_attribute("data-run-id") or "" for row in driver.find_elements(By.CSS_SELECTOR,
                                                                                 "#run-rows tr[data-run-id]")}


def shows(driver: WebDriver, run_ids: set[str]) -> object:
    def check(d: WebDriver) -> bool:
        return listed(d) == run_ids
    return check


def flash(driver: WebDriver) -> str:
    box = driver.find_element(By.ID, "flash")
    return box.text if box.is_displayed() else ""


def status_of(dsn: str, run_id: str) -> str:
    return str(sql_value(dsn, "SELECT status FROM werkfluss.runs WHERE id = %s", [run_id]))


def text_in(element_id: str, text: str) -> object:
    return expected_conditions.text_to_be_present_in_element((By.ID, element_id), text)


def confirm(driver: WebDriver) -> None:
    wait_for(driver, expected_conditions.alert_is_present(), "a confirmation dialog")
    driver.switch_to.alert.accept()


def test_the_dashboard_in_a_browser(browser: WebDriver, dashboard_url: str, dsn: str, tmp_path: Path) -> None:
    # --- the run list: every run, counts by state, live -------------------------------------
    browser.get(dashboard_url)
    wait_for(browser, shows(browser, set(SEEDED)), "the seeded runs listed")
    waiting = text_of(browser, By.CSS_SELECTOR, '.count[data-status="waiting"] .n')
    assert int(waiting) == sum(1 for state in SEEDED.values() if state == "waiting")
    sql(dsn, "SELECT werkfluss.start_run('tests.dash.unserved', '[]', 'live:1')")
    wait_for(browser, shows(browser, {*SEEDED, "live:1"}), "a new run appearing without a reload")
    wait_for(browser, text_in("live-state", "live · updated"), "the list polled")

    # --- filters --------------------------------------------------------------------------
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")  # applies at once
    wait_for(browser, shows(browser, {"checkout:cy", "fail:1", "fail:2", "fail:3"}), "the failed runs")
    assert "status=failed" in browser.current_url
    prefix = browser.find_element(By.ID, "filter-prefix")
    prefix.send_keys("fail:")
    browser.find_element(By.ID, "filter-apply").click()
    wait_for(browser, shows(browser, {"fail:1", "fail:2", "fail:3"}), "the failed runs starting with fail:")
    click(browser, By.CSS_SELECTOR, '.count[data-status=""]')  # all states, same prefix
    wait_for(browser, shows(browser, {"fail:1", "fail:2", "fail:3"}), "fail:N in any state")
    browser.find_element(By.LINK_TEXT, "clear").click()
    wait_for(browser, shows(browser, {*SEEDED, "live:1"}), "every run again")

    # --- a run and its timeline -----------------------------------------------------------
    click(browser, By.LINK_TEXT, "onboard:ada")
    wait_for(browser, expected_conditions.presence_of_element_located((By.ID, "timeline")), "the timeline")
    assert browser.find_element(By.ID, "run-status").text == "completed"
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row[data-kind]")
    assert [r.get_attribute("data-kind") for r in rows] == ["run", "step", "step", "sleep", "wait", "child"]
    for row in rows:
        bar = row.find_element(By.CSS_SELECTOR, "rect.bar")
        assert bar.rect["width"] > 0, row.text  # drawn, not just present
    track = rows[0].find_element(By.CSS_SELECTOR, "svg.tl-track").rect
    assert rows[0].find_element(By.CSS_SELECTOR, "rect.bar").rect["width"] > 0.95 * track["width"]
    sleep_bar = rows[3].find_element(By.CSS_SELECTOR, "rect.bar").rect
    step_bar = rows[1].find_element(By.CSS_SELECTOR, "rect.bar").rect
    assert sleep_bar["x"] > step_bar["x"]  # later in time, further right
    assert sleep_bar["width"] > step_bar["width"]  # 200 ms against 20 ms
    assert rows[2].get_attribute("data-attempts") == "3"
    assert "↻2" in rows[2].text
    browser.save_screenshot(str(tmp_path / "dashboard-run.png"))
    if os.environ.get("WERKFLUSS_WRITE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
    rows[5].find_element(By.LINK_TEXT, "child welcome").click()  # the child run, from its bar
    wait_for(browser, text_in("run-id", "onboard:ada::6"), "the child run's page")

    # --- a failed run's traceback -----------------------------------------------------------
    browser.get(dashboard_url + "runs/checkout:cy")
    assert "card declined for cy" in browser.find_element(By.CSS_SELECTOR, ".io .error-box .err").text
    traceback = browser.find_element(By.CSS_SELECTOR, ".io details.traceback pre")
    assert traceback.is_displayed()  # open on the run's own error
    assert "Traceback (most recent call last)" in traceback.text

    # --- cancel: refused without the token, done with it -----------------------------------
    browser.get(dashboard_url + "runs/hold:1")
    browser.find_element(By.ID, "cancel-button").click()
    confirm(browser)
    wait_for(browser, lambda d: "HTTP 403" in flash(d), "the refusal")
    assert "access token is missing or wrong" in flash(browser)
    assert status_of(dsn, "hold:1") == "waiting"
    assert browser.find_element(By.ID, "run-status").text == "waiting"

    browser.find_element(By.ID, "access-token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(browser, text_in("token-state", "set for this tab"), "the token taken")
    browser.find_element(By.ID, "cancel-button").click()
    confirm(browser)
    wait_for(browser, text_in("run-status", "cancelled"), "the run cancelled, on its page")
    assert flash(browser) == "Cancelled."
    assert status_of(dsn, "hold:1") == "cancelled"
    recorded = sql(dsn, "SELECT action, detail->>'outcome', client FROM werkfluss.audit"
                        " WHERE run_id = 'hold:1'")
    assert recorded == [("cancel", "cancelled", "127.0.0.1")]
    assert "cancelled" in browser.find_element(By.CSS_SELECTOR, "table.audit").text

    # --- send a payload to the hook a run waits on (the token is kept for the tab) -----------
    browser.get(dashboard_url + "runs/hold:2")
    browser.find_element(By.CSS_SELECTOR, "#waits input.payload").send_keys('{"approved": true}')
    browser.find_element(By.CSS_SELECTOR, "#waits form.send button").click()
    wait_for(browser, lambda d: flash(d) == "Payload delivered.", "the payload delivered")
    assert sql_value(dsn, "SELECT payload::text FROM werkfluss.hook_payloads WHERE token = 'hold:2'") == (
        '{"approved": true}')

    # --- an id that needs escaping, and the workers -----------------------------------------
    sql(dsn, "SELECT werkfluss.start_run('tests.dash.unserved', '[]', 'odd/100% sure?')")
    browser.get(dashboard_url + "runs?prefix=odd%2F")
    wait_for(browser, shows(browser, {"odd/100% sure?"}), "the odd id listed")
    click(browser, By.LINK_TEXT, "odd/100% sure?")
    wait_for(browser, text_in("run-id", "odd/100% sure?"), "the odd id's page")
    browser.get(dashboard_url + "workers")
    assert browser.find_elements(By.CSS_SELECTOR, '#worker-rows tr[data-state="stopped"]')

    # --- a schedule: pause it, then delete it (after confirming) -----------------------------
    sql(dsn, "SELECT werkfluss.create_schedule('browser-report', 'tests.dash.report', '0 5 * * *')")
    browser.get(dashboard_url + "schedules")
    row = '#schedule-rows tr[data-schedule="browser-report"]'
    click(browser, By.CSS_SELECTOR, f"{row} .pause-button")
    wait_for(browser, lambda d: flash(d) == "Paused: the schedule starts no run until it is resumed.",
             "the schedule paused")
    wait_for(browser, expected_conditions.presence_of_element_located(
        (By.CSS_SELECTOR, f'{row}[data-state="paused"] .resume-button')), "the row showing it paused")
    assert sql_value(dsn, "SELECT paused FROM werkfluss.schedules WHERE name = 'browser-report'") is True
    click(browser, By.CSS_SELECTOR, f"{row} .delete-button")
    confirm(browser)
    wait_for(browser, lambda d: flash(d) == "Schedule deleted; the runs it started are kept.", "the deletion")
    assert not browser.find_elements(By.CSS_SELECTOR, row)
    assert sql(dsn, "SELECT action, detail->>'outcome', client FROM werkfluss.audit"
                    " WHERE detail->>'schedule' = 'browser-report' ORDER BY id") == [
        ("pause", "paused", "127.0.0.1"), ("delete", "deleted", "127.0.0.1")]
