"""The server's drain (server/drain.py): after SIGTERM, readiness 503 at once, everything else served, then a stop."""

import http.client as httpclient
import json
import signal
import socket
import time

from server.core.settings import SERVER_GRACE_SECONDS
from tests.apiclient import AUTH, Gunicorn, http, wait_for
from tests.test_api_stream import SSEClient
from tests.test_multi_instance import addon_zip

DRAIN = 3


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    return http(url + path, headers=headers, timeout=5)


def test_sigterm_turns_readiness_503_and_serves_through_the_drain(env):
    server = Gunicorn(dict(env, AYON_DRAIN_SECONDS=str(DRAIN)))
    try:
        server.wait_ready()
        assert get(server.url, "/health/ready")[0] == 200
        stream = SSEClient(server.url, "/api/events/stream")
        wait_for(lambda: "connected" in stream.comments, 10, "the event stream to start")
        host, port = server.url.removeprefix("http://").split(":")
        kept = httpclient.HTTPConnection(host, int(port), timeout=5)  # a kept-alive client from before
        kept.request("GET", "/api/info")
        assert kept.getresponse().read() and kept.sock is not None

        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: get(server.url, "/health/ready")[0] == 503, 1, "/health/ready to answer 503 within 1 s")
        turned = time.monotonic() - signalled
        status, body, _ = get(server.url, "/health/ready")
        assert status == 503 and json.loads(body)["status"] == "draining", body
        assert "AYON_DRAIN_SECONDS" in json.loads(body)["reason"]
        assert get(server.url, "/health/live")[0] == 200

        # The kept-alive connection is still served, and told to reconnect (elsewhere).
        kept.request("GET", "/api/info")
        answer = kept.getresponse()
        assert answer.status == 200 and answer.getheader("Connection") == "close"
        answer.read()
        kept.close()

        # Requests keep answering 200 until the drain period is nearly over.
        served = 0
        while time.monotonic() - signalled < DRAIN - 0.5:
            status, body, headers = get(server.url, "/api/events", AUTH)
            assert status == 200, (status, body, server.output())
            assert headers.get("connection") == "close"
            served += 1
        assert served > 3 and server.proc.poll() is None
        assert not stream.closed.is_set()  # streams run through the drain, and end at the stop

        # A request in flight when the drain ends: its headers before, its body once nothing listens.
        late = socket.create_connection((host, int(port)), timeout=15)
        package = addon_zip("drained", "1.0.0")
        late.sendall(f"POST /api/addons HTTP/1.1\r\nHost: test\r\nAuthorization: {AUTH['Authorization']}\r\n"
                     f"Content-Type: application/zip\r\nContent-Length: {len(package)}\r\n\r\n".encode())
        wait_for(lambda: get(server.url, "/health/live")[0] == 0, DRAIN + 2, "new connections to be refused")
        assert server.proc.poll() is None
        late.sendall(package)
        answer = b""
        while chunk := late.recv(65536):
            answer += chunk
        late.close()
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:500]
        assert b"connection: close" in answer.lower()

        # Then the stop: the open stream does not hold the graceful timeout.
        code = server.proc.wait(DRAIN + SERVER_GRACE_SECONDS)
        took = time.monotonic() - signalled
        assert code == 0, server.output()
        assert DRAIN - 0.5 <= took < DRAIN + 6, f"exited {took:.1f} s after SIGTERM (drain {DRAIN} s)"
        assert stream.closed.wait(5)
        print(f"readiness 503 after {turned * 1000:.0f} ms; {served} requests served while draining; "
              f"exited after {took:.1f} s")
    finally:
        server.stop()
        server.reader.join(5)


def test_no_drain_stops_at_once(env):
    server = Gunicorn(dict(env, AYON_DRAIN_SECONDS="0"))
    try:
        server.wait_ready()
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.proc.wait(SERVER_GRACE_SECONDS) == 0, server.output()
        assert time.monotonic() - started < 3
        assert "Draining" not in server.output()
    finally:
        server.stop()
        server.reader.join(5)
