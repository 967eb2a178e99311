"""The web server heartbeats like the other programs: from a child of gunicorn's master, with its figures."""

import json
import signal
import time

import psutil

from server.core.heartbeat import BESIDE_NAME
from tests.apiclient import AUTH, Gunicorn, http, running_gunicorn, wait_for


def server_row(gunicorn: Gunicorn) -> dict | None:
    """The `server` program of instance `test` as GET /api/instances lists it."""
    status, body, _ = http(gunicorn.url + "/api/instances", headers=AUTH)
    if status != 200:
        return None
    for instance in json.loads(body)["instances"]:
        if instance["instance_id"] == "test":
            return next((p for p in instance["programs"] if p["program"] == "server"), None)
    return None


def beating_child(master: int) -> psutil.Process:
    """The master's one child that is not a worker: the heartbeat."""
    found = wait_for(lambda: [c for c in psutil.Process(master).children() if c.name() == BESIDE_NAME], 10,
                     "the heartbeat child of the gunicorn master")
    assert len(found) == 1, found
    return found[0]


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_server_heartbeat_lists_figures_survives_an_outage_and_stops_with_the_master(env, database, pg):
    with running_gunicorn(env) as server:
        for _ in range(25):
            assert http(server.url + "/api/info")[0] == 200
        row = wait_for(lambda: (r := server_row(server)) and r["info"].get("workers_alive") == 2
                       and (r["info"].get("requests_total") or 0) >= 25 and r,
                       20, lambda: f"program server with 2 workers and 25 requests: {server_row(server)}")
        assert row["pid"] == server.proc.pid and row["stale"] is False
        assert row["info"]["workers_configured"] == 2
        assert set(row["info"]) == {"workers_alive", "workers_configured", "requests_total"}
        child = beating_child(server.proc.pid)
        workers = [c for c in psutil.Process(server.proc.pid).children() if c.pid != child.pid]
        assert len(workers) == 2
        # One connection for the whole server's heartbeat, none per worker.
        assert database.fetchone("SELECT count(*) FROM pg_stat_activity "
                                 "WHERE application_name = 'ayon-server-heartbeat'") == (1,)

        if pg.embedded is not None:
            # PostgreSQL goes away for a while: requests are not held, the heartbeat resumes afterwards.
            before = row["last_seen"]
            pg.embedded.stop()
            try:
                wait_for(lambda: any("heartbeat failed, will retry" in line for line in server.lines), 15,
                         lambda: "the heartbeat's outage warning:\n" + server.output())
                started = time.monotonic()
                assert http(server.url + "/health/live", timeout=2)[0] == 200
                assert time.monotonic() - started < 1.0
            finally:
                pg.embedded.start()
            row = wait_for(lambda: (r := server_row(server)) and r["last_seen"] > before and r, 20,
                           "a heartbeat after PostgreSQL came back")
            assert row["pid"] == server.proc.pid and row["info"]["workers_alive"] == 2
            wait_for(lambda: any("heartbeat restored" in line for line in server.lines), 10,
                     "the heartbeat's recovery line")
            assert child.is_running() and child.pid in [c.pid for c in psutil.Process(server.proc.pid).children()]
        assert server.stop() == 0
    assert gone(child), "the heartbeat outlived the master"


def test_server_heartbeat_ends_with_a_killed_master(env):
    server = Gunicorn(env)
    try:
        server.wait_ready()
        child = beating_child(server.proc.pid)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        wait_for(lambda: gone(child), 5, "the heartbeat to end after its master was killed")
    finally:
        server.stop()
        server.reader.join(5)
