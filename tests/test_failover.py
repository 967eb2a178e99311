"""Failover without loss: kill -9 the primary under load, promote the standby, lose nothing.

The instance (gunicorn, the real log collector and a program logging into its
spool) is given libpq's multi-host URL with target_session_attrs=read-write,
so it finds the new primary by itself. The pair replicates synchronously
(synchronous_standby_names): a commit the API acknowledged is on the standby.
"""

import http.client as httpclient
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from server.core import db, migrations
from tests.apiclient import AUTH, TOKEN, Gunicorn, http, wait_for
from tests.conftest import ROOT
from tests.fleet import Standby
from tests.pg import EmbeddedPostgres, free_port
from tests.test_logcollector import PRODUCER

RECORDS, RATE = 1500, 150  # log records the program writes while the primary dies, and per second
TOPIC = "action.failover"


class Subscriber:
    """An SSE client that reconnects with Last-Event-ID whenever its stream ends, as a browser does."""

    def __init__(self, url: str):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.ids: list[str] = []  # the event ids received, in order
        self.last: str | None = None
        self.reconnects = 0
        self.connected = threading.Event()  # a first stream answered 200
        self.stop = threading.Event()
        self.conn: httpclient.HTTPConnection | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.conn = conn = httpclient.HTTPConnection(self.host, self.port, timeout=30)
            try:
                conn.request("GET", f"/api/events/stream?topic={TOPIC}",
                             headers={**AUTH, **({"Last-Event-ID": self.last} if self.last else {})})
                response = conn.getresponse()
                if response.status != 200:
                    response.read()
                    self.stop.wait(0.2)  # 503 during the gap: back after its Retry-After, sooner here
                    continue
                self.connected.set()
                block: dict = {}
                for raw in response:
                    line = raw.decode().rstrip("\n")
                    if line:
                        key, _, value = line.partition(":")
                        block[key] = value.strip()
                    elif "data" in block:
                        self.ids.append(json.loads(block["data"])["id"])
                        self.last = block.get("id", self.last)
                        block = {}
                    if self.stop.is_set():
                        break
            except (OSError, httpclient.HTTPException, ValueError):
                self.stop.wait(0.2)
            finally:
                conn.close()
                self.reconnects += 1

    def drop(self) -> None:
        """End the current stream from this side, as a network blip would: the client reconnects."""
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:  # the reading thread waits on it: end the read now, not at the next heartbeat
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)


@pytest.fixture
def pair(tmp_path):
    """A primary and a synchronous streaming standby, both this test's own (never the suite's server)."""
    root = Path(tempfile.mkdtemp(prefix="ayon-test-failover-"))
    os.chmod(root, 0o755)
    primary = EmbeddedPostgres(root / "data", free_port())
    # Durable commits (synchronous_commit on): each waits for the standby once it is a synchronous one.
    primary.extra = ("-c", "fsync=off", "-c", "full_page_writes=off")
    primary.start()
    standby = None
    try:
        admin = db.connect(primary.url, "ayon-test")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE ayon")
        migrations.migrate(db.with_database(primary.url, "ayon"), say=lambda _: None)
        standby = Standby(primary).start()
        with admin.cursor() as cur:  # after the base backup: the standby, once promoted, waits for no one
            cur.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            cur.execute("SELECT pg_reload_conf()")

        def synchronous():
            with admin.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
                return cur.fetchone()[0] == 1

        wait_for(synchronous, 30, "the standby to replicate synchronously")
        admin.close()
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


def multi_host_url(primary, standby) -> str:
    return (f"postgresql://postgres:{primary.password}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/ayon"
            "?target_session_attrs=read-write")


