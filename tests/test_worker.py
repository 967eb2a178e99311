"""The server's worker on a real gunicorn: early answers reach clients still sending; slow headers time out."""

import json
import shutil
import signal
import socket
import subprocess
import time

import psutil
import pytest

from server.worker import BalancedASGIWorker
from tests.apiclient import TOKEN, Gunicorn, gunicorn, http, running_gunicorn, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.serial  # it measures timeouts to a tenth of a second (make test runs it alone)


class QuickWorker(BalancedASGIWorker):
    """The server's worker with timeouts and bounds small enough for a test."""

    header_timeout = 1.0
    body_idle_timeout = 2.5
    linger_seconds = 2.0
    linger_idle = 1.0
    linger_max_bytes = 4 * 1024 * 1024


@pytest.fixture
def quick_gunicorn(env):
    """gunicorn as production runs it but for QuickWorker's bounds; keep-alive long enough not to close first."""
    with running_gunicorn(dict(env, GUNICORN_CMD_ARGS="--worker-class tests.test_worker.QuickWorker --keep-alive 30")) as server:
        yield server


def closed_at(sock: socket.socket, dribble: bytes, deadline: float) -> float | None:
    """Send `dribble` a byte at a time, each while waiting up to 0.1 s for the server to close; when it did."""
    sent = 0
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            if sent < len(dribble):
                sock.sendall(dribble[sent:sent + 1])
                sent += 1
            if sock.recv(4096) == b"":
                return time.monotonic()
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic()
    return None


SLOW = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200


def test_dribbled_headers_are_cut_off_while_others_are_served(quick_gunicorn):
    port = quick_gunicorn.port
    opened = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as slow, socket.create_connection(("127.0.0.1", port)) as idle:
        slow.sendall(SLOW[:20])
        # Meanwhile the same workers answer a normal client at once.
        assert http(quick_gunicorn.url + "/health/live", timeout=2)[0] == 200
        closed = closed_at(slow, SLOW[20:], deadline=opened + QuickWorker.header_timeout + 5)
        assert closed is not None, "a connection dribbling its headers was never closed"
        assert QuickWorker.header_timeout - 0.05 <= closed - opened <= QuickWorker.header_timeout + 2, closed - opened
        # A connection that sends nothing at all is closed by the same clock.
        assert closed_at(idle, b"", deadline=opened + QuickWorker.header_timeout + 5) is not None
    assert http(quick_gunicorn.url + "/health/live", timeout=2)[0] == 200


@pytest.mark.parametrize("args", [
    "--worker-class tests.test_worker.QuickWorker --keep-alive 30",  # the header timeout is the shorter clock
    "--worker-class server.worker.BalancedASGIWorker --keep-alive 1",  # gunicorn's keep-alive is
], ids=["header-timeout", "keep-alive"])
def test_later_requests_on_a_kept_alive_connection_are_cut_off_too(env, args):
    server = Gunicorn(dict(env, GUNICORN_CMD_ARGS=args))
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(5)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            closed = closed_at(conn, SLOW, deadline=started + 6)
            assert closed is not None and closed - started <= 1 + 2, closed and closed - started
    finally:
        server.stop()
        server.reader.join(5)


