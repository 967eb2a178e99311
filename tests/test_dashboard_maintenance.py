"""The dashboard's run history, run details, times and instance figures in a real browser (Debian's chromium)."""

import datetime
import json
import os
import re

import pytest

from server.core import events
from tests.apiclient import wait_for
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, TIMEOUT_MS, server, sign_in  # noqa: F401

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (Debian: apt-get install chromium)")

MIB = 1024 * 1024
FIRST = datetime.datetime(2026, 10, 28, 2, 0, tzinfo=datetime.timezone.utc)  # after the change to CET
RUNS = 34
OLD_SHAPE = 6  # the oldest runs were recorded before the run record grew its new keys
FAILED = {2, 10, 20}
INTERRUPTED = {15}  # found dead by a later run: failed, described "interrupted: …"
ABORTED = {25}
LONG_ERROR = "relation " + "logs_partition_2026_10_28_" * 8 + "is locked; its statement was cancelled"
LONG_INSTANCE = "render-farm-node-0042-with-a-very-long-instance-identifier-x1"


def task(name: str, number: int, rows: int, status: str = "finished", error=None, reason=None, new_keys=True,
         before=None, after=None) -> dict:
    doc = {"name": name, "status": status, "duration_s": 0.5 + number / 10, "rows": rows, "error": error,
           "reason": reason}
    if new_keys:
        doc.update(time_limit_s=3600, timed_out=bool(error and error.startswith("time limit")), tables=[name.rsplit("_", 1)[-1]],
                   bytes_before=None if status == "skipped" else before,
                   bytes_after=None if status == "skipped" else after)
    return doc


def run_record(number: int) -> tuple[str, str, dict, dict]:
    """(status, description, summary, payload) of run `number`, the oldest being 0."""
    new_keys = number >= OLD_SHAPE
    logs = task("remove_old_logs", number, 1000 + number, new_keys=new_keys,
                before=int(12.3 * MIB), after=int(8.1 * MIB))
    events_task = task("remove_old_events", number, 200 + number, new_keys=new_keys, before=4096000, after=1024000)
    vacuum = task("vacuum", number, 0, new_keys=new_keys, before=100 * MIB, after=90 * MIB)
    status, description = "finished", "3 tasks finished"
    if number in FAILED:
        error = LONG_ERROR if number == 20 else "time limit of 60 min reached; its statement was cancelled"
        events_task.update(status="failed", error=error, rows=0)
        vacuum.update(status="skipped", reason="window closed", rows=0, bytes_before=None, bytes_after=None)
        status, description = "failed", "1 of 3 tasks failed"
    elif number in INTERRUPTED:
        status, description = "failed", "interrupted: the maintenance process ended during the run"
        vacuum.update(status="skipped", reason="interrupted by shutdown", rows=0)
    elif number in ABORTED:
        vacuum.update(status="skipped", reason="interrupted by shutdown", rows=0, bytes_before=None, bytes_after=None)
        status, description = "aborted", "interrupted by shutdown"
    summary = {"tasks": [logs, events_task, vacuum], "duration_s": 10.0 + number}
    payload = {"tasks": [t["name"] for t in summary["tasks"]]}
    if new_keys:
        summary.update(db_bytes_before=1200 * MIB, db_bytes_after=1100 * MIB, window_minutes=60)
        payload.update(trigger="schedule", slot=(FIRST + datetime.timedelta(days=number)).strftime("%Y-%m-%dT%H:%MZ"))
    return status, description, summary, payload


