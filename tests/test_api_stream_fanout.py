"""GET /api/events/stream at scale, on a real gunicorn: one encoding per message per worker, slow readers dropped."""

import re
import socket
import time

from server.core import events
from tests.apiclient import AUTH, http, running_gunicorn, wait_for
from tests.test_api_stream import SSEClient


def one_worker(env: dict):
    """gunicorn with one worker: every stream on the same broker."""
    return running_gunicorn(env, workers=1)


def metric(url: str, name: str) -> float:
    status, body, _ = http(url + "/metrics")
    assert status == 200
    found = re.search(rf"^{name} ([0-9.e+]+)$", body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def test_each_message_is_encoded_once_per_worker(env, database):
    with one_worker(env) as server:
        same = [SSEClient(server.url, "/api/events/stream?topic=test.fan.*") for _ in range(5)]
        other = [SSEClient(server.url, "/api/events/stream?topic=test.fan.a,test.fan.b"),
                 SSEClient(server.url, "/api/events/stream?topic=test.elsewhere")]
        streams = same + other
        try:
            wait_for(lambda: all("connected" in s.comments for s in streams), 10, "the streams to start")
            encoded = metric(server.url, "ayon_stream_messages_encoded_total")
            sent = metric(server.url, "ayon_stream_messages_sent_total")
            since = database.fetchone("SELECT clock_timestamp()")[0]
            for topic in ("test.fan.a", "test.fan.c", "test.fan.a", "test.none"):
                events.dispatch(database, topic, description="x" * 300)
            wait_for(lambda: all(len(s.messages) == 3 for s in same) and len(other[0].messages) == 2, 10,
                     "every stream's messages")
            # One encoding per notification (ours, and any the server sent meanwhile), whatever the
            # number of streams; 5 x 3 + 2 written.
            def notified():
                return database.fetchone("SELECT count(*) FROM events WHERE updated_at >= %s", (since,))[0]

            wait_for(lambda: metric(server.url, "ayon_stream_messages_encoded_total") - encoded == notified(), 10,
                     lambda: f"{notified()} encodings counted, not "
                             f"{metric(server.url, 'ayon_stream_messages_encoded_total') - encoded}")
            assert notified() >= 4
            assert metric(server.url, "ayon_stream_messages_sent_total") - sent == 17
            assert same[0].messages == same[4].messages  # the same bytes
            assert other[1].messages == []
        finally:
            for s in streams:
                s.close()


def test_a_reader_that_does_not_read_is_dropped_and_the_others_keep_up(env, database):
    settings = {**env, "AYON_STREAM_SUBSCRIBER_BUFFER": "8K"}
    with one_worker(settings) as server:
        host, port = server.url.removeprefix("http://").split(":")
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((host, int(port)))
        slow.sendall(f"GET /api/events/stream?topic=test.* HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: {AUTH['Authorization']}\r\n\r\n".encode())
        slow.settimeout(10)
        head = b""
        while b": connected" not in head:
            head += slow.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        reader = SSEClient(server.url, "/api/events/stream?topic=test.*")
        try:
            wait_for(lambda: "connected" in reader.comments, 10, "the reading stream to start")
            # 1 KiB messages until the worker gives up on the one that reads nothing.
            sent = 0
            deadline = time.monotonic() + 30
            while not any("disconnected a subscriber that is not reading" in line for line in server.lines):
                assert time.monotonic() < deadline, server.output()
                events.dispatch(database, "test.bulk", description="y" * 1000)
                sent += 1
                time.sleep(0.005)
            wait_for(lambda: len(reader.messages) == sent, 10, f"all {sent} messages on the reading stream")
            assert "AYON_STREAM_SUBSCRIBER_BUFFER=8192" in server.output()
            assert metric(server.url, "ayon_stream_subscribers_dropped_total") == 1
            # What the kernel held is still readable; then the connection is gone.
            slow.settimeout(5)
            with_data = 0
            try:
                while chunk := slow.recv(65536):
                    with_data += len(chunk)
            except ConnectionResetError:
                pass
            assert with_data < sent * 1100, "the slow reader was sent everything: it was not dropped in time"
        finally:
            reader.close()
            slow.close()


def test_a_worker_full_of_streams_answers_503(env):
    with one_worker({**env, "AYON_STREAM_MAX_SUBSCRIBERS": "2"}) as server:
        streams = [SSEClient(server.url, "/api/events/stream") for _ in range(2)]
        try:
            wait_for(lambda: all("connected" in s.comments for s in streams), 10, "the streams to start")
            status, body, headers = http(server.url + "/api/events/stream", headers=AUTH)
            assert status == 503 and headers.get("retry-after") == "5", body
            assert b"AYON_STREAM_MAX_SUBSCRIBERS" in body
            streams.pop().close()
            wait_for(lambda: http(server.url + "/api/events/stream", headers=AUTH, timeout=1)[0] == 0, 10,
                     "room for a stream again (it opens and stays open)")
        finally:
            for s in streams:
                s.close()