def test_kill_the_primary_promote_the_standby_nothing_lost(pair, tmp_path):
    primary, standby = pair
    url = multi_host_url(primary, standby)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
    env.update(AYON_POSTGRES_URL=url, AYON_DATA_DIR=str(tmp_path / "data"), AYON_INSTANCE_ID="test",
               AYON_ADMIN_TOKEN=TOKEN, AYON_DB_WAIT_TIMEOUT="30", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    server = Gunicorn(env)
    collector_log = tmp_path / "collector.log"
    collector = producer = in_flight = None
    subscribers: list[Subscriber] = []
    statuses: list[tuple[float, float, str, int, dict]] = []  # (sent, answered, what, status, headers)
    written: list[str] = []  # ids of the events the API acknowledged
    unsure = 0  # writes answered with an error: their transaction may or may not have committed
    stop = threading.Event()

    def writer():
        nonlocal unsure
        n = 0
        while not stop.is_set():
            body = json.dumps({"topic": TOPIC, "payload": {"n": n}}).encode()
            sent = time.monotonic()
            status, text, headers = http(server.url + "/api/actions", "POST",
                                         {**AUTH, "Content-Type": "application/json"}, body, timeout=30)
            statuses.append((sent, time.monotonic(), "POST /api/actions", status, headers))
            if status == 201:
                written.append(json.loads(text)["id"])
            else:
                unsure += 1
                stop.wait(0.1)
            n += 1
            stop.wait(0.02)  # the write load's pace

    def reader():
        while not stop.is_set():
            sent = time.monotonic()
            status, _, headers = http(server.url + "/api/events?limit=5", headers=AUTH, timeout=30)
            statuses.append((sent, time.monotonic(), "GET /api/events", status, headers))
            stop.wait(0.05)  # the read load's pace

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=reader, daemon=True)]
    try:
        server.wait_ready(60)
        collector = subprocess.Popen([sys.executable, "-m", "procs.logcollector"], env=env, cwd=ROOT,
                                     stdout=open(collector_log, "wb"), stderr=subprocess.STDOUT)
        subscribers = [Subscriber(server.url) for _ in range(2)]
        wait_for(lambda: all(s.connected.is_set() for s in subscribers), 10, "the subscribers' streams")
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, "producer", str(RECORDS), str(RATE), "50"],
                                    env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for thread in threads:
            thread.start()
        wait_for(lambda: len(written) >= 20, 30, "events written before the kill")

        # A maintenance run in flight: its task waits for a row lock the test holds on an event it must remove.
        holder = db.connect(db.with_database(primary.url, "ayon"), "ayon-test-holder")
        with holder.cursor() as cur:
            cur.execute("INSERT INTO events (topic, status, updated_at) VALUES ('test.old', 'finished', "
                        "now() - interval '400 days') RETURNING id")
            [old_event] = cur.fetchone()
            holder.commit()
            cur.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (old_event,))
        in_flight = subprocess.Popen([sys.executable, "-m", "maintenance", "--task", "remove_old_events"], env=env,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        watcher = db.connect(db.with_database(primary.url, "ayon"), "ayon-test-watcher")
        watcher.autocommit = True  # pg_stat_activity is read once per transaction

        def run_waits():
            assert in_flight.poll() is None, in_flight.communicate()[0]
            with watcher.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ayon-maintenance%%' "
                            "AND wait_event_type = 'Lock'")
                return cur.fetchone()[0] == 1

        wait_for(run_waits, 30, "the maintenance run to wait on the row lock")

        # The primary dies as its machine would: the postmaster and every backend at once.
        tree = [psutil.Process(primary.proc.pid), *psutil.Process(primary.proc.pid).children(recursive=True)]
        killed = time.monotonic()
        for proc in tree:
            proc.send_signal(signal.SIGKILL)
        primary.proc.wait(10)
        subscribers[1].drop()  # this one reconnects with Last-Event-ID, in the gap; the other's stream stays
        before = len(written)
        standby.promote()

        def good_after_kill():  # answered 200 to a request sent after the kill (none in flight before it)
            return [done for sent, done, what, status, _ in list(statuses)
                    if sent > killed and status == 200 and what.startswith("GET")]

        wait_for(good_after_kill, 60, "a good answer from the new primary")
        recovery = min(good_after_kill()) - killed
        print(f"\nfailover: kill -9 of the primary to the first good answer: {recovery:.2f} s "
              f"(promotion included)")
        wait_for(lambda: len(written) >= before + 20, 60, "events written after the promotion")
        assert producer.wait(60) == 0, producer.stderr.read()
        stop.set()
        for thread in threads:
            thread.join(40)

        new = db.Database(db.with_database(standby.url, "ayon"), size=1, application_name="ayon-test")

        # The run in flight ends (its database went away) and is recorded as interrupted; the next one runs.
        first_output = in_flight.communicate(timeout=90)[0]
        again = subprocess.run([sys.executable, "-m", "maintenance", "--task", "remove_old_events"], env=env,
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        runs = new.fetchall("SELECT status, description FROM events WHERE topic = 'server.maintenance' "
                            "ORDER BY created_at")
        print(f"maintenance in flight exited {in_flight.returncode}: {first_output[-600:]}\n"
              f"next: {again.returncode} {again.stdout[-600:]} {again.stderr[-600:]}\nruns: {runs}")
        assert in_flight.returncode == 1 and "Error: the database connection was lost during the run" in first_output
        assert "Traceback" not in first_output, first_output
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(runs) == 2, runs
        assert runs[0][0] == "failed" and "interrupted" in runs[0][1], runs
        assert runs[1][0] == "finished", runs
        assert new.fetchone("SELECT count(*) FROM events WHERE id = %s", (old_event,)) == (0,)

        def stored_records():
            return new.fetchall("SELECT (extras->>'n')::int, count(*) FROM logs WHERE program = 'producer' "
                                "GROUP BY 1")

        wait_for(lambda: len(stored_records()) >= RECORDS, 60, "every log record in the new primary")
        assert dict(stored_records()) == {n: 1 for n in range(RECORDS)}  # none lost, none twice

        stored = [str(row[0]) for row in new.fetchall(
            "SELECT id FROM events WHERE topic = %s ORDER BY updated_at, id", (TOPIC,))]
        assert set(written) <= set(stored)  # every acknowledged write survived the failover
        assert len(stored) - len(written) <= unsure
        for subscriber in subscribers:
            wait_for(lambda s=subscriber: len(s.ids) >= len(stored), 30, "every event on every stream")
            assert subscriber.ids == stored  # each once, in order, across the gap
        assert subscribers[1].reconnects >= 1
        new.close()

        failed = [(what, status) for _, _, what, status, _ in statuses if status not in (200, 201)]
        assert failed, "the test never saw the gap"
        assert all(status == 503 for _, status in failed), failed  # never a 500, never a hang
        print(f"failover: {len(failed)} answers 503 with Retry-After in the gap, {unsure} writes unsure, "
              f"stream reconnects {[s.reconnects for s in subscribers]}")
        assert all(headers.get("retry-after") for _, _, _, status, headers in statuses if status == 503)
        assert server.proc.poll() is None  # recovered without a restart
        assert collector.poll() is None
    finally:
        stop.set()
        for subscriber in subscribers:
            subscriber.close()
        for proc in (producer, collector, in_flight):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        server.stop()


def test_a_multi_host_url_is_accepted_and_masked():
    from server.core import settings, urls

    url = "postgresql://ayon:s3cret@db-a:5432,db-b:5433/ayon?target_session_attrs=read-write"
    values = settings.load({"AYON_POSTGRES_URL": url, "AYON_ADMIN_TOKEN": "x" * 32})
    assert values.postgres_url == url
    assert db.host_port(url) == "db-a:5432,db-b:5433"
    assert db.with_database(url, "postgres").startswith("postgresql://ayon:s3cret@db-a:5432,db-b:5433/postgres?")
    assert "s3cret" not in urls.masked(url) and "db-b:5433" in urls.masked(url)
    for bad, reason in (("postgresql://u@a:1,b:x/db", "port='x'"), ("postgresql://u@a:1,b:1/db?target_session_attrs=rw",
                                                                    "target_session_attrs='rw'")):
        with pytest.raises(Exception, match=reason):
            settings.load({"AYON_POSTGRES_URL": bad, "AYON_ADMIN_TOKEN": "x" * 32})
