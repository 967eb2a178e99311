"""GET /api/events/stream: Server-Sent Events fed by PostgreSQL LISTEN/NOTIFY.

Each worker keeps one LISTEN connection (the Broker), watched by the event
loop. A notification is decoded and encoded as SSE bytes once per worker,
matched once per distinct topic filter (subscribers are grouped by theirs),
and the same bytes are written to every matching connection's transport:
nothing per subscriber runs on the loop but the write. A subscriber whose
unsent bytes in the worker pass AYON_STREAM_SUBSCRIBER_BUFFER (a client that
does not read) is disconnected; it reconnects with Last-Event-ID and catches
up from the table. A worker holds at most AYON_STREAM_MAX_SUBSCRIBERS streams.

Each message's SSE id is a cursor on (updated_at, id): a client that
reconnects with Last-Event-ID gets the events changed since then replayed
from the table first. When the LISTEN connection is lost, every stream
replays from its own cursor once the connection is back, so an outage loses
nothing.
"""

import asyncio
import base64
import datetime
import ctypes
import ctypes.util
import gc
import logging
import socket
import time

import falcon
from falcon.asgi import SSEvent
from prometheus_client import Counter

from server.api.common import dumps
from server.api.events import TOPIC_FILTER
from server.api.pages import cursor_time, cursor_uuid, decode_cursor, like_escape
from server.api.spec import Header, Query, Reply, operation
from server.core import events, retry, times
from server.core.db import BROKEN
from server.core.values import AnyText, ListOf

log = logging.getLogger("ayon.stream")

HEARTBEAT_SECONDS = 15.0
RETRY_MS = 3000
REPLAY_PAGE = 500
REPLAY_PAGES = 20
REPLAY_RETRY_SECONDS = 15.0  # a replay page's retries on a lost database, before the stream is ended
# Replay and live notifications overlap: a replay's keys are kept this long after it, to skip those.
REPLAY_OVERLAP_SECONDS = 10.0
TICK_SECONDS = 1.0  # the broker's one timer: heartbeats, the worker's stop, replay overlaps ending
# After this many subscribers left (or all of them), the freed memory is handed back to the system.
TRIM_AFTER = 1000
CONNECTION = "ayon.connection"  # the scope extension server/worker.py adds: the HTTP connection, weakly

_counters = None


def counters():
    """(encoded, sent, dropped): made when the first stream opens, as a labelless counter writes its
    file at once, and the master loads this module before it prepares the metrics folder."""
    global _counters
    if _counters is None:
        _counters = (
            Counter("ayon_stream_messages_encoded", "Live event messages encoded, once per worker whatever the "
                    "number of subscribers."),
            Counter("ayon_stream_messages_sent", "Live event messages written to event-stream subscribers."),
            Counter("ayon_stream_subscribers_dropped", "Event-stream subscribers disconnected for not reading "
                    "(AYON_STREAM_SUBSCRIBER_BUFFER)."))
    return _counters


_worker = None  # the gunicorn worker, when running under one (see server/gunicorn_conf.py)


def watch_worker(worker) -> None:
    """Let streams notice that this gunicorn worker is stopping."""
    global _worker
    _worker = worker


def shutting_down() -> bool:
    return _worker is not None and not _worker.alive


def matches(topic: str, patterns) -> bool:
    if not patterns:
        return True
    return any(topic.startswith(p[:-1]) if p.endswith("*") else topic == p for p in patterns)


def encode_id(updated_at: datetime.datetime, event_id: str) -> str:
    raw = f"{times.rfc3339(updated_at)}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (the stream's body is chunked)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_libc = None


def give_back_memory() -> None:
    """Collect, then return the C heap's free pages to the system (glibc's malloc_trim), where there is one.

    Subscribers leave behind many small freed blocks; without a trim glibc
    keeps the pages they were on, and the worker's RSS stays up.
    """
    global _libc
    gc.collect()
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


