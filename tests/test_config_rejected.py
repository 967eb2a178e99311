"""A stored configuration value a program cannot use never stops it: last good value, an error, an event.

Values written around the API (straight into `server_config`, as with psql) are
refused by the same validators; each daemon keeps what it had, logs the error,
records one `server.config_rejected` event and stays up.
"""

import pytest

from server.core import config, events, webactions
from tests.apiclient import wait_for
from tests.instance import Instance
from tests.test_maintenance_daemon import store_directly
from tests.test_webactions import Program


def rejected(database, program: str) -> list[dict]:
    return [e for e in events.query(database, topic=events.CONFIG_REJECTED, limit=100)
            if e["summary"].get("program") == program]


def test_webactions_keeps_its_last_good_timings(env, database, tmp_path):
    env["AYON_LOG_LEVEL"] = "debug"
    with database.transaction() as cur:
        config.update(cur, {"webactions": {"timeout": 2, "check_interval": 1}}, "test")
    program = Program("procs.webactions", env, tmp_path / "web.log")
    try:
        wait_for(lambda: "no timed-out webactions (timeout 2 s)" in program.output(), 30,
                 lambda: "the first check:\n" + program.output())
        # 0 would make the check loop spin; text would not even be a number.
        store_directly(database, ["webactions"], {"timeout": "soon", "check_interval": 0})
        found = wait_for(lambda: len(rejected(database, "webactions")) == 2 and rejected(database, "webactions"), 10,
                         lambda: "two rejections:\n" + program.output())
        assert {(e["summary"]["key"], e["summary"]["kept"]) for e in found} == {
            ("webactions.timeout", 2), ("webactions.check_interval", 1)}
        assert "cannot use the stored webactions.check_interval = 0 (expected a number from 1 to 86400, got 0); " \
               "it keeps 1" in program.output()
        # It goes on checking with its last good values: an action still times out after 2 s.
        action = webactions.create(database, "action.publish", {})
        failed = wait_for(lambda: events.get(database, action["id"])["status"] == "failed"
                          and events.get(database, action["id"]), 20, "the action to time out")
        assert failed["description"] == "timed out: still pending after 2 s (webactions.timeout)"
        assert program.alive()
        assert len(rejected(database, "webactions")) == 2  # each refused value is reported once
    finally:
        assert program.stop() == 0, program.output()


def test_installer_keeps_its_last_good_settings(env, database, tmp_path):
    program = Program("procs.installer", {**env, "AYON_DATA_DIR": str(tmp_path / "data")}, tmp_path / "inst.log")
    try:
        wait_for(lambda: "installer started" in program.output(), 30, lambda: "the installer:\n" + program.output())
        store_directly(database, ["installer", "max_attempts"], None)
        store_directly(database, ["installer", "poll_interval"], 1.5)
        found = wait_for(lambda: len(rejected(database, "installer")) == 2 and rejected(database, "installer"), 90,
                         lambda: "two rejections:\n" + program.output())
        assert {(e["summary"]["key"], e["summary"]["kept"]) for e in found} == {
            ("installer.max_attempts", 5), ("installer.poll_interval", 60)}
        assert program.alive()
    finally:
        assert program.stop() == 0, program.output()


@pytest.fixture
def instances():
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.kill()


def test_a_stored_factory_timezone_leaves_the_instance_up(env, database, tmp_path, instances):
    """Under supervisord: the maintenance daemon stays RUNNING (same process) on its last good schedule."""
    with database.transaction() as cur:
        config.update(cur, {"maintenance": {"time": "04:17", "timezone": "Europe/Prague"}}, "test")
    instance = Instance(env, tmp_path / "node", AYON_RUN_SERVER="false", AYON_RUN_SETUP="false").start()
    instances.append(instance)
    instance.wait_running({"maintenance", "logcollector"})
    wait_for(lambda: "(04:17 Europe/Prague)" in instance.output, 30, lambda: "the schedule:\n" + instance.output)
    pid = instance.pid_of("maintenance")

    store_directly(database, ["maintenance", "timezone"], "Factory")
    [event] = wait_for(lambda: rejected(database, "maintenance"), 15, lambda: "the event:\n" + instance.output)
    assert event["description"] == ("test/maintenance cannot use the stored maintenance.timezone = 'Factory' "
                                    "(unknown time zone 'Factory'); it keeps 'Europe/Prague'")
    store_directly(database, ["maintenance", "time"], "05:45")
    wait_for(lambda: "(05:45 Europe/Prague)" in instance.output, 15, lambda: "the new time:\n" + instance.output)
    assert instance.status().get("maintenance") == "RUNNING"
    assert instance.pid_of("maintenance") == pid  # never restarted
    assert instance.proc.poll() is None
    assert instance.stop() == 0, instance.output[-3000:]
