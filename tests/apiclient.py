"""What the API tests share: an in-process client on a migrated database, and a real gunicorn."""

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import falcon.testing
import pytest

from server.api.common import AppContext
from server.app import create_app
from server.core.db import Database
from server.core.settings import load
from tests.conftest import ROOT
from tests.pg import free_port

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(database_url: str, **settings: str):
    values = load({"AYON_POSTGRES_URL": database_url, "AYON_ADMIN_TOKEN": TOKEN, "AYON_INSTANCE_ID": "test",
                   **settings})
    return create_app(AppContext(settings=values, db=Database(database_url, size=4, application_name="ayon-test",
                                                              prepare=not values.pooled)))


@pytest.fixture
def client(database_url):
    """A falcon test client of the whole app on this test's database."""
    return falcon.testing.TestClient(make_app(database_url), headers=AUTH)


def assert_error(result, status: int, *words: str) -> dict:
    """The one error shape, with the status and the words (e.g. the parameter's name) in its description."""
    assert result.status_code == status, result.text
    body = result.json["error"]
    assert body["status"] == status
    assert body["title"]
    for word in words:
        assert word in (body["description"] or ""), body
    return body


def wait_for(condition, timeout: float, what, every: float = 0.1):
    """Poll `condition` until truthy; fail naming `what` (text, or a callable for text) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(every)


def http(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None, timeout=5.0):
    """(status, body bytes, headers by lower-case name) of one request on a new connection; 0 when nothing answers."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b"", {}


class Gunicorn:
    """The server program as production runs it: gunicorn with server/gunicorn_conf.py."""

    def __init__(self, env: dict, workers: int = 2):
        self.port = free_port()
        self.env = dict(env, AYON_HTTP_BIND=f"127.0.0.1:{self.port}", AYON_SERVER_WORKERS=str(workers))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py"],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        # Drained all along: a full pipe would block the server's logging.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            assert self.proc.poll() is None, f"gunicorn exited with {self.proc.returncode}: {self.output()}"
            return http(self.url + "/health/ready", timeout=2)[0] == 200

        wait_for(ready, timeout, "gunicorn to answer /health/ready with 200")

    def stop(self, timeout: float = 25) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(self.lines[-40:])


@contextlib.contextmanager
def running_gunicorn(env: dict, workers: int = 2):
    """A Gunicorn for `env`, ready; stopped at the end."""
    server = Gunicorn(env, workers)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        server.reader.join(5)


@pytest.fixture
def gunicorn(env):
    """A running gunicorn with two workers on this test's database; stopped at the end."""
    with running_gunicorn(env) as server:
        yield server