class Encoded:
    """One message, encoded once per worker: its SSE bytes, and the same as an HTTP chunk (made when asked)."""

    __slots__ = ("key", "sse", "_chunk")

    def __init__(self, key, sse: bytes):
        self.key, self.sse, self._chunk = key, sse, None

    @property
    def chunk(self) -> bytes:
        if self._chunk is None:
            self._chunk = chunk(self.sse)
        return self._chunk

    def serialize(self, handler=None) -> bytes:
        """What falcon writes when the message is yielded (an SSEvent's method)."""
        return self.sse


KEEPALIVE = Encoded(None, b": keepalive\n\n")


def encode(event_id: str, topic: str, status: str, description: str, updated_at: datetime.datetime) -> Encoded:
    body = {"id": event_id, "topic": topic, "status": status, "description": description,
            "updated_at": times.rfc3339(updated_at)}
    sse = f"id: {encode_id(updated_at, event_id)}\ndata: {dumps(body)}\n\n".encode()
    return Encoded((event_id, updated_at), sse)


class Subscriber:
    """One open stream: its filter, cursor and connection.

    Under server/worker.py the connection is handed over once the headers
    and the first comment are out (`Connection`): the request ends, and the
    broker writes to the transport itself. Elsewhere (a test client, another
    ASGI server) messages wait in `pending` for the stream's generator to
    yield them.
    """

    __slots__ = ("group", "cursor", "transport", "chunked", "pending", "pending_bytes", "waiter", "closed",
                 "replaying", "replayed", "replayed_until", "resync", "wrote", "limit", "broker")

    def __init__(self, broker, cursor, limit: int):
        self.broker, self.cursor, self.limit = broker, cursor, limit
        self.group = None
        self.transport = None  # set once the connection is handed over
        self.chunked = True
        self.pending: list | None = None  # made when needed: most streams never hold a message back
        self.pending_bytes = 0
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.replaying = False
        self.replayed: set | None = None  # keys of the last replay, while it may overlap live messages
        self.replayed_until = 0.0
        self.resync = False
        self.wrote = False  # since the last heartbeat pass

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.group.patterns if self.group is not None else ()

    def deliver(self, item: Encoded) -> None:
        """A live message (or a heartbeat) for this stream."""
        if self.closed:
            return
        key = item.key
        if key is not None:
            if self.replayed is not None and key in self.replayed:
                return
            if (key[1], key[0]) > self.cursor:
                self.cursor = (key[1], key[0])
        if self.transport is None or self.replaying:
            if self.pending is None:
                self.pending = []
            self.pending.append(item)
            self.pending_bytes += len(item.sse)
            if self.pending_bytes > self.limit:
                self.drop(f"{self.pending_bytes // 1024} KiB of messages waited to be sent")
                return
            self.wake()
            return
        self.write(item)
        if not self.closed and self.transport.get_write_buffer_size() > self.limit:
            self.drop(f"{self.transport.get_write_buffer_size() // 1024} KiB were not read")

    def write(self, item: Encoded) -> None:
        self.wrote = True
        try:
            self.transport.write(item.chunk if self.chunked else item.sse)
        except (OSError, RuntimeError):
            self.close()

    def take(self) -> list:
        """The messages waiting to be sent, now no longer waiting."""
        items, self.pending, self.pending_bytes = self.pending or [], None, 0
        return items

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drop(self, why: str) -> None:
        """Disconnect a client that does not read fast enough; it reconnects and replays from its cursor."""
        self.broker.dropped += 1
        counters()[2].inc()
        log.warning("event stream: disconnected a subscriber that is not reading (%s; limit "
                    "AYON_STREAM_SUBSCRIBER_BUFFER=%d bytes); it can reconnect with Last-Event-ID",
                    why, self.limit)
        transport = self.transport
        self.close()
        if transport is not None:
            transport.abort()

    def end(self) -> None:
        """End the stream cleanly (the worker stops): the last chunk, then the connection closes."""
        transport = self.transport
        self.close()
        if transport is not None and not transport.is_closing():
            if self.chunked:
                transport.write(b"0\r\n\r\n")
            transport.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.take()
            self.broker.unsubscribe(self)
            self.wake()


