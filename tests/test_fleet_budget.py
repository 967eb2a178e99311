"""A fleet on one stock-sized PostgreSQL: 20 server-only instances and a maintenance daemon through PgBouncer.

The PostgreSQL here is this test's own, with `max_connections=100` (the
suite's shared one allows 300). AYON_POSTGRES_URL goes through a real
PgBouncer in transaction pooling whose pool fits it; LISTEN goes direct
(AYON_POSTGRES_SESSION_URL). Each instance is the real entrypoint under
supervisord with one gunicorn worker. A thread samples pg_stat_activity
all along: the peak must stay under max_connections, every instance must
be ready, and a requested maintenance run must run exactly once.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from server.core import db, events
from tests.conftest import ROOT
from tests.fleet import PgBouncer
from tests.instance import Instance, http_get, poll
from tests.pg import EmbeddedPostgres, free_port

INSTANCES = 20
MAX_CONNECTIONS = 100
POOL = 20  # PgBouncer's server connections for the fleet's pooled traffic
TOKEN = "fleet-token"
CLIENTS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
BY_NAME = """SELECT coalesce(nullif(application_name, ''), '(pgbouncer)'), count(*) FROM pg_stat_activity
             WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 2 DESC"""


class Sampler(threading.Thread):
    """Counts PostgreSQL's client connections every 0.2 s (its own included) and keeps the peak."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.conn = db.connect(url, "ayon-test-sampler")
        self.conn.autocommit = True
        self.peak, self.last = 0, 0
        self.at_peak: list = []  # connections by application name when the peak was seen
        self.done = threading.Event()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.done.wait(0.2):
                cur.execute(CLIENTS)
                self.last = cur.fetchone()[0]
                if self.last > self.peak:
                    self.peak = self.last
                    cur.execute(BY_NAME)
                    self.at_peak = cur.fetchall()

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        self.conn.close()


@pytest.fixture
def small_postgres():
    """A PostgreSQL of this test's own with a stock connection limit."""
    root = Path(tempfile.mkdtemp(prefix="ayon-fleet-pg-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "data", free_port())
    server.extra += ("-c", f"max_connections={MAX_CONNECTIONS}")  # after the embedded default of 300: it wins
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def request_run(url: str) -> str:
    req = urllib.request.Request(url + "/api/maintenance/run", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())["id"]


def test_twenty_server_instances_and_a_maintenance_daemon_fit_max_connections_100(small_postgres, tmp_path):
    direct = db.with_database(small_postgres.url, "fleet")
    admin = db.connect(small_postgres.url, "ayon-test")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SHOW max_connections")
        assert cur.fetchone()[0] == str(MAX_CONNECTIONS)
        cur.execute("CREATE DATABASE fleet")
    admin.close()
    bouncer = PgBouncer(small_postgres.url, "transaction", pool_size=POOL).start()
    sampler = Sampler(small_postgres.url)
    sampler.start()
    instances: list[Instance] = []
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
        env.update(AYON_POSTGRES_URL=bouncer.url(direct), AYON_POSTGRES_SESSION_URL=direct,
                   AYON_ADMIN_TOKEN=TOKEN, AYON_SERVER_WORKERS="1", AYON_DB_IDLE_SECONDS="2",
                   AYON_DB_WAIT_TIMEOUT="120", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        setup = subprocess.run([sys.executable, "-m", "procs.setup"],
                               env={**env, "AYON_DATA_DIR": str(tmp_path / "setup")},
                               cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert setup.returncode == 0, setup.stdout + setup.stderr

        started = time.monotonic()
        for n in range(INSTANCES):
            instances.append(Instance(env, tmp_path / f"s{n}", AYON_INSTANCE_ID=f"s{n}", AYON_RUN_SETUP="false",
                                      AYON_RUN_MAINTENANCE="false").start())
        maint = Instance(env, tmp_path / "maint", AYON_INSTANCE_ID="maint", AYON_RUN_SETUP="false",
                         AYON_RUN_SERVER="false").start()
        instances.append(maint)
        for instance in instances[:INSTANCES]:
            instance.wait_ready(240)
        up = time.monotonic() - started
        maint.wait_running({"maintenance", "logcollector"}, 120)
        for instance in instances[:INSTANCES]:
            assert http_get(instance.url + "/health/ready")[0] == 200, instance.output

        # One request, made on one instance: the fleet's only daemon runs it once.
        request = request_run(instances[3].url)
        database = db.Database(direct, size=1, application_name="ayon-test")
        try:
            def runs():
                return database.fetchall("SELECT id, status, payload->>'request_id' FROM events WHERE topic = %s",
                                         (events.MAINTENANCE,))
            poll(lambda: [r for r in runs() if r[1] not in ("in_progress", "pending")], 180,
                 lambda: f"the requested run to end: {runs()}\n{maint.output[-3000:]}")
            [(run_id, status, request_id)] = runs()
            assert (status, request_id) == ("finished", request), maint.output[-3000:]
            assert database.fetchone("SELECT status FROM events WHERE id = %s", (request,))[0] == "finished"

            # Idle again: the pools shrink back, to the LISTEN connections and what beats.
            for instance in instances[:INSTANCES]:
                assert http_get(instance.url + "/api/info", token=TOKEN)[0] == 200
            assert len(runs()) == 1  # a second look: still exactly one run
        finally:
            database.close()
        print(f"\n{INSTANCES} server-only instances ready in {up:.0f} s; peak {sampler.peak} PostgreSQL "
              f"connections of {MAX_CONNECTIONS}, {sampler.last} at the end; at the peak: {sampler.at_peak}")
        assert sampler.peak < MAX_CONNECTIONS
        assert not [i for i in instances if "too many clients" in i.output], "an instance was refused a connection"
    finally:
        for instance in instances:
            instance.kill()
        sampler.stop()
        bouncer.stop()
