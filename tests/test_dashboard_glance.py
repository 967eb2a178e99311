"""The dashboard at a glance, at 1,280 and 1,920 px in a real browser (Debian's chromium): it fills the window,
no cell wraps mid-word, logs page and filter, the run chart scales to the runs there are, a running run shows
its elapsed time and rows, and the schedule's time is 24-hour with a zone picker of valid names.

Each test keeps screenshots of what it checked in artifacts/screenshots/ at the repository's root."""

import datetime
import json
import os
import re

import pytest

from server.core import config, values
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, TIMEOUT_MS, server, sign_in  # noqa: F401

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (Debian: apt-get install chromium)")

WIDTHS = (1280, 1920)
MIB = 1024 * 1024
LONG_INSTANCE = "render-farm-node-0042-with-a-very-long-instance-identifier-x1"
PROGRAMS = ("server", "maintenance", "logcollector", "installer")
RECORDS = 260

# Every word of a table cell on one line: a word split over two lines gives its range two boxes. A token
# longer than any column could hold (a path, a hash) may still break; none of those is a word of 40 or less.
SPLIT_WORDS = """(root) => {
  const split = [];
  for (const td of root.querySelectorAll("td")) {
    const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.data.matchAll(/\\S+/g)) {
        if (match[0].length > 40) continue;
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (lines.size > 1) split.push(match[0]);
      }
    }
  }
  return split;
}"""


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, width: int):
    """A page of `width` px in UTC, en-US (whose own time format is 12-hour), watching for script errors."""
    context = browser.new_context(viewport={"width": width, "height": 900}, timezone_id="UTC", locale="en-US")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
    return page


def signed_in(browser, server, width: int):
    from playwright.sync_api import expect

    page = open_page(browser, width)
    page.goto(server + "/")
    sign_in(page, "test-token")
    expect(page.locator("#dashboard")).to_be_visible()
    return page


