"""The web server heartbeats like the other programs: from one of its workers, with its figures."""

import json
import signal
import time

import psutil

from tests.apiclient import AUTH, Gunicorn, http, running_gunicorn, wait_for

HEARTBEAT_CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ayon-server-heartbeat'"


def server_row(gunicorn: Gunicorn) -> dict | None:
    """The `server` program of instance `test` as GET /api/instances lists it."""
    status, body, _ = http(gunicorn.url + "/api/instances", headers=AUTH)
    if status != 200:
        return None
    for instance in json.loads(body)["instances"]:
        if instance["instance_id"] == "test":
            return next((p for p in instance["programs"] if p["program"] == "server"), None)
    return None


def heartbeat_connections(database, seconds: float = 6.0) -> list[int]:
    """The server's heartbeat connections, sampled every 0.05 s for a little more than a beat interval."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(database.fetchone(HEARTBEAT_CONNECTIONS)[0])
        time.sleep(0.05)  # the sampling pace
    return seen


def workers(master: int) -> list[psutil.Process]:
    return psutil.Process(master).children()


def test_server_heartbeat_lists_figures_survives_an_outage_and_a_dead_worker(env, database, pg):
    with running_gunicorn(env) as server:
        for _ in range(25):
            assert http(server.url + "/api/info")[0] == 200
        row = wait_for(lambda: (r := server_row(server)) and r["info"].get("workers_alive") == 2
                       and (r["info"].get("requests_total") or 0) >= 25 and r,
                       20, lambda: f"program server with 2 workers and 25 requests: {server_row(server)}")
        assert row["pid"] == server.proc.pid and row["stale"] is False
        assert row["info"]["workers_configured"] == 2
        assert set(row["info"]) == {"workers_alive", "workers_configured", "requests_total"}
        # The master holds no connection and no process beside the workers: one worker beats, over one
        # connection at a time for the whole server's heartbeat, opened for each beat and closed after it.
        assert len(workers(server.proc.pid)) == 2
        seen = heartbeat_connections(database)
        assert max(seen) <= 1 and seen.count(0) > len(seen) // 2, seen

        # The beating worker dies: another beats, still over one connection, and the figures follow.
        beating = min(w.pid for w in workers(server.proc.pid))
        before = row["last_seen"]
        psutil.Process(beating).kill()
        row = wait_for(lambda: (r := server_row(server)) and r["last_seen"] > before
                       and r["info"].get("workers_alive") == 2 and beating not in [w.pid for w in workers(server.proc.pid)]
                       and r, 20, lambda: f"a beat from another worker: {server_row(server)}")
        assert row["pid"] == server.proc.pid
        assert max(heartbeat_connections(database)) <= 1

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
        assert server.stop() == 0
    wait_for(lambda: database.fetchone(HEARTBEAT_CONNECTIONS) == (0,), 10, "the heartbeat's connection to close")


def test_server_heartbeat_ends_with_a_killed_master(env, database):
    server = Gunicorn(env)
    try:
        server.wait_ready()
        row = wait_for(lambda: server_row(server), 20, "the server's first beat")
        children = workers(server.proc.pid)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        # Workers notice their master is gone, and the beat with them.
        wait_for(lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], 10,
                 "the workers to end after their master was killed")
        wait_for(lambda: database.fetchone(HEARTBEAT_CONNECTIONS) == (0,), 10, "the heartbeat's connection to close")
        # No beat after that: within more than a beat interval, the row's last_seen stays where it was.
        last = database.fetchone("SELECT last_seen FROM instances WHERE instance_id = 'test' AND program = 'server'")
        assert row is not None and max(heartbeat_connections(database)) == 0
        assert database.fetchone("SELECT last_seen FROM instances WHERE instance_id = 'test' "
                                 "AND program = 'server'") == last
    finally:
        server.stop()
        server.reader.join(5)
