"""The dashboard in a real browser (Debian's chromium) against a real gunicorn and PostgreSQL."""

import os
import re
import subprocess
import sys
import urllib.request

import pytest

from server.core import config, events
from tests.apiclient import wait_for
from tests.conftest import ROOT
from tests.pg import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000
# Where the dashboard tests keep their screenshots after the run (git-ignored).
SCREENSHOTS = ROOT / "artifacts" / "screenshots"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (Debian: apt-get install chromium)")


@pytest.fixture
def server(env, tmp_path):
    """gunicorn with the app on a free port, ready once /health/ready answers 200."""
    port = free_port()
    env = dict(env, AYON_HTTP_BIND=f"127.0.0.1:{port}", AYON_SERVER_WORKERS="1")
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    def ready() -> bool:
        assert proc.poll() is None, f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}"
        try:
            with urllib.request.urlopen(base + "/health/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, lambda: f"gunicorn to be ready:\n{log_path.read_text()}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "test-token" not in log_path.read_text(), "the admin token reached the server log"


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def sign_in(page, token: str) -> None:
    page.fill("#token", token)
    page.click("#login-form button")


def test_dashboard_follows_a_maintenance_run_live(server, page, database, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    database.execute("INSERT INTO instances (instance_id, program, pid, info) VALUES "
                     "('render-01', 'installer', 4242, '{\"queue_depth\": 3}')")
    page.goto(server + "/")

    # A wrong token: one clear line, and the dashboard stays hidden.
    sign_in(page, "not-the-token")
    expect(page.locator("#login-error")).to_contain_text("The token was refused: the admin token is not valid")
    expect(page.locator("#dashboard")).to_be_hidden()

    sign_in(page, "test-token")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#instances tbody")).to_contain_text("render-01")
    expect(page.locator("#instances tbody tr", has_text="render-01").locator("td.figures")).to_have_text("queue 3")

    # The token is kept: a reload goes straight to the dashboard.
    page.reload()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#login")).to_be_hidden()
    page.evaluate("window.notReloaded = true")

    tasks = ["remove_old_logs", "remove_old_events", "vacuum"]
    run_id = events.dispatch(database, "server.maintenance", status="in_progress",
                             description=f"starting: {len(tasks)} tasks", sender="test")
    # One word for the run's state: "running", not the API's in_progress.
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#run-elapsed")).to_have_text(re.compile(r"^running for \d+(\.\d)? s$"))
    ended = []
    for number, name in enumerate(tasks, 1):
        # As the runner does: each step's event carries the tasks ended so far.
        events.update(database, run_id, description=f"task {number}/{len(tasks)}: {name} — step",
                      summary={"tasks": ended})
        expect(page.locator("#run-step")).to_have_text(f"Task {number} of {len(tasks)}: {name} — step")
        expect(page.locator("#run-rows")).to_have_text(
            f"{2 * (number - 1)} rows removed so far ({number - 1} of {len(tasks)} tasks ended)")
        assert page.eval_on_selector("#run-bar", "bar => [bar.value, bar.max]") == [number - 1, len(tasks)]
        ended = ended + [{"name": name, "status": "finished", "duration_s": 0.1, "rows": 2, "error": None,
                          "reason": None}]
    summary = {"tasks": [{"name": n, "status": "finished", "duration_s": 0.1, "rows": 2, "error": None,
                          "reason": None} for n in tasks], "duration_s": 0.3}
    events.update(database, run_id, status="finished", description="3 tasks finished in 0.3 s", summary=summary)
    expect(page.locator("#run-status")).to_have_text("finished")
    expect(page.locator("#run-progress")).to_be_hidden()
    expect(page.locator("#run-summary")).to_have_text(
        "remove_old_logs finished (2 rows), remove_old_events finished (2 rows), vacuum finished (2 rows) in 0.3 s")
    assert page.eval_on_selector("#run-bar", "bar => bar.value") == 1
    # The ended run joins the history chart, selected, with its tasks.
    expect(page.locator(f'#history-chart .run[data-event-id="{run_id}"][data-status="finished"]')).to_have_count(1)
    expect(page.locator("#run-tasks tbody tr")).to_have_count(3)
    expect(page.locator("#events tbody")).to_contain_text("3 tasks finished in 0.3 s")
    assert page.evaluate("window.notReloaded") is True, "the page reloaded"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "live-run-1280.png"), full_page=True)
    assert (SCREENSHOTS / "live-run-1280.png").stat().st_size > 10_000


