"""Real supervisord, real programs: start, restart, crash, failure and shutdown."""

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT
from tests.instance import Instance, http_get, poll

ALL = {"setup", "server", "webactions", "installer", "logcollector", "maintenance"}


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
    assert set(states) == ALL | {"watchdog"}
    instance.wait_ready()

    # supervisorctl with only the generated config
    old_server = instance.pid_of("server")
    out = instance.ctl("restart", "server")
    assert out.returncode == 0 and "server: started" in out.stdout
    new_server = poll(lambda: instance.pid_of("server"), 30, "a new server pid")
    assert new_server != old_server
    instance.wait_ready()

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
    database.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (9999, 'future', 'x')")
    instance = Instance(env, tmp_path / "b", AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="false").start()
    instances.append(instance)
    code = instance.proc.wait(90)
    assert code != 0
    assert "this code does not know (a newer schema)" in instance.output
    # Exiting within startsecs is a failed start (FATAL); later, exit 2 is final: either ends the instance.
    assert re.match(r"Error: program (webactions|installer|logcollector) "
                    r"(could not be started \(FATAL\)|cannot run: it exited with status 2)",
                    instance.lines[-1]), instance.output[-2000:]


def test_setup_failing_ends_the_instance_within_10_s(env, tmp_path, instances):
    bad = tmp_path / "bad.yaml"
    bad.write_text("maintenance:\n  timezone: Mars/Olympus\n")
    instance = Instance(env, tmp_path / "c", AYON_CONFIG_FILE=str(bad)).start()
    instances.append(instance)
    poll(lambda: "exited: setup" in instance.output, 60, "setup to exit")
    started = time.monotonic()
    code = instance.proc.wait(30)
    assert time.monotonic() - started < 10
    assert code == 1
    tail = "\n".join(instance.lines[-15:])
    assert "maintenance.timezone: unknown time zone 'Mars/Olympus'" in tail
    assert instance.lines[-1] == ("Error: setup failed: AYON_CONFIG_FILE " + str(bad) +
                                  ": maintenance.timezone: unknown time zone 'Mars/Olympus'")


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
