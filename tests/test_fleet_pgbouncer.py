"""The instance behind a real PgBouncer, in transaction and in session pooling.

Transaction pooling moves a client between server connections at every
transaction: no prepared statement, LISTEN or session lock may rely on the
session. AYON_POSTGRES_SESSION_URL (direct here) carries LISTEN there.
"""

import subprocess
import sys
import threading

import pytest

from server.api.common import is_public
from server.api.openapi import routes
from server.core import db, events, migrations
from server.core.errors import ConfigError
from tests.apiclient import AUTH, Gunicorn, http, make_app, running_gunicorn, wait_for
from tests.conftest import ROOT
from tests.test_api_stream import SSEClient
from tests.test_maintenance import run_cli, runs, slow_task, start_cli, wait_for_task  # noqa: F401  (fixture)
from tests.test_security import concrete


@pytest.fixture
def pooled_env(env, bouncer, pooled_url, database_url):
    """The instance's environment through the pooler; in transaction pooling LISTEN goes direct."""
    values = dict(env, AYON_POSTGRES_URL=pooled_url)
    if bouncer.mode == "transaction":
        values["AYON_POSTGRES_SESSION_URL"] = database_url
    return values


def test_listen_check_tells_transaction_pooling_apart(bouncer, pooled_url, database_url):
    assert db.notifications_arrive(database_url)
    assert db.notifications_arrive(pooled_url, timeout=2) is (bouncer.mode == "session")
    # What the programs do: the NOTIFY through the pooler, the LISTEN on the session URL.
    assert db.notifications_arrive(database_url, sender_url=pooled_url)
    assert db.notifications_arrive(pooled_url, timeout=2, sender_url=pooled_url) is (bouncer.mode == "session")


def test_a_session_url_on_another_database_is_refused(database_url):
    # A tired operator's copy: the right server, the wrong database. The NOTIFY goes where the events
    # are written, the LISTEN would never hear it.
    other = db.with_database(database_url, "postgres")
    assert db.notifications_arrive(other, timeout=1, sender_url=database_url) is False
    with pytest.raises(ConfigError) as refused:
        db.check_listen(other, "AYON_POSTGRES_SESSION_URL", 1, sender_url=database_url)
    assert str(refused.value).startswith("AYON_POSTGRES_SESSION_URL: LISTEN/NOTIFY does not work through")
    assert "another database than AYON_POSTGRES_URL's" in str(refused.value)


def test_the_server_refuses_listen_through_transaction_pooling(bouncer, env, pooled_url):
    if bouncer.mode != "transaction":
        pytest.skip("LISTEN works through session pooling")
    server = Gunicorn(dict(env, AYON_POSTGRES_URL=pooled_url))
    try:
        assert server.proc.wait(30) == 2
    finally:
        server.stop()
        server.reader.join(5)
    errors = [line for line in server.lines if line.startswith("Error:")]
    assert len(errors) == 1, server.output()
    assert errors[0].startswith(f"Error: AYON_POSTGRES_URL: LISTEN/NOTIFY does not work through 127.0.0.1:{bouncer.port}")
    assert "set AYON_POSTGRES_SESSION_URL to a direct or session-pooled URL" in errors[0]


def test_a_daemon_refuses_listen_through_transaction_pooling(bouncer, env, pooled_url):
    if bouncer.mode != "transaction":
        pytest.skip("LISTEN works through session pooling")
    bad = dict(env, AYON_POSTGRES_URL=pooled_url, AYON_POSTGRES_SESSION_URL=pooled_url)
    result = subprocess.run([sys.executable, "-m", "maintenance", "--daemon"], env=bad, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert line.startswith("Error: AYON_POSTGRES_SESSION_URL: LISTEN/NOTIFY does not work through")


def test_every_get_route_answers_without_a_500(pooled_env, database):
    events.dispatch(database, "test.pooled", description="one")
    app_routes = routes(make_app(pooled_env["AYON_POSTGRES_URL"]))
    paths = [concrete(t) for t, resource, methods in app_routes
             if "GET" in methods and not t.endswith("/stream") and not is_public(resource)]
    assert "/api/instances" in paths and "/api/logs" in paths
    with running_gunicorn(pooled_env) as server:
        failures = []

        def client():
            for _ in range(4):  # each path several times, four clients at once: many server connections
                for path in paths:
                    status = http(server.url + path, headers=AUTH)[0]
                    if status >= 500 or status == 0:
                        failures.append((path, status))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, (failures[:10], server.output())


def test_the_stream_delivers_every_event(pooled_env, database):
    with running_gunicorn(pooled_env) as server:
        streams = [SSEClient(server.url, "/api/events/stream") for _ in range(3)]
        try:
            wait_for(lambda: all("connected" in s.comments for s in streams), 10, "the streams to start")
            sent = [events.dispatch(database, "test.pooled", description=f"event {n}") for n in range(10)]
            wait_for(lambda: all(len(s.messages) >= len(sent) for s in streams), 15, "every event on every stream")
            for stream in streams:
                assert [m["id"] for m in stream.data()] == sent
        finally:
            for stream in streams:
                stream.close()


def test_a_killed_run_leaves_no_lock_behind(bouncer, pooled_env, database, slow_task):
    proc = start_cli(pooled_env, extra=slow_task)
    try:
        run = wait_for_task(database, "slow_query")
        proc.kill()  # SIGKILL: nothing of the run's own gets to release anything
        proc.wait(10)
    finally:
        proc.kill()
    result = run_cli(pooled_env, "--task", "remove_old_events")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "another maintenance run is in progress" not in result.stdout + result.stderr
    assert f"marked the interrupted run {run['id']} failed" in result.stdout
    assert events.get(database, run["id"])["status"] == "failed"


def test_each_run_runs_and_leaves_the_lock_free(pooled_env, database):
    for _ in range(3):
        result = run_cli(pooled_env, "--task", "remove_old_events")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "maintenance finished" in result.stdout + result.stderr, result.stdout + result.stderr
    assert [r["status"] for r in runs(database)] == ["finished"] * 3


def test_setup_and_migrations_go_through(bouncer, pg, env, empty_database_url):
    pooled = bouncer.url(empty_database_url)
    assert migrations.migrate(pooled, say=lambda _: None) > 0
    assert migrations.migrate(pooled, say=lambda _: None) == 0
    setup = dict(env, AYON_POSTGRES_URL=pooled, AYON_RUN_SERVER="false", AYON_RUN_MAINTENANCE="false")
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "procs.setup"], env=setup, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    conn = db.connect(empty_database_url, "ayon-test")
    try:
        with conn.cursor() as cur:
            # No lock left on any server connection of the pool.
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()