def test_configuration_is_edited_and_a_bad_value_named(server, page, database):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(server + "/")
    sign_in(page, "test-token")
    expect(page.locator("#cfg-time")).to_have_value("03:00")
    page.fill("#cfg-time", "04:30")
    page.select_option("#cfg-timezone", "Europe/Prague")
    page.uncheck("#cfg-tasks input[name=remove_old_events]")
    page.click("#config-form button[type=submit]")
    expect(page.locator("#config-result")).to_have_text("Saved.")
    with database.transaction() as cur:
        doc = config.get(cur)
    assert doc["maintenance"]["time"] == "04:30" and doc["maintenance"]["timezone"] == "Europe/Prague"
    assert doc["maintenance"]["tasks"]["remove_old_events"]["enabled"] is False
    assert doc["maintenance"]["tasks"]["remove_old_logs"]["enabled"] is True

    # A name the picker does not offer (a page older than the server's list): the server names it.
    page.eval_on_selector("#cfg-timezone", "select => select.add(new Option('Mars/Olympus', 'Mars/Olympus'))")
    page.select_option("#cfg-timezone", "Mars/Olympus")
    page.click("#config-form button[type=submit]")
    expect(page.locator("#config-result")).to_contain_text("Not saved: maintenance.timezone")
    with database.transaction() as cur:
        assert config.get(cur)["maintenance"]["timezone"] == "Europe/Prague"


# An addon's page tries everything a hostile addon would to reach the dashboard's token.
SPY_PAGE = """<!doctype html><html><body><p id="out">not run</p><script src="spy.js"></script></body></html>"""
SPY_SCRIPT = """
const found = [];
try { found.push("storage:" + JSON.stringify(Object.entries(window.localStorage))); }
catch (e) { found.push("storage blocked: " + e.name); }
try { found.push("session:" + window.sessionStorage.length); } catch (e) { found.push("session blocked"); }
try { found.push("cookie:" + document.cookie); } catch (e) { found.push("cookie blocked"); }
try { found.push("parent:" + window.parent.localStorage.length); } catch (e) { found.push("parent blocked"); }
found.push("origin:" + window.origin);
fetch("/api/config").then(r => r.status, e => "fetch blocked").then(s => {
  found.push("api:" + s);
  document.getElementById("out").textContent = found.join(" | ");
});
"""


def test_an_addon_page_cannot_read_the_dashboard_token(server, env, page, tmp_path):
    from playwright.sync_api import expect

    from tests.test_archive import make_zip

    expect.set_options(timeout=TIMEOUT_MS)
    archive = make_zip([("index.html", SPY_PAGE), ("spy.js", SPY_SCRIPT)], manifest="name: spy\nversion: '1.0.0'\n")
    request = urllib.request.Request(server + "/api/addons", data=archive, method="POST",
                                     headers={"Authorization": "Bearer test-token", "Content-Type": "application/zip"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201
    # The real installer puts it on this instance's disk, where the server serves it from.
    installer = subprocess.Popen([sys.executable, "-m", "procs.installer"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        target = os.path.join(env["AYON_DATA_DIR"], "addons", "spy", "1.0.0", "spy.js")

        def installed() -> bool:
            assert installer.poll() is None, f"the installer exited with {installer.returncode}"
            return os.path.exists(target)

        wait_for(installed, 60, "the installer to install the addon")
    finally:
        installer.terminate()
        installer.wait(30)

    page.goto(server + "/")
    sign_in(page, "test-token")
    expect(page.locator("#dashboard")).to_be_visible()
    assert page.evaluate("Object.values(localStorage).includes('test-token')"), "the dashboard keeps its token"

    page.goto(server + "/addons/spy/1.0.0/index.html")
    expect(page.locator("#out")).to_contain_text("api:")
    found = page.locator("#out").text_content()
    assert "test-token" not in found, found
    assert "storage blocked: SecurityError" in found and "origin:null" in found, found
    # From an opaque origin the API is cross-origin: the browser refuses it (no CORS answer), or it is a 401.
    assert "api:fetch blocked" in found or "api:401" in found, found
    # Back on the dashboard, the token is still there and still works under the page's own policy.
    page.goto(server + "/")
    expect(page.locator("#live")).to_have_text("live")