class Connection(asyncio.Protocol):
    """A stream's connection once handed over: it only notices the client leaving."""

    __slots__ = ("sub",)

    def __init__(self, sub: Subscriber):
        self.sub = sub

    def data_received(self, data) -> None:
        pass  # a client says nothing more on a stream; what it sends is dropped

    def eof_received(self) -> bool:
        return False  # the client is done: the transport closes

    def connection_lost(self, exc) -> None:
        self.sub.close()


class Group:
    """The subscribers sharing one topic filter: the filter is matched once per message for all of them."""

    __slots__ = ("patterns", "members")

    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = patterns
        self.members: set[Subscriber] = set()


class Broker:
    """One LISTEN connection per worker, read by the event loop, fanned out to every stream."""

    def __init__(self, ctx, heartbeat: float = HEARTBEAT_SECONDS):
        self.ctx = ctx
        self.heartbeat = heartbeat
        self.groups: dict[tuple[str, ...], Group] = {}
        self.count = 0
        self.dropped = 0
        self.listener: events.Listener | None = None
        self.outage = retry.Outage(log, "event stream: LISTEN")
        self.fd = -1
        self.connecting: asyncio.Task | None = None
        self.ready = asyncio.Event()
        self.ticker: asyncio.TimerHandle | None = None
        self.last_beat = time.monotonic()
        self.replays: set[asyncio.Task] = set()
        self.peak = 0  # the most subscribers since memory was last given back
        counters()  # in /metrics from the first stream on

    @property
    def limit(self) -> int:
        return self.ctx.settings.stream_subscriber_buffer

    @property
    def capacity(self) -> int:
        return self.ctx.settings.stream_max_subscribers

    async def subscribe(self, patterns: tuple[str, ...], cursor) -> Subscriber:
        sub = Subscriber(self, cursor, self.limit)
        group = self.groups.get(patterns)
        if group is None:
            group = self.groups[patterns] = Group(patterns)
        group.members.add(sub)
        sub.group = group
        self.count += 1
        self.peak = max(self.peak, self.count)
        loop = asyncio.get_running_loop()
        if self.listener is None and self.connecting is None:
            self.connecting = loop.create_task(self._connect())
        if self.ticker is None:
            self.ticker = loop.call_later(min(TICK_SECONDS, self.heartbeat), self._tick)
        # A stream starts once LISTEN is active, so nothing committed after its replay is missed.
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=10)
        except asyncio.TimeoutError:
            sub.close()
            raise
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        group = sub.group
        if group is not None and sub in group.members:
            group.members.discard(sub)
            self.count -= 1
            if not group.members:
                del self.groups[group.patterns]
        sub.group = None

    def subscribers(self):
        return [sub for group in list(self.groups.values()) for sub in list(group.members)]

    async def _connect(self) -> None:
        # Spread out: every worker of every instance reconnects after the same outage.
        self.listener = await retry.Retry("event stream: LISTEN", first=0.5, cap=5, outage=self.outage).acall(
            lambda: self.ctx.run(events.Listener, self.ctx.settings.session_url, (events.CHANNEL,), "ayon-stream"),
            retry_on=BROKEN)
        self.fd = self.listener.fileno()  # kept: a dead connection can no longer tell its socket
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self.connecting = None
        self.ready.set()
        self._resync_all()  # whatever happened while not listening is replayed

    def _readable(self) -> None:
        try:
            found = self.listener.received()
        except BROKEN:
            self._lost()
            return
        for _, payload in found:
            note = _decode(payload)
            if note is not None:
                self.publish(encode(*note), note[1])

    def publish(self, item: Encoded, topic: str) -> None:
        """One message to every stream whose filter takes its topic."""
        sent = 0
        for group in list(self.groups.values()):
            if matches(topic, group.patterns):
                for sub in list(group.members):
                    sub.deliver(item)
                    sent += 1
        encoded, written, _ = counters()
        encoded.inc()
        if sent:
            written.inc(sent)

    def _resync_all(self) -> None:
        for sub in self.subscribers():
            if sub.transport is not None:
                self.replay(sub)
            else:
                sub.resync = True
                sub.wake()

    def replay(self, sub: Subscriber) -> None:
        """Replay from the table into a handed-over stream, in a task of its own while it lasts."""
        if sub.replaying or sub.closed:
            return
        task = asyncio.get_running_loop().create_task(self._replay_into(sub))
        self.replays.add(task)
        task.add_done_callback(self.replays.discard)

    async def _replay_into(self, sub: Subscriber) -> None:
        async for item in replay_items(self.ctx, sub):
            sub.write(item)
            if sub.transport.get_write_buffer_size() > sub.limit // 2:
                # Most of a page unread: wait (bounded) for the client to take it.
                deadline = time.monotonic() + 30
                while (not sub.closed and sub.transport.get_write_buffer_size() > sub.limit // 2
                       and time.monotonic() < deadline):
                    await asyncio.sleep(0.05)
                if not sub.closed and sub.transport.get_write_buffer_size() > sub.limit:
                    sub.drop("a replay was not read")
            if sub.closed:
                return

    def _tick(self) -> None:
        self.ticker = None
        now = time.monotonic()
        if shutting_down():
            for sub in self.subscribers():
                sub.end()
            return
        beat = now - self.last_beat >= self.heartbeat
        if beat:
            self.last_beat = now
        for sub in self.subscribers():
            if sub.replayed is not None and now > sub.replayed_until and not sub.replaying:
                sub.replayed = None
            if beat:
                if not sub.wrote:
                    sub.deliver(KEEPALIVE)
                sub.wrote = False
        if self.peak - self.count >= TRIM_AFTER or (self.peak and not self.count):
            self.peak = self.count
            give_back_memory()
        if self.count:
            self.ticker = asyncio.get_running_loop().call_later(min(TICK_SECONDS, self.heartbeat), self._tick)

    def _lost(self) -> None:
        self.outage.failed("the connection was lost")
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.fd)
        try:
            self.listener.close()
        except BROKEN:
            pass
        self.listener = None
        self.ready.clear()
        self.connecting = loop.create_task(self._connect())

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        if self.listener is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.fd)
            except RuntimeError:
                pass  # no loop running any more: nothing watches the socket
            self.listener.close()
            self.listener = None


