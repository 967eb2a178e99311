"""A PostgreSQL that stops answering, or whose disk fills: named, and nothing waits without a bound.

Both run against a PostgreSQL this module starts itself (never the suite's
shared one): one test stops it with SIGSTOP, the other puts a table on a
tiny tmpfs and fills it.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg2
import pytest

from server.core import db, migrations
from server.core.embedded_pg import as_user, run_as
from tests.apiclient import AUTH, TOKEN, Gunicorn, http, wait_for
from tests.conftest import ROOT
from tests.pg import EmbeddedPostgres, free_port

BOUND = 2.0  # what the issue demands of /health/ready and /metrics while PostgreSQL hangs


@pytest.fixture(scope="module")
def own_pg():
    root = Path(tempfile.mkdtemp(prefix="ayon-test-outage-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "data", free_port())
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_database(own_pg):
    name = "outage_" + os.urandom(4).hex()
    admin = db.connect(own_pg.url, "ayon-test")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = db.with_database(own_pg.url, name)
    migrations.migrate(url, say=lambda _: None)
    yield url
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def server_env(tmp_path: Path, url: str) -> dict:
    values = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
    values.update(AYON_POSTGRES_URL=url, AYON_DATA_DIR=str(tmp_path / "data"), AYON_INSTANCE_ID="test",
                  AYON_ADMIN_TOKEN=TOKEN, AYON_DB_WAIT_TIMEOUT="10", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return values


def timed(url: str, timeout: float, headers: dict | None = None) -> tuple[int, bytes, dict, float]:
    started = time.monotonic()
    status, body, headers = http(url, headers=headers, timeout=timeout)
    return status, body, headers, time.monotonic() - started


def postgres_tree(server: EmbeddedPostgres) -> list[psutil.Process]:
    """The postmaster first (so it forks no new backend), then every backend."""
    postmaster = psutil.Process(server.proc.pid)
    return [postmaster, *postmaster.children(recursive=True)]


def test_a_stopped_postgresql_is_not_ready_within_2_s_and_nothing_hangs(own_pg, own_database, tmp_path):
    server = Gunicorn(server_env(tmp_path, own_database))
    stopped: list[psutil.Process] = []
    try:
        server.wait_ready()
        for path in ("/api/events", "/api/config"):  # both paths hold a connection now
            assert http(server.url + path, headers=AUTH)[0] == 200
        stopped = postgres_tree(own_pg)
        for proc in stopped:
            proc.send_signal(signal.SIGSTOP)

        # The slow ones (a statement PostgreSQL never answers) run meanwhile: the async and the thread path.
        slow: dict[str, tuple] = {}
        threads = [threading.Thread(target=lambda p=path: slow.__setitem__(p, timed(server.url + p, 30, AUTH)))
                   for path in ("/api/events", "/api/config")]
        for thread in threads:
            thread.start()

        status, body, _, took = timed(server.url + "/health/ready", BOUND + 3)
        assert status == 503 and took < BOUND, (status, body, took)
        assert "did not answer" in json.loads(body)["reason"], body
        status, body, _, took = timed(server.url + "/metrics", BOUND + 3)
        assert status == 200 and took < BOUND, (status, body[:200], took)
        assert b"ayon_metrics_database_up 0.0" in body
        assert b"ayon_http_requests_total" in body  # what the process knows itself

        for thread in threads:
            thread.join(40)
        for path, (status, body, headers, took) in slow.items():
            # 503 with Retry-After within the API's bound, never a hang or a 500.
            assert status == 503, (path, status, body)
            assert headers.get("retry-after") == "5", (path, headers)
            assert took < db.API_LIMITS["answer_timeout"] + 5, (path, took)
            assert "did not answer within" in json.loads(body)["error"]["description"], (path, body)
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
    try:
        # Recovered without a restart.
        wait_for(lambda: http(server.url + "/health/ready", timeout=3)[0] == 200, 30, "ready again after SIGCONT")
        wait_for(lambda: http(server.url + "/api/events", headers=AUTH, timeout=5)[0] == 200, 30,
                 "/api/events answers again")
    finally:
        server.stop()


def test_a_full_database_disk_is_named_storage_and_not_ready(own_pg, own_database, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a tablespace needs root (CI and the suite's machine run as root)")
    mount = Path(tempfile.mkdtemp(prefix="ayon-test-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    server = None
    try:
        entry = as_user(run_as())
        if entry:
            os.chown(mount, entry["user"], entry["group"])
        conn = db.connect(own_database, "ayon-test")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLESPACE small LOCATION '{mount}'")
            cur.execute("ALTER TABLE events SET TABLESPACE small")
            cur.execute("CREATE TABLE filler (data text) TABLESPACE small")
            cur.execute("ALTER TABLE filler ALTER data SET STORAGE EXTERNAL")  # no compression: fills at once
            with pytest.raises(psycopg2.errors.DiskFull, match="No space left on device"):
                for _ in range(200):
                    cur.execute("INSERT INTO filler SELECT string_agg(md5(random()::text), '') "
                                "FROM generate_series(1, 2000)")
        conn.close()
        server = Gunicorn(server_env(tmp_path, own_database))
        server.wait_ready()

        found = None
        for number in range(400):  # the events table's last page fills, then it cannot grow
            body = json.dumps({"topic": "action.fill", "payload": {"n": number, "pad": "x" * 2000}}).encode()
            status, text, headers = http(server.url + "/api/actions", "POST",
                                         {**AUTH, "Content-Type": "application/json"}, body)
            if status != 201 and status != 200:
                found = (status, text, headers)
                break
        assert found is not None, "the events table never ran out of space"
        status, text, headers = found
        error = json.loads(text)["error"]
        assert status == 507, text
        assert "the database's disk is full" in error["description"] and "free space" in error["description"]
        assert "No space left on device" in error["description"]
        assert "not reachable" not in error["description"]
        assert headers.get("retry-after")

        # Every worker's readiness says so (the workers share what one of them saw), within the bound.
        for _ in range(6):
            status, body, _, took = timed(server.url + "/health/ready", BOUND + 3)
            assert status == 503 and took < BOUND, (status, body)
            assert "disk is full" in json.loads(body)["reason"], body
        assert http(server.url + "/api/events", headers=AUTH)[0] == 200  # reads still work
    finally:
        if server is not None:
            server.stop()
        try:
            conn = db.connect(own_database, "ayon-test")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS filler")
                cur.execute("ALTER TABLE events SET TABLESPACE pg_default")
            conn.close()
            admin = db.connect(own_pg.url, "ayon-test")
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {db.database_name(own_database)} WITH (FORCE)")
                cur.execute("DROP TABLESPACE IF EXISTS small")
            admin.close()
        finally:
            subprocess.run(["umount", str(mount)], check=False)
            mount.rmdir()
