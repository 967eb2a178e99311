"""Webactions: one winner per take, and real `python -m procs.webactions` invalidators."""

import collections
import re
import signal
import subprocess
import sys
import threading

import pytest

from server.core import config, events, webactions
from server.core.db import Database
from tests.apiclient import wait_for
from tests.conftest import ROOT


class Program:
    """A real program of ours as a subprocess, its output in a file."""

    def __init__(self, module: str, env: dict, log_path):
        self.log_path = log_path
        self.terminated = False
        self.out = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT,
                                     stdout=self.out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM once: a second one during the interpreter's exit would kill it with the default action."""
        if not self.terminated and self.alive():
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.alive():
            self.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)




def make_actions(database, count: int, status: str, age_seconds: int = 0) -> list[str]:
    ids = [webactions.create(database, f"action.test.{i % 3}", {"n": i})["id"] for i in range(count)]
    if status != "pending" or age_seconds:
        database.execute(
            "UPDATE events SET status = %s, created_at = created_at - make_interval(secs => %s) "
            "WHERE id = ANY(%s::uuid[])",
            (status, age_seconds, ids),
        )
    return ids


def test_concurrent_take_has_one_winner(database_url):
    pool = Database(database_url, size=8)
    ids = make_actions(pool, 20, "pending")
    try:
        for action_id in ids:
            barrier, results = threading.Barrier(8), []

            def taker(n):
                barrier.wait()
                try:
                    results.append(webactions.take(pool, action_id, f"worker-{n}")["description"])
                except webactions.ActionError as exc:
                    results.append(exc.status)

            threads = [threading.Thread(target=taker, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            winners = [r for r in results if isinstance(r, str)]
            assert len(winners) == 1 and results.count(409) == 7, results
            assert events.get(pool, action_id)["description"] == winners[0]
    finally:
        pool.close()


def test_transitions_and_their_conflicts(database):
    action = webactions.create(database, "action.render", {"shot": "sh010"})
    assert action["status"] == "pending" and action["payload"] == {"shot": "sh010"}
    with pytest.raises(webactions.ActionError, match="is pending, not in_progress") as caught:
        webactions.finish(database, action["id"])
    assert caught.value.status == 409
    assert webactions.take(database, action["id"], "farm-1")["status"] == "in_progress"
    done = webactions.finish(database, action["id"], summary={"frames": 10})
    assert done["status"] == "finished" and done["summary"] == {"frames": 10}
    with pytest.raises(webactions.ActionError, match="is finished, not pending or in_progress"):
        webactions.fail(database, action["id"])
    other = events.dispatch(database, "server.something")
    with pytest.raises(webactions.ActionError, match=f"no webaction {other}"):
        webactions.take(database, other, "x")
    with pytest.raises(webactions.ActionError, match="must start with 'action.'"):
        webactions.create(database, "server.render", {})


def test_four_invalidators_change_each_action_exactly_once(env, database, database_url, tmp_path):
    env["AYON_LOG_LEVEL"] = "debug"
    old = make_actions(database, 150, "pending", 7200) + make_actions(database, 150, "in_progress", 7200)
    fresh = make_actions(database, 20, "pending")
    finished_old = make_actions(database, 10, "finished", 7200)
    listener = events.Listener(database_url)
    # Hold one timed-out row locked so that all four UPDATEs queue up behind it and then
    # run against each other: real contention, not four checks one after the other.
    holder = Database(database_url, size=1)._checkout()
    with holder.cursor() as cur:
        cur.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (old[-1],))
    programs = []
    try:
        for n in range(4):
            programs.append(Program("procs.webactions", {**env, "AYON_INSTANCE_ID": f"web{n}"},
                                    tmp_path / f"web{n}.log"))

        def all_blocked():
            assert all(p.alive() for p in programs), [p.output() for p in programs]
            row = database.fetchone("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                    "'ayon-webactions' AND wait_event_type = 'Lock'")
            return row[0] == 4

        wait_for(all_blocked, 30, "four invalidators blocked on the same rows")
        holder.commit()

        def all_checked():
            pattern = re.compile(r"marked (\d+) timed-out webactions|no timed-out webactions")
            return all(pattern.search(p.output()) for p in programs)

        wait_for(all_checked, 30, "every invalidator's first check")
        counts = [int(c) for p in programs for c in re.findall(r"marked (\d+) timed-out webactions", p.output())]
        assert sum(counts) == len(old), counts
        changes = collections.Counter()

        def notified_all():
            for _, note in listener.wait(0.2):
                if note["status"] == "failed":
                    changes[note["id"]] += 1
            return len(changes) >= len(old)

        wait_for(notified_all, 20, "a notification for every timed-out action")
        # Every invalidator has committed: a second change of any action would be queued already.
        changes.update(note["id"] for _, note in listener.wait(1.0) if note["status"] == "failed")
        assert set(changes) == set(old)
        assert set(changes.values()) == {1}
        rows = dict(database.fetchall("SELECT id::text, description FROM events WHERE id = ANY(%s::uuid[])", (old,)))
        assert {re.sub(r"still \w+", "still S", d) for d in rows.values()} == {
            "timed out: still S after 3600 s (webactions.timeout)"}
        assert database.fetchone("SELECT count(*) FROM events WHERE id = ANY(%s::uuid[]) AND status = 'pending'",
                                 (fresh,)) == (20,)
        assert database.fetchone("SELECT count(*) FROM events WHERE id = ANY(%s::uuid[]) AND status = 'finished'",
                                 (finished_old,)) == (10,)
    finally:
        holder.close()
        listener.close()
        for program in programs:
            program.terminate()
        assert [p.stop() for p in programs] == [0] * len(programs)


def test_timings_come_from_the_server_configuration(env, database, tmp_path):
    env["AYON_LOG_LEVEL"] = "debug"
    program = Program("procs.webactions", env, tmp_path / "web.log")
    try:
        wait_for(lambda: "no timed-out webactions (timeout 3600 s)" in program.output(), 30, "the first check")
        action = webactions.create(database, "action.publish", {})
        with database.transaction() as cur:
            config.update(cur, {"webactions": {"timeout": 2, "check_interval": 1}}, "test")
        failed = wait_for(lambda: events.get(database, action["id"])["status"] == "failed"
                          and events.get(database, action["id"]), 20, "the action to time out")
        assert failed["description"] == "timed out: still pending after 2 s (webactions.timeout)"
        assert (failed["updated_at"] - failed["created_at"]).total_seconds() >= 2
        # A check every second now, where the default would wait 300 s.
        checks = program.output().count("no timed-out webactions (timeout 2 s)")
        wait_for(lambda: program.output().count("no timed-out webactions (timeout 2 s)") >= checks + 3, 10,
                 "three more checks at the new interval")
    finally:
        assert program.stop() == 0, program.output()
    assert "webactions stopping on SIGTERM" in program.output()