REPLAY_SQL = """
SELECT id::text, topic, status, left(description, 500), updated_at
FROM events WHERE (updated_at, id) > (%(after)s, %(after_id)s::uuid) {topics}
ORDER BY updated_at, id LIMIT %(limit)s
"""


def replay(db, after: tuple[datetime.datetime, str], patterns) -> list[tuple]:
    """Events changed after the cursor, oldest first, one page."""
    clauses, params = [], {"after": after[0], "after_id": after[1], "limit": REPLAY_PAGE}
    for i, pattern in enumerate(patterns):
        if pattern.endswith("*"):
            clauses.append(f"topic LIKE %(t{i})s")
            params[f"t{i}"] = like_escape(pattern[:-1]) + "%"
        else:
            clauses.append(f"topic = %(t{i})s")
            params[f"t{i}"] = pattern
    topics = f"AND ({' OR '.join(clauses)})" if clauses else ""
    return db.fetchall(REPLAY_SQL.format(topics=topics), params)


async def replay_items(ctx, sub: Subscriber):
    """The events after the stream's cursor, from the table, as messages; live ones meanwhile wait in `pending`.

    Afterwards the live messages that waited are delivered, less those the
    replay already sent, and its keys are kept a while for the same reason.
    """
    sub.replaying = True
    keys = set()
    try:
        for _ in range(REPLAY_PAGES):
            # A page read on a pooled connection to a database that just failed over fails once per stale
            # connection: tried again on a fresh one. Should the database stay away, the stream is ended
            # instead, so its client reconnects with Last-Event-ID and replays then; nothing is skipped.
            try:
                rows = await retry.Retry("event stream: replay", first=0.2, cap=2.0, timeout=REPLAY_RETRY_SECONDS,
                                         stop=lambda: sub.closed).acall(
                    lambda: ctx.run(replay, ctx.db, sub.cursor, sub.patterns), retry_on=BROKEN)
            except retry.GaveUp as exc:
                if not sub.closed:
                    log.warning("event stream: ended a stream whose replay could not be read for %.0f s (%s); its "
                                "client reconnects with Last-Event-ID and replays then", exc.waited, exc.reason)
                    sub.end()
                return
            for row in rows:
                item = encode(*row)
                cursor = (row[4], row[0])
                if cursor > sub.cursor:
                    sub.cursor = cursor
                keys.add(item.key)
                if sub.replayed is not None and item.key in sub.replayed:
                    continue
                if sub.closed:
                    return
                yield item
            if len(rows) < REPLAY_PAGE:
                return
    finally:
        sub.replayed = keys | (sub.replayed or set())
        sub.replayed_until = time.monotonic() + REPLAY_OVERLAP_SECONDS
        sub.replaying = False
        if sub.transport is not None and not sub.closed:
            for item in sub.take():
                sub.deliver(item)