def seed(database) -> list[str]:
    """RUNS maintenance runs, a day apart at 02:00 UTC, oldest first; their ids."""
    ids = []
    for number in range(RUNS):
        status, description, summary, payload = run_record(number)
        started = FIRST + datetime.timedelta(days=number)
        ids.append(database.fetchone(
            "INSERT INTO events (topic, status, description, summary, payload, sender, created_at, updated_at) "
            "VALUES ('server.maintenance', %s, %s, %s, %s, 'test', %s, %s) RETURNING id::text",
            (status, description, json.dumps(summary), json.dumps(payload), started,
             started + datetime.timedelta(seconds=summary["duration_s"])))[0])
    # A dry run is no run: never drawn.
    events.dispatch(database, "server.maintenance.preview", status="finished", description="preview",
                    summary={"dry_run": True, "rows_total": 5, "bytes_estimate_total": 1, "duration_s": 0.1,
                             "tasks": []})
    database.execute(
        "INSERT INTO instances (instance_id, program, pid, info) VALUES "
        "(%s, 'logcollector', 4241, %s), ('render-01', 'installer', 4242, %s), "
        "('render-01', 'maintenance', 4243, %s), ('render-01', 'custom', 4244, %s)",
        (LONG_INSTANCE,
         json.dumps({"lag_seconds": 0.1, "spool_bytes": 12288, "dropped_total": 0, "ingested_total": 1234}),
         json.dumps({"queue_depth": 3}),
         json.dumps({"next_run": "2026-12-01T02:00Z", "running": None}),
         json.dumps({"custom_gauge": 7, "mode": "fast"})))
    return ids


def fact(page, name: str):
    """The value of one fact of the selected run (Trigger, Duration, Database…)."""
    return page.locator(f'#detail-facts [data-fact="{name}"] dd')


