"""Several instances on one machine and one PostgreSQL: setup racing, addons, webactions, maintenance."""

import io
import json
import signal
import subprocess
import sys
import threading
import urllib.request
import zipfile

import pytest

from server.core import db, events
from tests.conftest import ROOT
from tests.instance import Instance, http_get, poll
from tests.pg import free_port
from tests.roles import names_for

TOKEN = "test-token"
SERVER_PROGRAMS = set(names_for(server=True, setup=False, maintenance=False, embedded=False))


def request(method, url, body=None, content_type="application/json"):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.status, json.loads(response.read() or b"null")


def addon_zip(name, version):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("package.yaml", f"name: {name}\nversion: '{version}'\n")
        zf.writestr("frontend/index.html", f"<h1>{name} {version}</h1>")
    return buffer.getvalue()


@pytest.fixture
def cluster(pg, env, tmp_path):
    url = pg.url_for("multi_" + str(free_port()))
    env = {**env, "AYON_POSTGRES_URL": url, "AYON_SERVER_WORKERS": "1"}
    nodes = [Instance(env, tmp_path / f"node{i}", AYON_INSTANCE_ID=f"node{i}", AYON_RUN_SETUP="false",
                      AYON_RUN_MAINTENANCE="false") for i in (1, 2, 3)]
    maint = Instance(env, tmp_path / "maint", AYON_INSTANCE_ID="maint", AYON_RUN_SETUP="false",
                     AYON_RUN_SERVER="false")
    started = []
    try:
        for instance in [*nodes, maint]:
            started.append(instance.start())
        yield env, url, nodes, maint
    finally:
        for instance in started:
            instance.kill()
        pg.drop_database(url)


def test_instances_share_one_database(cluster):
    env, url, nodes, maint = cluster
    # setup races with instances already started with setup off
    setup = subprocess.run([sys.executable, "-m", "procs.setup"], env={**env, "AYON_DATA_DIR": str(nodes[0].folder / "s")},
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stderr
    for node in nodes:
        node.wait_ready(120)
        node.wait_running(SERVER_PROGRAMS, 60)
    maint.wait_running({"maintenance", "logcollector"}, 60)
    database = db.Database(url)

    # an uploaded addon is installed on every instance
    status, stored = request("POST", nodes[0].url + "/api/addons", addon_zip("multi", "1.0.0"), "application/zip")
    assert status == 201
    for node in nodes:
        poll(lambda: http_get(node.url + "/addons/multi/1.0.0/frontend/index.html")[0] == 200, 60,
             f"the addon on {node.env['AYON_INSTANCE_ID']}")
    assert http_get(nodes[2].url + "/addons/multi/1.0.0/frontend/index.html")[1] == b"<h1>multi 1.0.0</h1>"

    # webactions invalidation on three instances changes each action once
    listener = events.Listener(url)
    failed_seen: dict[str, int] = {}
    stop = threading.Event()

    def count():
        while not stop.is_set():
            for _, note in listener.wait(0.5):
                if note["topic"].startswith("action.") and note["status"] == "failed":
                    failed_seen[note["id"]] = failed_seen.get(note["id"], 0) + 1

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    action_ids = [request("POST", nodes[i % 3].url + "/api/actions", {"topic": "action.multi", "payload": {"n": i}})[1]["id"]
                  for i in range(30)]
    status, _ = request("PATCH", nodes[1].url + "/api/config", {"webactions": {"timeout": 1, "check_interval": 1}})
    assert status == 200
    poll(lambda: len(failed_seen) == len(action_ids), 60, lambda: f"30 timed-out actions, saw {len(failed_seen)}")
    stop.set()
    counter.join(5)
    listener.close()
    assert set(failed_seen) == set(action_ids)
    assert set(failed_seen.values()) == {1}

    # a maintenance run requested through the API runs once; its logs arrive through the collector
    status, requested = request("POST", nodes[2].url + "/api/maintenance/run", {})
    assert status == 202
    runs = poll(lambda: [e for e in events.query(database, topic="server.maintenance")
                         if e["status"] in ("finished", "failed")], 120, "a finished maintenance run")
    assert len(events.query(database, topic="server.maintenance")) == 1
    assert runs[0]["status"] == "finished", runs[0]
    poll(lambda: database.fetchone("SELECT count(*) FROM logs WHERE instance = 'maint' AND program = 'maintenance'")[0] > 0,
         60, "maintenance logs in the logs table")

    # stopping one instance leaves the others serving
    assert nodes[0].stop(signal.SIGTERM, timeout=45) == 0
    for node in nodes[1:]:
        assert http_get(node.url + "/health/ready")[0] == 200
        assert http_get(node.url + "/api/events?limit=5", token=TOKEN)[0] == 200
    database.close()
