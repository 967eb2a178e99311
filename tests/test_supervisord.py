"""Real supervisord, real programs: start, restart, crash, failure and shutdown."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import psutil
import pytest

from tests.conftest import ROOT
from tests.instance import Instance, environ, http_get, poll
from tests.pg import free_port

ALL = {"setup", "server", "webactions", "installer", "logcollector", "maintenance"}
LISTENERS = {"console"}


@pytest.fixture
def instances():
    started = []
    yield started
    for instance in started:
        instance.kill()


def test_all_roles_run_restart_and_stop_cleanly(env, tmp_path, instances):
    instance = Instance(env, tmp_path / "a").start()
    instances.append(instance)
    states = instance.wait_running(ALL)
    # The finished setup is gone from the table: what is listed runs.
    assert set(states) == ALL - {"setup"} | LISTENERS
    instance.wait_ready()
    status = instance.ctl("status")
    assert status.returncode == 0, status.stdout

    # No secret in any environment /proc shows, supervisord's included: the programs, forked from it
    # (supervision/preload.py), hold theirs in memory only. Which program is given which secret is the
    # config's (test_supervisor_config.py); here the server answers with its token.
    token, password = env["AYON_ADMIN_TOKEN"].encode(), urlsplit(env["AYON_POSTGRES_URL"]).password.encode()
    by_pid = instance.programs_by_pid(" child")
    assert {name for name in by_pid.values() if not name.endswith("child")} == ALL - {"setup"} | LISTENERS
    for pid, name in [*by_pid.items(), (instance.proc.pid, "supervisord")]:
        shown = environ(pid)
        assert token not in shown and password not in shown, name
    assert http_get(instance.url + "/api/config", token=env["AYON_ADMIN_TOKEN"])[0] == 200

    # `supervisorctl tail` shows one program's output, every line of it from that program
    poll(lambda: "[test/webactions]" in instance.ctl("tail", "webactions").stdout, 30, "webactions output")
    tail = instance.ctl("tail", "server").stdout
    assert "Booting worker" in tail and "[test/server]" in tail
    assert not re.search(r"\[test/(?!server\])", tail), tail
    follow = subprocess.Popen([sys.executable, "-m", "supervisor.supervisorctl", "-c", instance.env["AYON_SUPERVISOR_CONF"],
                               "tail", "-f", "server"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    followed = []
    threading.Thread(target=lambda: followed.extend(follow.stdout), daemon=True).start()
    try:
        poll(lambda: followed, 30, "tail -f to start")
        http_get(instance.url + "/health/live?followed")
        poll(lambda: "/health/live?followed" in "".join(followed), 30, lambda: f"the request in tail -f: {followed}")
    finally:
        follow.kill()
        follow.wait()
    # ... while the instance's own stdout still has every program's lines, each with its name
    for program in ALL:
        assert f"[test/{program}]" in instance.output, program

    # supervisorctl with only the generated config
    old_server = instance.pid_of("server")
    out = instance.ctl("restart", "server")
    assert out.returncode == 0 and "server: started" in out.stdout
    new_server = poll(lambda: instance.pid_of("server"), 30, "a new server pid")
    assert new_server != old_server
    instance.wait_ready()
    assert http_get(instance.url + "/api/config", token=env["AYON_ADMIN_TOKEN"])[0] == 200  # it has its token again

    # a program killed with SIGKILL is restarted
    victim = instance.pid_of("webactions")
    os.kill(victim, signal.SIGKILL)
    poll(lambda: (instance.pid_of("webactions") or victim) != victim, 30, "webactions restarted")
    instance.wait_running(ALL)

    # SIGTERM: every program exits within its stopwaitsecs, supervisord exits 0, nothing is left
    tree = instance.tree()
    assert len(tree) >= 8
    started = time.monotonic()
    code = instance.stop(signal.SIGTERM, timeout=45)
    assert code == 0, instance.output[-2000:]
    assert time.monotonic() - started < 30
    poll(lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
         "every process of the tree to exit")


def test_a_program_that_cannot_start_ends_supervisord(env, database, tmp_path, instances):
    # A database with a newer schema than this code: the daemons refuse it at once.
    database.execute("INSERT INTO schema_migrations (version, name, sha256, kind) VALUES (9999, 'future', 'x', 'contract')")
    instance = Instance(env, tmp_path / "b", AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="false").start()
    instances.append(instance)
    code = instance.proc.wait(90)
    assert code != 0
    assert "this code does not know (a newer schema, and a contract migration" in instance.output
    # Exiting within startsecs is a failed start (FATAL); later, exit 2 is final: either ends the instance.
    assert re.match(r"Error: program (webactions|installer|logcollector) "
                    r"(could not be started \(FATAL\)|cannot run: it exited with status 2)",
                    instance.lines[-1]), instance.output[-2000:]


def test_the_watchdog_still_watches_after_supervisord_reloads(env, database, tmp_path, instances):
    # The watchdog is supervisord's own subscription to its events, which a reload (SIGHUP) clears.
    instance = Instance(env, tmp_path / "h", AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="false").start()
    instances.append(instance)
    running = {"server", "webactions", "installer", "logcollector"}
    instance.wait_running(running)
    database.execute("INSERT INTO schema_migrations (version, name, sha256, kind) VALUES (9999, 'future', 'x', 'contract')")
    os.kill(instance.proc.pid, signal.SIGHUP)
    code = instance.proc.wait(90)
    assert code == 1, instance.output[-2000:]
    assert "received SIGHUP" in instance.output
    assert re.match(r"Error: program (webactions|installer|logcollector) "
                    r"(could not be started \(FATAL\)|cannot run: it exited with status 2)",
                    instance.lines[-1]), instance.output[-2000:]


def test_setup_failing_ends_the_instance_within_10_s(env, tmp_path, instances):
    # A failure only setup finds (the entrypoint refuses a bad AYON_CONFIG_FILE before starting anything):
    # no PostgreSQL answers; the other programs wait for the schema meanwhile.
    port = free_port()
    instance = Instance(env, tmp_path / "c", AYON_POSTGRES_URL=f"postgresql://ayon@127.0.0.1:{port}/ayon",
                        AYON_DB_WAIT_TIMEOUT="1").start()
    instances.append(instance)
    poll(lambda: "exited: setup" in instance.output, 60, "setup to exit")
    started = time.monotonic()
    code = instance.proc.wait(30)
    assert time.monotonic() - started < 10
    assert code == 1
    assert instance.lines[-1].startswith(f"Error: setup failed: PostgreSQL at 127.0.0.1:{port} did not answer "
                                         "within 1 s"), instance.output[-2000:]


def test_server_before_setup_becomes_ready_without_restart(env, empty_database_url, tmp_path, instances):
    env["AYON_POSTGRES_URL"] = empty_database_url
    instance = Instance(env, tmp_path / "d", AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="false").start()
    instances.append(instance)
    poll(lambda: http_get(instance.url + "/health/live")[0] == 200, 60, "live")
    status, body, headers = http_get(instance.url + "/health/ready")
    assert status == 503 and headers.get("retry-after") == "5"
    status, _, headers = http_get(instance.url + "/api/events", token="test-token")
    assert status == 503 and headers.get("retry-after")
    server_pid = instance.pid_of("server")
    assert "waiting for setup to bring the schema up to date" in poll(
        lambda: instance.output if "waiting for setup" in instance.output else None, 30, "a waiting line")
    setup = subprocess.run([sys.executable, "-m", "procs.setup"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert setup.returncode == 0, setup.stderr
    instance.wait_ready(30)
    assert instance.pid_of("server") == server_pid
    instance.wait_running({"server", "webactions", "installer", "logcollector"})


def test_supervisords_first_poll_does_not_wait_and_the_others_wait_briefly():
    """supervisord starts its programs after its first poll: that one returns at once, later ones within 0.1 s."""
    from supervisor import poller

    from supervision import patches

    real = poller.Poller(options=None)
    asked = []

    def poll(self, timeout):
        asked.append(timeout)
        return type(real).poll(self, timeout)

    read, write = os.pipe()
    try:
        real.register_readable(read)
        shortened = patches.short_polls(poll)
        for timeout in (30, 30, 0.05, 30):
            assert shortened(real, timeout) == ([], [])
        assert asked == [0, patches.POLL_SECONDS, 0.05, patches.POLL_SECONDS]
        os.write(write, b"x")  # what is ready still ends a poll at once
        assert shortened(real, 30) == ([read], [])
    finally:
        os.close(read)
        os.close(write)