class Stream:
    """One client's stream: the first comment, then the connection handed to the broker (or, elsewhere, yields)."""

    def __init__(self, ctx, sub: Subscriber, connection):
        self.ctx, self.sub, self.connection = ctx, sub, connection

    async def run(self, replay_first: bool):
        sub = self.sub
        handed_over = False
        try:
            yield SSEvent(retry=RETRY_MS, comment="connected")  # the headers go out with it
            handed_over = self._hand_over()
            if handed_over:
                if replay_first:
                    sub.broker.replay(sub)
                else:
                    for item in sub.take():
                        sub.deliver(item)
                return  # the request ends here; the broker writes to the connection from now on
            sub.resync = sub.resync or replay_first
            loop = asyncio.get_running_loop()
            while not sub.closed:
                if sub.resync:
                    sub.resync = False
                    async for item in replay_items(self.ctx, sub):
                        yield item
                    continue
                if sub.pending:
                    for item in sub.take():
                        if item.key is None or sub.replayed is None or item.key not in sub.replayed:
                            yield item
                    continue
                sub.waiter = loop.create_future()
                await sub.waiter
                sub.waiter = None
        finally:
            if not handed_over:
                sub.close()

    def _hand_over(self) -> bool:
        """Give the connection to the broker, when it is server/worker.py's and still open."""
        protocol = self.connection() if self.connection is not None else None
        if protocol is None:
            return False
        chunked = protocol.stream_chunked
        transport = protocol.hand_over(Connection(self.sub))
        if transport is None:
            return False
        self.sub.chunked = chunked
        self.sub.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # The kernel holds no more for a stream than the worker may: a client that does not read
            # is found within a few seconds, and costs the machine a bounded amount.
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sub.limit)
            except OSError:
                pass
        return True


def _decode(doc):
    """The event a notification's payload (JSON decoded by the listener) names; None when it is malformed."""
    try:
        updated_at = datetime.datetime.fromisoformat(doc["updated_at"])
        return str(doc["id"]), doc["topic"], doc["status"], doc.get("description") or "", updated_at
    except (ValueError, KeyError, TypeError):
        log.warning("event stream: ignored a malformed notification")
        return None


