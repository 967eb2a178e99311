"""GET /api/events/stream: live events over SSE, topic filter, Last-Event-ID replay, heartbeats, shutdown."""

import asyncio
import http.client
import json
import socket
import threading
import time

import falcon.testing

from server.api import stream as stream_mod
from server.core import db, events
from tests.apiclient import AUTH, assert_error, client, gunicorn, make_app, wait_for  # noqa: F401


class SSEClient:
    """A plain HTTP/1.1 reader of one event stream, on its own thread."""

    def __init__(self, url: str, path: str, headers: dict | None = None):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.request("GET", path, headers={**AUTH, **(headers or {})})
        self.response = self.conn.getresponse()
        self.messages: list[dict] = []
        self.comments: list[str] = []
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        block: dict = {}
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in block:
                        self.messages.append(block)
                    block = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    key, _, value = line.partition(":")
                    block[key] = value.strip()
        except (OSError, AttributeError, http.client.HTTPException):
            pass  # closed by the test (http.client drops its file) or by the server
        self.closed.set()

    def data(self) -> list[dict]:
        return [json.loads(m["data"]) for m in self.messages]

    def close(self) -> None:
        # Shut the socket first: the reading thread holds the response's lock until its read returns.
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.closed.wait(5)
        self.conn.close()


def test_live_events_filter_and_resume(gunicorn, database):
    everything = SSEClient(gunicorn.url, "/api/events/stream")
    maintenance = SSEClient(gunicorn.url, "/api/events/stream?topic=server.maintenance,test.exact")
    try:
        assert everything.response.status == 200
        assert everything.response.getheader("Content-Type").startswith("text/event-stream")
        wait_for(lambda: "connected" in everything.comments and "connected" in maintenance.comments, 10,
                 "both streams to start")
        run = events.dispatch(database, "server.maintenance", status="in_progress", description="task 1/2: a")
        events.dispatch(database, "action.render")
        events.update(database, run, description="task 2/2: b")
        events.update(database, run, status="finished")
        events.dispatch(database, "test.exact.not")
        wait_for(lambda: len(everything.messages) == 5, 10, "five messages on the unfiltered stream")
        wait_for(lambda: len(maintenance.messages) == 3, 10, "three messages on the filtered stream")
        got = maintenance.data()
        assert [(m["id"], m["status"], m["description"]) for m in got] == [
            (run, "in_progress", "task 1/2: a"), (run, "in_progress", "task 2/2: b"), (run, "finished", "task 2/2: b")]
        assert got[0]["topic"] == "server.maintenance" and got[0]["updated_at"].endswith("Z")
        assert [m["topic"] for m in everything.data()][1] == "action.render"
        first_id = maintenance.messages[0]["id"]
    finally:
        everything.close()
        maintenance.close()
    # Missed while disconnected: replayed from the Last-Event-ID, then live again.
    late = events.dispatch(database, "server.maintenance", status="pending", description="missed")
    resumed = SSEClient(gunicorn.url, "/api/events/stream?topic=server.*", headers={"Last-Event-ID": first_id})
    try:
        wait_for(lambda: len(resumed.messages) >= 2, 10, "the replay")
        # after the first message: the run's later changes (its latest state) and the missed event
        assert [(m["id"], m["status"]) for m in resumed.data()] == [(run, "finished"), (late, "pending")]
        events.dispatch(database, "server.after", description="live")
        wait_for(lambda: resumed.data()[-1]["description"] == "live", 10, "a live event after the replay")
    finally:
        resumed.close()


def test_open_streams_do_not_hold_the_shutdown(gunicorn):
    streams = [SSEClient(gunicorn.url, "/api/events/stream") for _ in range(4)]
    wait_for(lambda: all("connected" in s.comments for s in streams), 10, "the streams to start")
    started = time.monotonic()
    code = gunicorn.stop(timeout=15)
    took = time.monotonic() - started
    assert code == 0, gunicorn.output()
    assert took < 5, f"gunicorn took {took:.1f} s to stop with open streams"
    assert all(s.closed.wait(5) for s in streams)


def test_errors(client):
    assert_error(client.simulate_get("/api/events/stream", headers={"Authorization": ""}), 401)
    assert_error(client.simulate_get("/api/events/stream", params={"topic": "a*b"}), 400, "'topic'")
    assert_error(client.simulate_get("/api/events/stream", params={"since": "x"}), 400, "'since'")
    assert_error(client.simulate_get("/api/events/stream", headers={"Last-Event-ID": "garbage"}), 400,
                 "Last-Event-ID")


def test_heartbeat_comments_and_resync_after_losing_listen(database_url, database, monkeypatch):
    monkeypatch.setattr(stream_mod, "HEARTBEAT_SECONDS", 0.2)
    app = make_app(database_url)

    async def scenario():
        async with falcon.testing.ASGIConductor(app, headers=AUTH) as conductor:
            async with conductor.simulate_get_stream("/api/events/stream") as sse:
                text = ""

                async def until(words, what):
                    nonlocal text
                    deadline = time.monotonic() + 10
                    while words not in text:
                        assert time.monotonic() < deadline, f"timed out waiting for {what}: {text!r}"
                        text += (await asyncio.wait_for(sse.stream.read(), 10)).decode()

                await until(": connected", "the stream to start")
                await until(": keepalive", "a heartbeat comment")
                # The LISTEN connection dies (a PostgreSQL restart): what happens meanwhile is replayed.
                await asyncio.to_thread(database.execute,
                                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE application_name = 'ayon-stream'")
                missed = await asyncio.to_thread(events.dispatch, database, "test.missed", description="during")
                await until(missed, "the event dispatched while LISTEN was down")

    asyncio.run(scenario())




def test_a_replay_whose_read_fails_is_read_again(gunicorn, database, database_url):
    # The replay of a resumed stream reads the table; when that read fails (a failover ends its
    # connection mid-query), it is read again on a fresh connection, and nothing is skipped.
    first = SSEClient(gunicorn.url, "/api/events/stream?topic=test.replay")
    try:
        wait_for(lambda: "connected" in first.comments, 10, "the stream to start")
        events.dispatch(database, "test.replay", description="seen")
        wait_for(lambda: first.messages, 10, "the first event")
        seen_id = first.messages[0]["id"]
    finally:
        first.close()
    missed = [events.dispatch(database, "test.replay", description=f"missed {n}") for n in range(3)]
    holder = db.connect(database_url, "ayon-test-holder")
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # the replay's read waits on it
        resumed = SSEClient(gunicorn.url, "/api/events/stream?topic=test.replay", headers={"Last-Event-ID": seen_id})
        try:
            waiting = wait_for(lambda: database.fetchall(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'ayon-server' AND wait_event_type = 'Lock'"),
                10, "the replay's read to wait on the lock")
            assert "connected" in resumed.comments and not resumed.messages
            database.fetchall("SELECT pg_terminate_backend(%s)", (waiting[0][0],))  # its connection ends mid-read
            holder.rollback()
            wait_for(lambda: len(resumed.messages) >= 3 or resumed.closed.is_set(), 15, "the replay")
            assert [m["id"] for m in resumed.data()] == missed, resumed.data()
        finally:
            resumed.close()
    finally:
        holder.close()
