"""A package.yaml that expands when quoted (a YAML alias bomb), sent to a real gunicorn by upload and by URL.

Before the manifest loader refused aliases, a 248-byte zip made the worker
answer with a 312 MB error and grow by 860 MB: the message quoted the
expanded name. The answer must stay short and the workers' memory flat.
"""

import hashlib
import http.server
import json
import threading

import psutil
import pytest

from tests.apiclient import AUTH, gunicorn, wait_for  # noqa: F401 (fixture)
from tests.apiclient import http as request
from tests.test_archive import make_zip

pytestmark = pytest.mark.serial  # it measures the workers' memory (make test runs it alone)

LEVELS = 8
MAX_ANSWER = 4096
MAX_GROWTH = 20 * 1024 * 1024


def alias_bomb(levels: int = LEVELS) -> str:
    """Each level a list of nine aliases of the one before: 9**levels strings when expanded."""
    lines = ['l0: &l0 ["aaaaaaaaaaaaaaaa","aaaaaaaaaaaaaaaa","aaaaaaaaaaaaaaaa"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines + [f"name: *l{levels}", f"version: *l{levels}"]) + "\n"


def workers_rss(server) -> dict[int, int]:
    return {child.pid: child.memory_info().rss for child in psutil.Process(server.proc.pid).children()}


def settled_workers(server, workers: int = 2) -> dict[int, int]:
    """Each worker's RSS once all of them are forked and done starting (two samples alike)."""
    last: dict[int, int] = {}

    def settled():
        nonlocal last
        now = workers_rss(server)
        alike = len(now) == workers and now.keys() == last.keys() and all(
            abs(now[pid] - last[pid]) < 256 * 1024 for pid in now)
        last = now
        return now if alike else None

    return wait_for(settled, 30, lambda: f"{workers} started workers (now {last})", every=0.3)


@pytest.fixture
def bomb_site():
    """A web server on loopback serving the bomb as /bomb.zip."""
    body = make_zip([], manifest=alias_bomb())

    class Bomb(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the handler's name is http.server's
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bomb)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/bomb.zip", hashlib.sha256(body).hexdigest(), body
    server.shutdown()
    server.server_close()


def assert_short_refusal(status: int, answer: bytes) -> None:
    assert status == 400, answer[:300]
    assert len(answer) < MAX_ANSWER, f"{len(answer)} bytes"
    assert "aliases (*name) are not accepted" in json.loads(answer)["error"]["description"]


def test_the_alias_bomb_is_a_short_400_by_upload_and_by_url(gunicorn, bomb_site):
    url, sha256, body = bomb_site
    allowed = request(gunicorn.url + "/api/config", "PATCH", {**AUTH, "Content-Type": "application/json"},
                   json.dumps({"installer": {"allow_private_urls": True}}).encode())
    assert allowed[0] == 200, allowed[1]
    # Measured once both workers are forked and started: the fixture is ready when one answers.
    before = settled_workers(gunicorn)
    # Several times each, so both workers meet it.
    for _ in range(4):
        assert_short_refusal(*request(gunicorn.url + "/api/addons", "POST",
                                   {**AUTH, "Content-Type": "application/zip"}, body, timeout=20)[:2])
        assert_short_refusal(*request(gunicorn.url + "/api/addons/install-from-url", "POST",
                                   {**AUTH, "Content-Type": "application/json"},
                                   json.dumps({"url": url, "sha256": sha256}).encode(), timeout=20)[:2])
    after = workers_rss(gunicorn)
    assert after.keys() == before.keys(), f"a worker was replaced: {sorted(before)} -> {sorted(after)}"
    grown = sum(after.values()) - sum(before.values())
    assert grown < MAX_GROWTH, f"the workers grew by {grown / 2**20:.1f} MiB"