def read_last_event_id(raw: str) -> tuple[datetime.datetime, str] | None:
    """The cursor a Last-Event-ID names (None when empty), checked before the stream starts: else a 400.

    Its time is in UTC, so the stream compares it with the events' times and
    PostgreSQL takes it in the replay: a stream that started never fails on it.
    """
    raw = raw.strip()
    if not raw:
        return None
    parts = decode_cursor(raw, "Last-Event-ID")
    return cursor_time(parts[0], "Last-Event-ID"), cursor_uuid(parts[1], "Last-Event-ID")


STREAM = operation(
    "Live events (Server-Sent Events)", tags=["events"],
    description="Each message's data is {id, topic, status, description, updated_at} as JSON and its id a "
                "cursor: reconnect with the Last-Event-ID header to replay what changed since. A comment line "
                f"is sent every {int(HEARTBEAT_SECONDS)} s when nothing happens. A client that does not read "
                "is disconnected once AYON_STREAM_SUBSCRIBER_BUFFER bytes wait for it; a worker holding "
                "AYON_STREAM_MAX_SUBSCRIBERS streams answers 503.",
    query=[Query("topic", ListOf(TOPIC_FILTER), "Comma-separated exact topics or prefixes ending in '*'.")],
    headers=[Header("Last-Event-ID", AnyText(), "The id of the last message received: replay from there.")],
    responses={200: Reply("An endless text/event-stream", {"type": "string"}, "text/event-stream")},
)


class EventStream:
    def __init__(self, ctx, heartbeat: float | None = None):
        self.ctx = ctx
        self.heartbeat = heartbeat
        self.broker = None

    @STREAM
    async def on_get(self, req, resp):
        patterns = tuple(sorted(set(req.context.query["topic"] or ())))
        cursor = self._last_event_id(req)
        if self.broker is None:
            self.broker = Broker(self.ctx, HEARTBEAT_SECONDS if self.heartbeat is None else self.heartbeat)
        if self.broker.count >= self.broker.capacity:
            raise falcon.HTTPServiceUnavailable(
                title="Too many event streams",
                description=f"this worker holds {self.broker.count} streams, its limit "
                            f"(AYON_STREAM_MAX_SUBSCRIBERS); retry shortly, or run more workers or instances",
                retry_after=5)
        replay_first = cursor is not None
        if cursor is None:
            cursor = (datetime.datetime.min.replace(tzinfo=datetime.timezone.utc),
                      "00000000-0000-0000-0000-000000000000")
        try:
            sub = await self.broker.subscribe(patterns, cursor)
        except asyncio.TimeoutError:
            raise falcon.HTTPServiceUnavailable(title="Event stream unavailable",
                                                description="cannot LISTEN on PostgreSQL; retry shortly",
                                                retry_after=5) from None
        if not replay_first:
            # Changes from now on (LISTEN is already active); a resync after an outage replays from here.
            now = await self.ctx.run(self.ctx.db.fetchone, "SELECT clock_timestamp()")
            sub.cursor = max(sub.cursor, (now[0], "00000000-0000-0000-0000-000000000000"))
        connection = (req.scope.get("extensions") or {}).get(CONNECTION)
        resp.sse = Stream(self.ctx, sub, connection).run(replay_first)
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Accel-Buffering", "no")  # proxies must not hold the stream back

    @STREAM
    async def on_head(self, req, resp):
        # The headers a stream would start with, without subscribing.
        self._last_event_id(req)
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-store")

    @staticmethod
    def _last_event_id(req):
        return read_last_event_id(req.context.headers["Last-Event-ID"] or "")

    async def on_shutdown(self):
        if self.broker is not None:
            self.broker.close()


class Shutdown:
    """Closes the worker's LISTEN connection at ASGI lifespan shutdown."""

    def __init__(self, resource):
        self.resource = resource

    async def process_shutdown(self, scope, event):
        await self.resource.on_shutdown()