def keep_screenshot(page, name: str, locator=None, full_page=True) -> None:
    """A picture of what was checked, kept after the run: the whole page, one part, or the window."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}-{page.viewport_size['width']}.png"
    page.mouse.move(0, 0)  # no hover band in the picture
    if locator is None:
        page.screenshot(path=str(path), full_page=full_page)
    else:
        locator.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")


def assert_at_a_glance(page) -> None:
    """The page fills the window without widening it, and no table cell splits a word."""
    width = page.viewport_size["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    box = page.locator("#dashboard").bounding_box()
    assert box["width"] >= width - 5, f"the dashboard is {box['width']} px wide in a {width} px window"
    for table in page.locator("#dashboard table:visible").all():
        assert table.bounding_box()["width"] >= width - 60
    assert page.locator("#dashboard").evaluate(SPLIT_WORDS) == []


def seed_logs(database) -> None:
    """RECORDS records a second apart, the newest a minute ago, over four programs, two instances and three levels."""
    rows = []
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    for number in range(RECORDS):
        program = PROGRAMS[number % len(PROGRAMS)]
        instance = LONG_INSTANCE if number % 5 == 0 else "render-01"
        level, message = "INFO", f"record {number}: request handled in 12 ms"
        if number % 7 == 0:
            level, message = "WARNING", f"record {number}: the spool is 80% full"
        if program == "maintenance" and number % 3 == 0:
            level, message = "ERROR", f"record {number}: maintenance failed: 1 of 3 tasks failed: remove_old_events"
        rows.append((start - datetime.timedelta(seconds=number), level, instance, program, message))
    with database.transaction() as cur:
        cur.execute("SELECT ayon_ensure_log_partition(current_date)")
        cur.executemany("INSERT INTO logs (ts, level, instance, program, message) VALUES (%s, %s, %s, %s, %s)", rows)
        cur.execute("INSERT INTO instances (instance_id, program, pid) VALUES (%s, 'logcollector', 4241), "
                    "('render-01', 'maintenance', 4243)", (LONG_INSTANCE,))


def test_logs_page_and_filter_at_both_widths(server, browser, database):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    seed_logs(database)
    for width in WIDTHS:
        page = signed_in(browser, server, width)
        rows = page.locator("#logs tbody tr")
        more = page.locator("#logs-more")
        # The newest page, then older ones on request, to the last.
        expect(rows).to_have_count(100)
        expect(page.locator("#logs-count")).to_have_text("100 records, newest first; older ones on request")
        assert rows.first.locator("td").nth(3).text_content() == "record 0: the spool is 80% full"
        more.click()
        expect(rows).to_have_count(200)
        more.click()
        expect(rows).to_have_count(RECORDS)
        expect(more).to_be_hidden()
        expect(page.locator("#logs-count")).to_have_text(f"{RECORDS} records, newest first; no older one")
        # Source and level stay on one line; the page neither narrows nor widens.
        expect(rows.nth(1).locator("td.source")).to_have_text("render-01/maintenance")
        # An extreme instance id is cut short, never the program; the whole of it on hover.
        long_source = rows.first.locator("td.source")
        expect(long_source).to_have_attribute("title", f"instance {LONG_INSTANCE}, program server")
        cell_box, program_box = long_source.bounding_box(), long_source.locator(".program").bounding_box()
        assert program_box["x"] + program_box["width"] <= cell_box["x"] + cell_box["width"]
        assert len({round(box["y"]) for box in (cell_box, program_box)}) <= 2 and program_box["height"] < 24
        assert_at_a_glance(page)
        page.locator("#logs h2").evaluate("heading => heading.scrollIntoView()")
        keep_screenshot(page, "logs", full_page=False)  # the filters and the newest records

        # Program and level: the failed runs, at ERROR.
        form = page.locator("#logs-filter")
        form.locator("input[name=program]").fill("maintenance")
        form.locator("select[name=level]").select_option("error")
        form.locator("button[type=submit]").click()
        expected = sum(1 for n in range(RECORDS) if n % 4 == 1 and n % 3 == 0)
        expect(rows).to_have_count(expected)
        for text in rows.locator("td.text").all_text_contents():
            assert "maintenance failed" in text, text
        assert set(rows.locator("td.level").all_text_contents()) == {"ERROR"}
        # Instance and text (case-insensitive; a % is a character, not a wildcard).
        form.locator("input[name=program]").fill("")
        form.locator("select[name=level]").select_option("")
        form.locator("input[name=instance]").fill(LONG_INSTANCE)
        form.locator("input[name=text]").fill("SPOOL IS 80%")
        form.locator("button[type=submit]").click()
        expected = [n for n in range(RECORDS) if n % 5 == 0 and n % 7 == 0
                    and not (PROGRAMS[n % 4] == "maintenance" and n % 3 == 0)]
        expect(rows).to_have_count(len(expected))
        expect(rows.first.locator("td.text")).to_have_text(f"record {expected[0]}: the spool is 80% full")
        form.locator("input[name=text]").fill("80%_")
        form.locator("button[type=submit]").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_text("No log record matches.")
        # The filters suggest the programs and instances that sent a heartbeat.
        suggested = page.locator("#log-instances option").evaluate_all("os => os.map(o => o.value)")
        assert {LONG_INSTANCE, "render-01"} <= set(suggested), suggested
        assert page.problems == []
        page.context.close()


def finished_run(database, started, rows: int) -> None:
    tasks = [
        {"name": "remove_old_logs", "status": "finished", "duration_s": 1.5, "rows": rows, "error": None,
         "reason": None, "tables": ["logs"], "bytes_before": 312 * MIB, "bytes_after": 312 * MIB},
        {"name": "vacuum", "status": "finished", "duration_s": 40.2, "rows": 0, "error": None, "reason": None,
         "tables": [], "bytes_before": 900 * MIB, "bytes_after": 900 * MIB},
    ]
    summary = {"tasks": tasks, "duration_s": 42.0, "db_bytes_before": 900 * MIB, "db_bytes_after": 900 * MIB,
               "window_minutes": 0}
    database.execute(
        "INSERT INTO events (topic, status, description, summary, payload, sender, created_at, updated_at) "
        "VALUES ('server.maintenance', 'finished', '2 tasks finished in 42.0 s', %s, %s, 'test', %s, %s)",
        (json.dumps(summary), json.dumps({"trigger": "schedule"}), started,
         started + datetime.timedelta(seconds=42)))


def test_runs_chart_running_run_and_schedule_at_both_widths(server, browser, database):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    # A new install: three runs on one day, none removed a row.
    day = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    day -= datetime.timedelta(days=1)
    starts = [day + datetime.timedelta(hours=h, minutes=m) for h, m in ((2, 0), (9, 30), (17, 45))]
    for started in starts:
        finished_run(database, started, 0)
    for width in WIDTHS:
        page = signed_in(browser, server, width)
        marks = page.locator("#history-chart .run")
        expect(marks).to_have_count(3)
        # The chart scales to the runs there are: they spread over its width, not slivers in a corner.
        chart, bars = page.evaluate("""() => {
          const box = (node) => { const r = node.getBoundingClientRect(); return { x: r.x, width: r.width }; };
          return [box(document.querySelector("#history-chart svg")),
                  [...document.querySelectorAll("#history-chart .run")].map((run) => box(run.querySelector(".bar")))];
        }""")
        assert bars[0]["x"] - chart["x"] < chart["width"] / 4
        assert bars[-1]["x"] - chart["x"] > chart["width"] * 3 / 4
        assert min(bar["width"] for bar in bars) >= 20
        # Labels carry date and time, so the runs of one day are told apart.
        labels = marks.locator(".date").evaluate_all("ts => ts.map(t => t.textContent)")
        assert labels == [f"{s:%m-%d}{s:%H:%M}" for s in starts]
        # No row removed: the panel says so, without a 0–1 scale.
        expect(page.locator('#history-chart .empty[data-panel="Rows removed"]')).to_have_text("nothing removed")
        ticks = page.locator("#history-chart .tick").all_text_contents()
        assert ticks and "1" not in ticks, ticks
        # The sizes say why a plain VACUUM keeps them.
        vacuum = page.locator("#run-tasks tbody tr[data-task=vacuum]")
        expect(vacuum.locator("td.num").nth(1)).to_have_text(
            "900 MiB → 900 MiBplain VACUUM: space reusable, files keep their size")
        expect(page.locator("#size-note")).to_be_visible()
        expect(page.locator("#size-note")).to_contain_text("only VACUUM FULL, which locks the table")
        # The schedule's time in 24-hour form with its zone; the zone picked from the valid names only.
        time_field = page.locator("#cfg-time")
        expect(time_field).to_have_value("03:00")
        assert time_field.get_attribute("type") == "text"
        expect(page.locator("#cfg-time-hint")).to_have_text("24-hour time in the chosen zone")
        names = page.locator("#cfg-timezone option").evaluate_all("os => os.map(o => o.value)")
        assert names == sorted(values.time_zones())
        expect(page.locator("#cfg-timezone")).to_have_value("UTC")
        assert_at_a_glance(page)
        keep_screenshot(page, "finished-run")

        time_field.fill("25:00")
        assert time_field.evaluate("field => field.validity.valid") is False
        page.click("#config-form button[type=submit]")
        expect(page.locator("#config-result")).to_have_text("")  # the browser refused to send it
        time_field.fill("17:30")
        page.select_option("#cfg-timezone", "Europe/Prague")
        page.click("#config-form button[type=submit]")
        expect(page.locator("#config-result")).to_have_text("Saved.")
        expect(page.locator("#run-next")).to_contain_text("(daily at 17:30 Europe/Prague)")
        assert re.search(r"Next scheduled run: \d{4}-\d\d-\d\d \d\d:\d\d:00 UTC ", page.locator("#run-next").text_content())
        with database.transaction() as cur:
            section = config.get(cur)["maintenance"]
        assert (section["time"], section["timezone"]) == ("17:30", "Europe/Prague")
        time_field.fill("03:00")  # as it was, for the next width
        page.select_option("#cfg-timezone", "UTC")
        page.click("#config-form button[type=submit]")
        expect(page.locator("#run-next")).to_contain_text("(daily at 03:00 UTC)")
        assert page.problems == []
        page.context.close()

    # A run that started 95 s ago and is on its second task, the first having removed 1,234 rows.
    ended = {"name": "remove_old_logs", "status": "finished", "duration_s": 20.0, "rows": 1234, "error": None,
             "reason": None, "tables": ["logs"], "bytes_before": 312 * MIB, "bytes_after": 312 * MIB}
    for width in WIDTHS:
        page = signed_in(browser, server, width)
        expect(page.locator("#history-chart .run")).to_have_count(3 if width == WIDTHS[0] else 4)
        if width == WIDTHS[0]:
            database.execute(
                "INSERT INTO events (topic, status, description, summary, payload, sender, created_at) "
                "VALUES ('server.maintenance', 'in_progress', %s, %s, %s, 'test', now() - interval '95 seconds')",
                ("task 2/3: remove_old_events — events older than 30 days", json.dumps({"tasks": [ended]}),
                 json.dumps({"trigger": "request"})))
        expect(page.locator("#history-chart .run[data-outcome=running]")).to_have_count(1)
        # One word for its state: running, on the card, in the details, on the chart.
        expect(page.locator("#run-status")).to_have_text("running")
        expect(page.locator("#detail-status")).to_have_text("running")
        assert "in_progress" not in page.locator("#maintenance").inner_text()
        # Elapsed time, ticking, and rows so far.
        elapsed = page.locator("#run-elapsed")
        expect(elapsed).to_have_text(re.compile(r"^running for [1-9] min \d\d? s$"))
        first = elapsed.text_content()
        expect(elapsed).not_to_have_text(first)
        expect(page.locator("#run-rows")).to_have_text("1,234 rows removed so far (1 of 3 tasks ended)")
        expect(page.locator('#detail-facts [data-fact="Rows removed"] dd')).to_have_text("1,234 so far")
        expect(page.locator('#detail-facts [data-fact="Duration"] dd')).to_have_text(re.compile(r"^[1-9] min \d\d? s so far$"))
        # The ended task, then the one on now; never "No task has ended yet" beside "task 2 of 3".
        tasks = page.locator("#run-tasks tbody tr")
        expect(tasks).to_have_count(2)
        expect(tasks.nth(0)).to_contain_text("remove_old_logsfinished1,234")
        expect(tasks.nth(1)).to_have_text("remove_old_eventsrunning, task 2 of 3———")
        expect(page.locator("#run-step")).to_have_text("Task 2 of 3: remove_old_events — events older than 30 days")
        assert "No task has ended yet" not in page.locator("#maintenance").inner_text()
        assert_at_a_glance(page)
        keep_screenshot(page, "running-run", page.locator("#maintenance"))
        assert page.problems == []
        page.context.close()
