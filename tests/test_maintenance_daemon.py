"""`python -m maintenance --daemon` run for real: one run fleet-wide, requests, rescheduling, signals."""

import datetime
import json
import re
import signal
import subprocess
import threading
import time

import pytest

from server.api.maintenance import request_run
from server.core import config, events, times
from tests.apiclient import wait_for as poll
from tests.conftest import ROOT
from tests.test_maintenance import (
    command,
    runs,
    set_config,
    start_cli,
    wait_for_task,
    write_task,
)

LEAD = 6.0  # seconds of real time between a daemon's start and its (shifted) due minute


class DaemonProcess:
    """A daemon subprocess whose output lines are collected as they come."""

    def __init__(self, env, offset=0.0, extra=""):
        self.proc = subprocess.Popen(command("--daemon", extra=extra, offset=offset), env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern, timeout=20, start=0):
        found = poll(lambda: next((m for line in self.lines[start:] if (m := re.search(pattern, line))), None)
                     or (self.proc.poll() is not None and pytest.fail("\n".join(self.lines))), timeout,
                     f"{pattern!r} in the daemon's output:\n" + "\n".join(self.lines))
        return found

    def terminate(self, within=10.0) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(within + 5)
        finally:
            self.proc.kill()
        self.reader.join(5)
        return time.monotonic() - started


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.proc.kill()
        daemon.proc.wait(10)


