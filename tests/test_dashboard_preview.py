"""The Configuration panel counts what a run would remove under the form's values before they are saved,
in a real browser (Debian's chromium) against a real gunicorn and PostgreSQL."""

import os
import re

import pytest

from server.core import config
from tests.test_dashboard_browser import CHROMIUM, TIMEOUT_MS, page, server, sign_in  # noqa: F401

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (Debian: apt-get install chromium)")

# 60 finished events, one per day of age from half a day to 59.5 days: 30 are past a 30-day retention.
AGED = ("INSERT INTO events (topic, status, updated_at) SELECT 'test.aged', 'finished', "
        "now() - make_interval(days => d) + interval '12 hours' FROM generate_series(1, 60) d")
LINE = "#cfg-preview-line"
ERROR = "#cfg-preview-error"
RETENTION = '#cfg-tasks .task[data-task=remove_old_events] input[data-option=retention_days]'


def aged(database) -> int:
    return database.fetchone("SELECT count(*) FROM events WHERE topic = 'test.aged'")[0]


def test_retention_is_previewed_before_it_is_saved(server, page, database):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    problems = []  # script errors and Content-Security-Policy violations
    page.on("pageerror", lambda error: problems.append(str(error)))
    # A refused preview is an answer the page handles; Chromium still logs its status as a console error.
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and "status of 400" not in message.text else None)
    database.execute(AGED)
    page.goto(server + "/")
    sign_in(page, "test-token")

    # Each task's options beside its switch, with the values in effect; under them nothing is old enough.
    expect(page.locator(RETENTION)).to_have_value("90")
    expect(page.locator('#cfg-tasks .task[data-task=remove_old_logs] input[data-option=retention_days]')
           ).to_have_value("7")
    expect(page.locator('#cfg-tasks .task[data-task=remove_old_events] input[data-option=enabled]')).to_be_checked()
    expect(page.locator(LINE)).to_have_text(re.compile(r"^With these settings a run would remove 0 rows \(about 0 B\)$"))

    # A candidate retention is counted as it is typed, the saved configuration's count beside it.
    page.fill(RETENTION, "30")
    expect(page.locator(LINE)).to_have_text(
        re.compile(r"^With these settings a run would remove 30 rows \(about [\d.,]+ (B|KiB|MiB)\); now: 0 rows$"))
    expect(page.locator(ERROR)).to_have_text("")

    # A value the server refuses is named beside the line; the page goes on.
    page.fill(RETENTION, "0")
    expect(page.locator(ERROR)).to_contain_text("remove_old_events.retention_days")
    expect(page.locator(LINE)).to_have_attribute("data-state", "stale")
    # Switching the task off counts nothing for it (the bad value is refused still: back to 30 first).
    page.fill(RETENTION, "30")
    expect(page.locator(ERROR)).to_have_text("")
    page.uncheck('#cfg-tasks .task[data-task=remove_old_events] input[data-option=enabled]')
    expect(page.locator(LINE)).to_have_text(re.compile(r"would remove 0 rows .*; now: 0 rows$"))
    page.check('#cfg-tasks .task[data-task=remove_old_events] input[data-option=enabled]')
    expect(page.locator(LINE)).to_have_text(re.compile(r"would remove 30 rows .*; now: 0 rows$"))

    # Counting removed nothing.
    assert aged(database) == 60

    # Save stores the retention; the saved configuration is now the form's, so no "now" any more.
    page.click("#config-form button[type=submit]")
    expect(page.locator("#config-result")).to_have_text("Saved.")
    with database.transaction() as cur:
        doc = config.get(cur)
    assert doc["maintenance"]["tasks"]["remove_old_events"]["retention_days"] == 30
    assert doc["maintenance"]["tasks"]["remove_old_events"]["enabled"] is True
    assert doc["maintenance"]["tasks"]["remove_old_logs"]["retention_days"] == 7
    expect(page.locator(LINE)).to_have_text(re.compile(r"^With these settings a run would remove 30 rows \([^)]*\)$"))
    expect(page.locator(RETENTION)).to_have_value("30")
    assert aged(database) == 60

    assert problems == []
