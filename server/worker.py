"""gunicorn's asgi worker, taking new connections a few at a time, with a header timeout and a lingering close.

A loop's own server takes every waiting connection each time the shared
listening socket wakes a worker, so the first worker to wake took a whole
burst of keep-alive connections and the other sat idle (bench/http saw
0/100 splits); `Acceptor` takes a few per wake instead.

Each connection is served by `HTTPProtocol`, gunicorn's own with a header
timeout (slow clients) and a lingering close after answers sent before the
request body was read, and `TimedBodyReceiver` lets the app refuse a
body before a client waiting for 100 Continue sends it, and bounds the wait
for a body that does not come.
"""

import asyncio
import errno
import signal
import weakref

from gunicorn.asgi.protocol import ASGIProtocol, BodyReceiver
from gunicorn.workers.gasgi import ASGIWorker

from server.api.common import BodyTimeout
from server.drain import draining

ACCEPT_BATCH = 2

# The scope extension that gives an event stream (server/api/stream.py CONNECTION) its connection, weakly.
# Not imported from there: the master loads this class before it prepares the metrics folder.
CONNECTION = "ayon.connection"

# A request's headers must be complete this long after the connection opens
# (or after the first byte of a later request on it), or the connection is
# closed: a client dribbling its headers would otherwise hold it forever.
HEADER_TIMEOUT = 10.0

# A request body's first bytes must come within the header timeout of its
# headers; after that, each pause in it may last BODY_IDLE_TIMEOUT. Past
# either the app answers 408 (gunicorn's own bound, its 120 s worker
# timeout, ended in a text/plain 500 with no access line).
BODY_IDLE_TIMEOUT = 60.0

# After an answer sent before the request body was read, what the client
# still sends is read and thrown away: for at most LINGER_SECONDS in all,
# until it has been quiet for LINGER_IDLE seconds, or LINGER_MAX_BYTES.
# Twice the largest body a route accepts (addon packages, 512 MiB), so a
# client that sends its whole body before reading any answer still reads it.
LINGER_SECONDS = 10.0
LINGER_IDLE = 2.0
LINGER_MAX_BYTES = 1024 * 1024 * 1024

# gunicorn records whether its C parser (gunicorn_h1c, `pip install gunicorn[fast]`) can be used on
# the class that first asks, but reads the answer from ASGIProtocol: asked by a subclass, the answer
# never reached it and every connection used the Python parser. Asked here, on ASGIProtocol.
ASGIProtocol._check_h1c_protocol_available()


class TimedBodyReceiver(BodyReceiver):
    """A request body read as the app asks for it, with bounded waits.

    falcon reads the first body event of every request before its middleware
    runs, so gunicorn's 100 Continue went out before a 413 could: a client
    that waits for it (curl does for large uploads) sent the whole body it
    was about to be refused. An empty first part lets the app refuse first,
    and puts any wait for the body inside a responder, where a wait that
    runs out (BodyTimeout) is answered as a 408 with its access line.
    """

    __slots__ = ("_first_given", "_got_bytes", "first_wait", "idle_wait")

    def __init__(self, request, protocol, first_wait: float, idle_wait: float):
        super().__init__(request, protocol)
        self._first_given = False
        self._got_bytes = False
        self.first_wait, self.idle_wait = first_wait, idle_wait

    async def receive(self):
        if not self._chunks and not self._complete and not self._disconnected:
            if not self._first_given:
                self._first_given = True
                return {"type": "http.request", "body": b"", "more_body": True}
            wait = self.idle_wait if self._got_bytes else self.first_wait
            try:
                message = await asyncio.wait_for(super().receive(), wait)
            except asyncio.TimeoutError:
                what = "more of the request body" if self._got_bytes else "the request body"
                raise BodyTimeout(f"{what} did not arrive within {wait:g} s; send it with the request") from None
        else:
            self._first_given = True
            message = await super().receive()
        if message.get("body"):
            self._got_bytes = True
        return message


class _Linger:
    """What a lingering close has dropped, and its bounds."""

    __slots__ = ("dropped", "last", "deadline", "idle", "max_bytes", "timer")

    def __init__(self, worker):
        self.dropped = 0
        self.last = worker.loop.time()
        self.deadline = self.last + worker.linger_seconds
        self.idle = worker.linger_idle
        self.max_bytes = worker.linger_max_bytes
        self.timer = None


class HTTPProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 connection, closed after a header timeout and closed gently after early answers.

    gunicorn closes a connection whose request body was not read (a 411, a
    413 from Content-Length) at once. The kernel answers a close with unread
    bytes in its receive buffer, and every segment the client sends after
    it, with a reset: a client still writing its body gets a broken pipe
    before it looks for the answer, and answer bytes not yet sent are lost.
    Like nginx and Apache, this one shuts down its sending side once the
    answer is flushed, reads and drops what the client still sends, and
    closes when the client is done (or after the bounds above).
    """

    def __init__(self, worker):
        super().__init__(worker)
        self._header_timeout = worker.header_timeout
        self._header_timer = None
        # gunicorn itself answered an unreadable request: its rest may still come.
        self._refused = False
        # The request whose answer announced `Connection: close`.
        self._closing_request = None
        self._linger = None  # a _Linger while draining before the close
        # Whether the last GET's answer is chunked: an event stream handed this connection writes its own chunks.
        self.stream_chunked = True

    def hand_over(self, protocol):
        """Give this connection to `protocol` (an event stream's, server/api/stream.py); its transport, or None.

        The request ends as if the client had left: gunicorn's send() does
        nothing more, its loop for this connection ends without closing it,
        and the request's objects are freed; the transport, its socket and
        the new protocol are all that is left of the connection.
        """
        transport = self.transport
        if transport is None or self._closed or transport.is_closing():
            return None
        self._cancel_header_timer()
        self._cancel_keepalive_timer()
        self._closed = True
        self._conn_lost_handled = True
        self.worker.nr_conns -= 1  # gunicorn counts it in connection_lost, which now goes to `protocol`
        transport.set_protocol(protocol)
        self.transport = None
        if self._body_receiver is not None:
            self._body_receiver.signal_disconnect()  # falcon's watcher of the request ends
        return transport

    def _build_http_scope(self, request, sockname, peername):
        scope = super()._build_http_scope(request, sockname, peername)
        if request.method == "GET":
            # Weakly: the scope lives in the request's task, which the connection holds.
            scope.setdefault("extensions", {})[CONNECTION] = weakref.ref(self)
            self.stream_chunked = request.version >= (1, 1)
        return scope

    # Slow clients.

    def _start_http1(self, buffered=b""):
        self._arm_header_timer()
        super()._start_http1(buffered)

    def _arm_header_timer(self):
        if self._header_timeout and self._header_timeout > 0:
            self._header_timer = self.worker.loop.call_later(self._header_timeout, self._header_timed_out)

    def _cancel_header_timer(self):
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_headers_complete(self):
        self._cancel_header_timer()
        result = super()._on_headers_complete()
        receiver = self._body_receiver
        if receiver is not None and (receiver.request.content_length or receiver.request.chunked):
            # Replaced before the connection loop wakes up to hand it to the app.
            self._body_receiver = TimedBodyReceiver(receiver.request, self, self._header_timeout,
                                                    self.worker.body_idle_timeout)
        return result

    def _header_timed_out(self):
        self._header_timer = None
        if self._closed or self._current_request is not None:
            return
        self.log.debug("closing a connection whose request headers took over %s s", self._header_timeout)
        self._close_transport()
        # Wake the connection loop, as gunicorn's keep-alive timeout does.
        if self._request_ready is not None:
            self._request_ready.set()

    def data_received(self, data):
        if self._linger is not None:
            self._linger_received(len(data))
            return
        if (self._current_request is None and self._header_timer is None and not self._closed
                and self._callback_parser is not None
                and (self._keepalive_handle is None or self._keepalive > self._header_timeout)):
            # The first bytes of a later request on a kept-alive connection. gunicorn's
            # keep-alive clock, when it runs and is shorter, cuts it off sooner anyway (one timer
            # less per request).
            self._arm_header_timer()
        super().data_received(data)

    # Early answers.

    def _send_error_response(self, status, message, extra_headers=()):
        self._refused = True
        super()._send_error_response(status, message, extra_headers)
        # A request gunicorn refused before the app saw it still leaves its one access line.
        access = getattr(self.worker.asgi, "access_log", None)
        if access is not None:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            access.write(peer[0] if peer else "-", "-", "(unreadable request)", status, 0.0)

    def _will_close(self, request, response_requires_close):
        if self._closing_request is request:
            return True
        receiver = self._body_receiver
        if receiver is not None and receiver.request is request and not receiver._complete:
            # Answered before its body arrived: the connection cannot serve
            # another request, so say so in the answer.
            self._closing_request = request
            return True
        if draining():
            # A kept-alive client (one behind a layer-4 balancer, a Kubernetes Service) reconnects,
            # to an instance that is not stopping.
            return True
        return super()._will_close(request, response_requires_close)

    def _close_transport(self):
        if self.transport is None or self._closed:
            return
        self._cancel_header_timer()
        receiver = self._body_receiver
        if not self._refused and (receiver is None or receiver._complete):
            super()._close_transport()
            return
        self._closed = True
        self._linger = _Linger(self.worker)
        try:
            # asyncio sends the FIN once the answer has left its buffer.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            # Reading may be paused for backpressure; bytes must flow to be dropped.
            self._reading_paused = False
            self.transport.resume_reading()
        except Exception:
            self._end_linger(force=True)
            return
        self._linger.timer = self.worker.loop.call_later(self._linger.idle, self._linger_tick)

    def _linger_received(self, size):
        linger = self._linger
        linger.dropped += size
        linger.last = self.worker.loop.time()
        if linger.dropped > linger.max_bytes:
            self._end_linger(force=False)

    def _linger_tick(self):
        linger = self._linger
        if linger is None:
            return
        linger.timer = None
        now = self.worker.loop.time()
        if now >= linger.deadline:
            self._end_linger(force=True)
        elif now - linger.last >= linger.idle or linger.dropped > linger.max_bytes:
            self._end_linger(force=False)
        if self._linger is not None:
            wake = min(linger.deadline, max(linger.last + linger.idle, now + 0.1))
            linger.timer = self.worker.loop.call_at(wake, self._linger_tick)

    def _end_linger(self, force):
        transport = self.transport
        if transport.get_write_buffer_size() == 0:
            self._stop_lingering()
            transport.close()
        elif force:
            # The answer could not be delivered within the bounds: the client does not read.
            self._stop_lingering()
            transport.abort()
        else:
            # The answer is still on its way: stop reading, the deadline ends it.
            transport.pause_reading()

    def _stop_lingering(self):
        linger, self._linger = self._linger, None
        if linger is not None and linger.timer is not None:
            linger.timer.cancel()

    def eof_received(self):
        # The client is done sending: asyncio closes the transport once the answer is flushed.
        self._stop_lingering()
        return super().eof_received()

    def connection_lost(self, exc):
        self._cancel_header_timer()
        self._stop_lingering()
        super().connection_lost(exc)


# The signals gunicorn's asgi worker handles on its loop.
LOOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGWINCH, signal.SIGABRT}


class BalancedASGIWorker(ASGIWorker):
    header_timeout = HEADER_TIMEOUT
    body_idle_timeout = BODY_IDLE_TIMEOUT
    linger_seconds = LINGER_SECONDS
    linger_idle = LINGER_IDLE
    linger_max_bytes = LINGER_MAX_BYTES

    def init_process(self):
        # uvloop's signal handlers only hear signals once the loop runs: a SIGTERM that came while
        # the app loaded was lost, and a stop waited the whole graceful timeout for this worker.
        # Held (blocked) until then, it is delivered, and handled, as the loop starts.
        signal.pthread_sigmask(signal.SIG_BLOCK, LOOP_SIGNALS)
        super().init_process()

    def run(self):
        self.loop.call_soon(signal.pthread_sigmask, signal.SIG_UNBLOCK, LOOP_SIGNALS)
        super().run()

    def _setup_event_loop(self):
        super()._setup_event_loop()
        create_server = self.loop.create_server
        listen_queue = self.cfg.backlog

        async def balanced_create_server(protocol_factory, *args, sock=None, ssl=None, **kwargs):
            if sock is None:
                return await create_server(lambda: HTTPProtocol(self), *args, ssl=ssl, **kwargs)
            sock.listen(listen_queue)
            return Acceptor(self, sock, ssl)

        self.loop.create_server = balanced_create_server


class Acceptor:
    """Serves a listening socket shared with the other workers, taking ACCEPT_BATCH connections per wake.

    A loop's own server takes every waiting connection when the socket wakes
    it (uvloop until none is left, asyncio up to its backlog), so the first
    worker to wake took a whole burst of keep-alive connections and the other
    idled (bench/http saw 0/100 splits). Taking a few per wake lets every
    worker's loop compete for the rest; the kernel's listen queue keeps
    gunicorn's `backlog`. It stands in for the loop's server object: gunicorn
    calls `close()` and `wait_closed()` on a stop.
    """

    # Out of descriptors or memory: stop accepting for this long, as asyncio does.
    PAUSE_SECONDS = 1.0

    def __init__(self, worker, sock, ssl=None):
        self.worker, self.sock, self.ssl = worker, sock, ssl
        self.loop = worker.loop
        sock.setblocking(False)
        self.closed = False
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # another worker took it, or the client gave up first
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self.worker.log.warning("cannot accept connections (%s); pausing for %s s",
                                        exc.strerror, self.PAUSE_SECONDS)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(self.PAUSE_SECONDS, self._resume)
                return
            conn.setblocking(False)
            self.loop.create_task(self._serve(conn))

    async def _serve(self, conn) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: HTTPProtocol(self.worker), conn, ssl=self.ssl)
        except Exception as exc:  # a TLS handshake that failed, a client already gone
            self.worker.log.debug("connection not served: %s", exc)
            conn.close()

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            # Closed now, not when the worker exits: once every process has closed it, a new
            # connection is refused at once (a client tries another instance) instead of waiting
            # in the listen queue for the whole graceful stop, to be reset at its end.
            self.sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: open connections are the worker's to wait for (its nr_conns)."""