def test_a_body_may_take_longer_than_the_header_timeout(quick_gunicorn):
    body = json.dumps({"maintenance": {"time": "04:00"}}).encode()
    with socket.create_connection(("127.0.0.1", quick_gunicorn.port)) as conn:
        conn.sendall(b"PATCH /api/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        # Still open twice the header timeout later.
        assert closed_at(conn, b"", deadline=time.monotonic() + 2 * QuickWorker.header_timeout) is None
        conn.sendall(body[5:])
        conn.settimeout(5)
        answer = conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.parametrize("sent, what", [(b"", "the request body"), (b'{"maint', "more of the request body")],
                         ids=["no-body", "stalled-body"])
def test_a_body_that_does_not_come_is_a_408_with_its_access_line(env, sent, what):
    server = Gunicorn(dict(env, GUNICORN_CMD_ARGS="--worker-class tests.test_worker.QuickWorker --keep-alive 30"))
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            started = time.monotonic()
            conn.sendall(b"PATCH /api/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode() + sent)
            conn.settimeout(QuickWorker.body_idle_timeout + 10)
            answer = conn.recv(65536)
            took = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), (answer, server.output())
        assert b"content-type: application/json" in head.lower(), head
        error = json.loads(body)["error"]
        assert error["status"] == 408 and error["description"].startswith(what), error
        wait = QuickWorker.header_timeout if not sent else QuickWorker.body_idle_timeout
        assert wait - 0.05 <= took <= wait + 3, took
        wait_for(lambda: any('"PATCH /api/config" 408' in line for line in server.lines), 5,
                 "the 408's access line")
    finally:
        server.stop()
        server.reader.join(5)


def test_curl_upload_over_the_limit_prints_the_413(gunicorn, tmp_path):
    from server.api.addons import MAX_PACKAGE_BYTES

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    big = tmp_path / "big.zip"
    with big.open("wb") as f:  # sparse: no disk is written for it
        f.truncate(MAX_PACKAGE_BYTES + 1)
    result = subprocess.run(
        [curl, "-sS", "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/zip",
         "--data-binary", f"@{big}", gunicorn.url + "/api/addons"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["status"] == 413, error
    assert str(MAX_PACKAGE_BYTES) in error["description"], error


def test_a_body_waiting_for_100_continue_is_refused_before_it_is_sent(gunicorn):
    with socket.create_connection(("127.0.0.1", gunicorn.port)) as conn:
        conn.sendall(b"PATCH /api/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {2 * 1024 * 1024}\r\n".encode()
                     + b"Expect: 100-continue\r\n\r\n")
        conn.settimeout(5)
        answer = b""
        while chunk := conn.recv(4096):  # the server closes after its answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer  # no 100 Continue before it
    assert b"\r\nConnection: close" in head, head
    assert "at most 1048576 bytes" in json.loads(body)["error"]["description"]


def test_a_body_waiting_for_100_continue_within_the_limit_is_asked_for(gunicorn):
    body = json.dumps({"maintenance": {"time": "04:00"}}).encode()
    with socket.create_connection(("127.0.0.1", gunicorn.port)) as conn:
        conn.sendall(b"PATCH /api/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n".encode()
                     + b"Expect: 100-continue\r\n\r\n")
        conn.settimeout(5)
        assert conn.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(body)
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def refused(port: int) -> socket.socket:
    """A connection whose 2 MiB body was refused after 64 KiB of it, with the answer read up to the server's FIN."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(b"PATCH /api/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode()
                 + b" " * 65536)
    conn.settimeout(5)
    answer = b""
    while chunk := conn.recv(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    return conn


def held_by_server(server: Gunicorn, client: socket.socket) -> bool:
    """Whether a worker still has its end of the client's connection open."""
    mine = client.getsockname()
    return any(c.raddr and tuple(c.raddr) == mine
               for worker in psutil.Process(server.proc.pid).children() for c in worker.net_connections("tcp"))


def test_a_refused_client_that_goes_quiet_is_closed_after_the_idle_bound(quick_gunicorn):
    with refused(quick_gunicorn.port) as conn:
        assert held_by_server(quick_gunicorn, conn)  # lingering: its sending side only is shut down
        wait_for(lambda: not held_by_server(quick_gunicorn, conn), QuickWorker.linger_idle + 3, "the server's close")


@pytest.mark.parametrize("pace", [0.05, 0], ids=["slowly-until-the-time-bound", "flat-out-until-the-size-bound"])
def test_a_refused_client_that_keeps_sending_is_cut_off(quick_gunicorn, pace):
    with refused(quick_gunicorn.port) as conn:
        started = time.monotonic()
        piece = b" " * (1024 if pace else 256 * 1024)

        def cut_off() -> bool:
            try:
                conn.sendall(piece)
                return False
            except (BrokenPipeError, ConnectionResetError):
                return True

        wait_for(cut_off, QuickWorker.linger_seconds + 5, "the server to cut the connection off", every=pace)
        took = time.monotonic() - started
    if pace:
        assert QuickWorker.linger_seconds - 0.5 <= took <= QuickWorker.linger_seconds + 2, took
    else:
        assert took < QuickWorker.linger_seconds / 2, took


class SlowLoadWorker(BalancedASGIWorker):
    """The server's worker whose app loads only when the test says so: it writes its pid to
    AYON_TEST_LOADING, then waits for the file AYON_TEST_LOADING.go."""

    def load_wsgi(self):
        import os
        from pathlib import Path

        loading = os.environ["AYON_TEST_LOADING"]
        with open(loading, "a") as marker:
            marker.write(f"{os.getpid()}\n")
        # The app's import: the worker's signal handlers are set, its loop not running yet.
        wait_for(Path(loading + ".go").exists, 60, "the test to let the app load")
        super().load_wsgi()


def pending_signals(pid: int) -> int:
    """The process's pending signals (to it or to one of its threads), as a bit mask."""
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return int(status["ShdPnd"], 16) | int(status["SigPnd"], 16)


def test_a_stop_signal_while_the_app_loads_still_stops_the_worker(env, tmp_path):
    loading = tmp_path / "loading"
    server = Gunicorn(dict(env, AYON_TEST_LOADING=str(loading),
                           GUNICORN_CMD_ARGS="--worker-class tests.test_worker.SlowLoadWorker"), workers=1)
    try:
        wait_for(lambda: loading.exists() and loading.read_text().strip(), 30, "a worker to start loading the app")
        pid = int(loading.read_text().split()[0])
        psutil.Process(pid).terminate()  # SIGTERM to the worker alone, as the master sends it on a stop
        # It arrived before the loop runs: held, not handled yet. Only then does the app finish loading.
        wait_for(lambda: pending_signals(pid) & 1 << (signal.SIGTERM - 1), 15, "the SIGTERM to be pending")
        (tmp_path / "loading.go").touch()
        # uvloop drops a signal that comes before its loop runs: the worker then served on, forever.
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 15, f"worker {pid} to end after its SIGTERM")
    finally:
        server.stop()


def test_each_wake_takes_at_most_two_waiting_connections():
    import asyncio
    import logging

    from server.worker import ACCEPT_BATCH, Acceptor

    class Recording(Acceptor):
        def _serve(self, conn):
            taken.append(conn)  # when accepted, not when its task runs
            return asyncio.sleep(0)

    class Worker:
        log = logging.getLogger("test")

    taken: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(9)]

    async def scenario():
        worker = Worker()
        worker.loop = asyncio.get_running_loop()
        acceptor = Recording(worker, listener)
        counts = []
        for _ in range(6):
            acceptor._accept()  # what the loop calls when the socket is readable (it does not run meanwhile)
            counts.append(len(taken))
        await asyncio.sleep(0)
        acceptor.close()
        await acceptor.wait_closed()
        return counts

    try:
        # Two per wake (a loop's own server took all nine at once), then nothing left to take.
        assert ACCEPT_BATCH == 2
        assert asyncio.run(scenario()) == [2, 4, 6, 8, 9, 9]
    finally:
        for conn in [*taken, *clients, listener]:
            conn.close()


def test_a_burst_of_keep_alive_connections_reaches_both_workers(gunicorn):
    seen = set()

    def both_serving():
        seen.add(json.loads(http(gunicorn.url + "/api/info")[1])["pid"])
        return len(seen) == 2

    wait_for(both_serving, 30, "both workers to answer (one may still be loading the app)")
    # Connected all at once, before any request: the way a proxy or a load generator opens its pool.
    conns = [socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10) for _ in range(32)]
    try:
        pids = []
        for conn in conns:
            conn.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n")
        for conn in conns:
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                assert chunk, data
                data += chunk
            pids.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])
    finally:
        for conn in conns:
            conn.close()
    # A loop's own server took every waiting connection on one wake: 32 / 0. How evenly the
    # two share them depends on which is scheduled (the test above pins the per-wake batch).
    assert len(set(pids)) == 2, pids


def test_the_c_parser_is_used_when_installed():
    """gunicorn reads whether gunicorn_h1c is usable from ASGIProtocol, whichever subclass asked first."""
    from gunicorn.asgi.protocol import ASGIProtocol

    import server.worker  # noqa: F401  (asks, on import)

    try:
        import gunicorn_h1c  # noqa: F401
    except ImportError:
        assert ASGIProtocol._h1c_available is False
    else:
        assert ASGIProtocol._h1c_available is True and ASGIProtocol._h1c_has_limits is True