def test_three_daemons_due_the_same_minute_make_one_run(env, database, daemons):
    now = time.time()
    due = (int(now // 60) + 1) * 60  # a minute boundary the shifted clocks reach LEAD seconds from now
    offset = due - (now + LEAD)
    due_hhmm = datetime.datetime.fromtimestamp(due, datetime.timezone.utc).strftime("%H:%M")
    set_config(database, {"maintenance": {"time": due_hhmm, "timezone": "UTC"}})
    daemons += [DaemonProcess(env, offset) for _ in range(3)]
    for daemon in daemons:
        daemon.wait_for(rf"next maintenance run at \S+ {due_hhmm} UTC \({due_hhmm} UTC\)")
    for daemon in daemons:
        daemon.wait_for(r"maintenance finished|already happened|another maintenance run is in progress",
                        timeout=LEAD + 20)
    [run] = runs(database)
    assert run["status"] == "finished" and run["payload"]["trigger"] == "schedule"
    slot = datetime.datetime.fromtimestamp(due, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    assert run["payload"]["slot"] == slot
    heartbeats = database.fetchall("SELECT program FROM instances WHERE program = 'maintenance'")
    assert heartbeats == [("maintenance",)]  # same instance id: one row, kept fresh by each

    # A request (what POST /api/maintenance/run stores) is taken within 2 s.
    request_id, created = request_run(database, ["vacuum"])
    asked = time.monotonic()
    taken = poll(lambda: events.get(database, request_id)["status"] != "pending" and time.monotonic(), 10,
                 "a daemon to take the request")
    assert taken - asked < 2.0
    done = poll(lambda: (e := events.get(database, request_id))["status"] in ("finished", "failed") and e, 20,
                "the requested run to end")
    assert done["status"] == "finished", done
    by_request = events.get(database, done["summary"]["run_event_id"])
    assert by_request["payload"]["trigger"] == "request" and by_request["payload"]["tasks"] == ["vacuum"]
    assert len(runs(database)) == 2

    # A new time through the configuration moves every daemon's next run, without a restart.
    marks = [len(d.lines) for d in daemons]
    set_config(database, {"maintenance": {"time": "04:17", "timezone": "Europe/Prague"}})
    for daemon, mark in zip(daemons, marks, strict=True):
        daemon.wait_for(r"next maintenance run at \S+ \d\d:17 UTC \(04:17 Europe/Prague\)", start=mark)

    for daemon in daemons:
        assert daemon.terminate() < 10
        assert daemon.proc.returncode == 0, "\n".join(daemon.lines)
        assert "maintenance stopping on SIGTERM" in daemon.lines[-1]


def test_daemon_recovers_orphans_only_when_the_lock_is_free_and_stops_mid_run(env, database, daemons, tmp_path):
    slow = write_task(tmp_path / "tasks", "slow_query", """
        def run(ctx):
            with ctx.db.transaction() as cur:
                cur.execute("SELECT pg_sleep(60)")
    """, order=15)
    cli = start_cli(env, extra=slow)
    try:
        live = wait_for_task(database, "slow_query")
        daemons.append(DaemonProcess(env, extra=slow))
        daemons[0].wait_for(r"maintenance started")
        assert events.get(database, live["id"])["status"] == "in_progress"  # a live run elsewhere is not touched
        cli.kill()
        cli.wait(10)
    finally:
        cli.kill()
    assert daemons[0].terminate() < 10
    daemons.append(DaemonProcess(env, extra=slow))
    daemons[1].wait_for(rf"marked the interrupted run {live['id']} failed")
    assert events.get(database, live["id"])["status"] == "failed"

    request_id, _ = request_run(database, ["slow_query"])
    running = poll(lambda: next((r for r in runs(database) if r["id"] != live["id"]
                                 and ": slow_query — " in r["description"]), None), 10, "the requested run")
    took = daemons[1].terminate()
    assert took < 10 and daemons[1].proc.returncode == 0, "\n".join(daemons[1].lines)
    aborted = events.get(database, running["id"])
    assert aborted["status"] == "aborted" and aborted["description"] == "interrupted by shutdown"
    request = events.get(database, request_id)
    assert request["status"] == "failed" and request["summary"]["status"] == "aborted"


def store_directly(database, path: list[str], value) -> None:
    """Write one value into the stored configuration around the API, as an operator with psql could."""
    with database.transaction() as cur:
        config.seed(cur)
    database.execute("UPDATE server_config SET data = jsonb_set(data, %s, %s::jsonb), updated_at = now() WHERE id = 1",
                     (path, json.dumps(value)))


def rejected(database) -> list[dict]:
    return events.query(database, topic="server.config_rejected", limit=100)


def heartbeat_next_run(database):
    row = database.fetchone("SELECT info->>'next_run' FROM instances WHERE program = 'maintenance'")
    return row and row[0]


def test_a_stored_timezone_it_cannot_use_keeps_the_last_good_schedule(env, database, daemons):
    set_config(database, {"maintenance": {"time": "04:17", "timezone": "Europe/Prague"}})
    daemons.append(DaemonProcess(env))
    daemon = daemons[0]
    daemon.wait_for(r"next maintenance run at \S+ \d\d:17 UTC \(04:17 Europe/Prague\)")
    due = poll(lambda: heartbeat_next_run(database), 15, "the heartbeat's next run")

    mark = len(daemon.lines)
    store_directly(database, ["maintenance", "timezone"], "Factory")
    [event] = poll(lambda: rejected(database), 10, "a server.config_rejected event")
    assert event["status"] == "failed"
    assert event["summary"] == {"key": "maintenance.timezone", "value": "Factory", "error": "unknown time zone 'Factory'",
                                "kept": "Europe/Prague", "instance": "test", "program": "maintenance"}
    assert event["description"] == ("test/maintenance cannot use the stored maintenance.timezone = 'Factory' "
                                    "(unknown time zone 'Factory'); it keeps 'Europe/Prague'")
    daemon.wait_for(re.escape(event["description"]), start=mark)

    # Still running on the last good schedule; a good change beside the bad value is taken.
    store_directly(database, ["maintenance", "time"], "05:45")
    daemon.wait_for(r"next maintenance run at \S+ \d\d:45 UTC \(05:45 Europe/Prague\)", start=mark)
    assert daemon.proc.poll() is None
    poll(lambda: heartbeat_next_run(database) not in (None, due), 15, "the heartbeat to show the new due time")
    # A run on request reads the configuration too: it runs with the last good values, reported once.
    request_id, _ = request_run(database, ["vacuum"])
    done = poll(lambda: (e := events.get(database, request_id))["status"] in ("finished", "failed") and e, 30,
                "the requested run to end")
    assert done["status"] == "finished", done
    assert len(rejected(database)) == 1

    mark = len(daemon.lines)
    store_directly(database, ["maintenance", "timezone"], "Europe/Berlin")
    daemon.wait_for(r"configuration maintenance.timezone is usable again", start=mark)
    daemon.wait_for(r"next maintenance run at \S+ \d\d:45 UTC \(05:45 Europe/Berlin\)", start=mark)
    assert daemon.terminate() < 10 and daemon.proc.returncode == 0, "\n".join(daemon.lines)


def test_a_bad_stored_value_at_start_uses_the_default(env, database, daemons):
    store_directly(database, ["maintenance"], {"time": 300, "timezone": "localtime", "tasks": "none"})
    daemons.append(DaemonProcess(env))
    daemon = daemons[0]
    daemon.wait_for(r"next maintenance run at \S+ 03:00 UTC \(03:00 UTC\)")
    found = poll(lambda: len(rejected(database)) == 3 and rejected(database), 10, "three rejection events")
    assert sorted(e["summary"]["key"] for e in found) == ["maintenance.tasks", "maintenance.time",
                                                         "maintenance.timezone"]
    assert daemon.proc.poll() is None
    assert daemon.terminate() < 10 and daemon.proc.returncode == 0, "\n".join(daemon.lines)


def test_a_missed_day_is_caught_up_once_fleet_wide_and_not_again_after_a_restart(env, database, daemons):
    # The daily slot passed two hours ago with no daemon running; the last finished run ended two days ago.
    moment = datetime.datetime.now(datetime.timezone.utc)
    at = (moment - datetime.timedelta(hours=2)).strftime("%H:%M")
    set_config(database, {"maintenance": {"time": at, "timezone": "UTC"}})
    # (updated_at is set by a trigger on UPDATE: an old run is inserted as old.)
    database.execute("INSERT INTO events (topic, status, description, payload, created_at, updated_at) VALUES "
                     "('server.maintenance', 'finished', 'an old run', '{\"trigger\": \"schedule\"}', "
                     "now() - interval '2 days', now() - interval '2 days')")
    slot = times.previous_run(moment, at, "UTC").strftime("%Y-%m-%dT%H:%MZ")

    daemons += [DaemonProcess(env) for _ in range(3)]
    decided = r"catching up: the last finished run ended|no catch-up"
    ended = (r"maintenance finished|already happened|another maintenance run is in progress|"
             r"has had its run|no catch-up needed")
    for daemon in daemons:
        daemon.wait_for(decided, timeout=30)
        daemon.wait_for(ended, timeout=60)
    caught_up = [r for r in runs(database) if r["payload"].get("trigger") == "catch-up"]
    assert len(caught_up) == 1, caught_up
    assert caught_up[0]["status"] == "finished" and caught_up[0]["payload"]["slot"] == slot
    assert len(runs(database)) == 2

    # Restarted the same day, none of them runs again.
    for daemon in daemons:
        assert daemon.terminate() < 10
    daemons.clear()
    daemons += [DaemonProcess(env) for _ in range(3)]
    for daemon in daemons:
        daemon.wait_for(r"no catch-up needed: the last finished run ended at \S+Z", timeout=30)
    assert len(runs(database)) == 2


def test_no_catch_up_when_the_scheduled_run_is_near_or_catch_up_is_off(env, database, daemons):
    moment = datetime.datetime.now(datetime.timezone.utc)
    soon = (moment + datetime.timedelta(minutes=30)).strftime("%H:%M")
    set_config(database, {"maintenance": {"time": soon, "timezone": "UTC"}})
    database.execute("INSERT INTO events (topic, status, description, updated_at) VALUES "
                     "('server.maintenance', 'finished', 'an old run', now() - interval '3 days')")
    daemons.append(DaemonProcess(env))
    daemons[0].wait_for(r"no catch-up: the last finished run ended at \S+, and the next run is due within 1:00:00")
    daemons[0].terminate()

    set_config(database, {"maintenance": {"catch_up": False, "time": (moment - datetime.timedelta(hours=3))
                                          .strftime("%H:%M")}})
    daemons.append(DaemonProcess(env))
    daemons[1].wait_for(r"no catch-up: maintenance\.catch_up is false")
    assert not any("catching up" in line for line in daemons[1].lines)
    assert len(runs(database)) == 1