@pytest.fixture
def prague_page():
    """A 1280×800 Chromium page in Europe/Prague (UTC+01:00 in November), en-US."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="Europe/Prague",
                                          locale="en-US")
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_run_history_details_times_and_figures(server, prague_page, database, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page = prague_page
    problems = []  # script errors and Content-Security-Policy violations
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    ids = seed(database)
    page.goto(server + "/")
    sign_in(page, "test-token")
    expect(page.locator("#dashboard")).to_be_visible()

    # The chart: exactly the last 30 runs, oldest on the left, each marked with its status.
    marks = page.locator("#history-chart .run")
    expect(marks).to_have_count(30)
    shown = marks.evaluate_all("marks => marks.map(m => m.dataset.eventId)")
    assert shown == ids[RUNS - 30:]
    statuses = marks.evaluate_all("marks => marks.map(m => [m.dataset.status, m.dataset.outcome])")
    expected = []
    for number in range(RUNS - 30, RUNS):
        status, description, _, _ = run_record(number)
        kind = "interrupted" if number in INTERRUPTED | ABORTED else status
        expected.append([status, kind])
    assert statuses == expected
    assert [s for s, _ in statuses].count("failed") == 3 and [s for s, _ in statuses].count("aborted") == 1
    # Failed and interrupted runs carry a marker shape, not only a colour; finished ones none.
    markers = marks.evaluate_all("marks => marks.map(m => m.querySelectorAll('.marker').length)")
    assert markers == [0 if kind == "finished" else 1 for _, kind in expected]
    assert page.locator("#history-chart .run[data-outcome=failed] path.marker").count() == 2
    assert page.locator("#history-chart .run[data-outcome=interrupted] path.marker").count() == 2
    # Each mark has a tooltip: time with its zone, status, duration, rows.
    newest = page.locator(f'#history-chart .run[data-event-id="{ids[-1]}"]')
    assert newest.locator("title").text_content() == "2026-11-30 03:00:00 UTC+01:00 · finished · 43 s · 1,266 rows"
    failed = page.locator(f'#history-chart .run[data-event-id="{ids[20]}"]')
    assert failed.locator("title").text_content() == "2026-11-17 03:00:00 UTC+01:00 · failed · 30 s · 1,020 rows"
    assert "interrupted" in page.locator(f'#history-chart .run[data-event-id="{ids[25]}"] title').text_content()
    expect(page.locator("#history-note")).to_contain_text("dates in UTC+01:00")

    # By default the newest run's tasks are shown.
    expect(page.locator("#detail-when")).to_have_text("2026-11-30 03:00:00 UTC+01:00")
    tasks = page.locator("#run-tasks tbody tr")
    expect(tasks).to_have_count(3)
    expect(tasks.nth(0)).to_have_text("remove_old_logsfinished1,03312.3 MiB → 8.1 MiB3.8 s")
    expect(fact(page, "Database")).to_have_text("1.2 GiB → 1.1 GiB")
    expect(fact(page, "Trigger")).to_have_text("schedule")

    # A failed run: its failed task with the error, the skipped one with its reason.
    failed.click()
    expect(page.locator("#detail-when")).to_have_text("2026-11-17 03:00:00 UTC+01:00")
    expect(page.locator("#detail-status")).to_have_text("failed")
    expect(tasks.filter(has_text="remove_old_events")).to_contain_text("failed" + LONG_ERROR)
    expect(tasks.filter(has_text="vacuum")).to_contain_text("skippedwindow closed")
    assert failed.get_attribute("aria-pressed") == "true"
    # The keyboard moves the selection too.
    failed.focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#detail-when")).to_have_text("2026-11-18 03:00:00 UTC+01:00")
    interrupted = page.locator(f'#history-chart .run[data-event-id="{ids[15]}"]')
    interrupted.click()
    expect(page.locator("#detail-status")).to_have_text("interrupted")
    expect(page.locator("#detail-description")).to_have_text("interrupted: the maintenance process ended during the run")

    # A run recorded before the new keys: what it lacks is a dash.
    page.locator(f'#history-chart .run[data-event-id="{ids[4]}"]').click()
    expect(page.locator("#detail-when")).to_have_text("2026-11-01 03:00:00 UTC+01:00")
    expect(fact(page, "Trigger")).to_have_text("—")
    expect(fact(page, "Database")).to_have_text("—")
    expect(fact(page, "Window")).to_have_text("—")
    expect(tasks.nth(0)).to_have_text("remove_old_logsfinished1,004—0.9 s")

    # Every time on the page carries its zone.
    expect(page.locator("#run-when")).to_have_text("started 2026-11-30 03:00:00 UTC+01:00")
    expect(page.locator("#run-next")).to_contain_text("UTC+01:00 (daily at 03:00 UTC)")
    expect(page.locator("#events tbody tr").first).to_contain_text("UTC+01:00")
    for text in page.locator("#events tbody time, #logs tbody time, #instances tbody time").all_text_contents():
        assert text.endswith(" UTC+01:00"), text

    # Instance figures as words, never JSON; the server's own heartbeat among them.
    instances = page.locator("#instances tbody")
    expect(instances.locator("tr", has_text="logcollector").locator("td.figures")).to_have_text(
        "lag 0.1 s · spool 12 KiB · dropped 0 · ingested 1,234")
    expect(instances.locator("tr", has_text="installer").locator("td.figures")).to_have_text("queue 3")
    expect(instances.locator("tr", has_text="maintenance").locator("td.figures")).to_have_text(
        "next run 2026-12-01 03:00:00 UTC+01:00 · idle")
    expect(instances.locator("tr", has_text="custom").locator("td.figures")).to_have_text("custom_gauge 7 · mode fast")

    def server_figures():
        page.click("#instances button.refresh")
        row = instances.locator('tr[data-program="server"]')
        return row.count() and re.fullmatch(r"workers 1 of 1 · requests [1-9][\d,]*",
                                            row.locator("td.figures").text_content())

    # The server beats every 5 s: the first beat may predate the first request.
    wait_for(server_figures, 20, "the server program's figures on the dashboard", every=0.5)
    for text in instances.locator("td.figures").all_text_contents():
        assert "{" not in text and '"' not in text, text

    # Nothing widens the page at 1,280 px: long ids and errors wrap.
    page.locator(f'#history-chart .run[data-event-id="{ids[20]}"]').click()
    expect(tasks.filter(has_text="remove_old_events")).to_contain_text(LONG_ERROR)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280

    # A new run shows up live; the oldest drawn one makes room.
    run_id = events.dispatch(database, "server.maintenance", status="in_progress", description="starting: 3 tasks",
                             payload={"trigger": "request"}, sender="test")
    expect(page.locator(f'#history-chart .run[data-event-id="{run_id}"]')).to_have_attribute(
        "data-outcome", "running")
    expect(marks).to_have_count(30)
    assert page.locator(f'#history-chart .run[data-event-id="{ids[RUNS - 30]}"]').count() == 0

    assert problems == []

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / "history-34-runs-1280.png"
    page.mouse.move(0, 0)  # no hover band in the picture
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000
    print(f"dashboard screenshot: {screenshot}")
