"""GET /api/events/stream: Server-Sent Events fed by PostgreSQL LISTEN/NOTIFY.

Each worker keeps one LISTEN connection (the Broker), watched by the event
loop, and fans notifications out to its open streams. Each message's SSE id is
a cursor on (updated_at, id): a client that reconnects with Last-Event-ID gets
the events changed since then replayed from the table first. When the LISTEN
connection is lost, every stream replays from its own cursor once the
connection is back, so an outage loses nothing.
"""

import asyncio
import base64
import collections
import datetime
import logging
import time

import falcon
from falcon.asgi import SSEvent

from server.api.events import TOPIC_FILTER
from server.api.pages import cursor_time, cursor_uuid, decode_cursor, like_escape
from server.api.spec import Header, Query, Reply, operation
from server.core import events, retry, times
from server.core.db import BROKEN
from server.core.values import AnyText, ListOf

log = logging.getLogger("ayon.stream")

HEARTBEAT_SECONDS = 15.0
RETRY_MS = 3000
QUEUE_SIZE = 1000
REPLAY_PAGE = 500
REPLAY_PAGES = 20
RESYNC = object()  # queued to a stream when notifications may have been missed

_worker = None  # the gunicorn worker, when running under one (see server/gunicorn_conf.py)


def watch_worker(worker) -> None:
    """Let streams notice that this gunicorn worker is stopping."""
    global _worker
    _worker = worker


def shutting_down() -> bool:
    return _worker is not None and not _worker.alive


def matches(topic: str, patterns: list[str]) -> bool:
    if not patterns:
        return True
    return any(topic.startswith(p[:-1]) if p.endswith("*") else topic == p for p in patterns)


def encode_id(updated_at: datetime.datetime, event_id: str) -> str:
    raw = f"{times.rfc3339(updated_at)}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Broker:
    """One LISTEN connection per worker, read by the event loop, fanned out to every stream's queue."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.queues: set[asyncio.Queue] = set()
        self.listener: events.Listener | None = None
        self.outage = retry.Outage(log, "event stream: LISTEN")
        self.fd = -1
        self.connecting: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.queues.add(queue)
        if self.listener is None and self.connecting is None:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())
        # A stream starts once LISTEN is active, so nothing committed after its replay is missed.
        await asyncio.wait_for(self.ready.wait(), timeout=10)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.queues.discard(queue)

    async def _connect(self) -> None:
        # Spread out: every worker of every instance reconnects after the same outage.
        self.listener = await retry.Retry("event stream: LISTEN", first=0.5, cap=5, outage=self.outage).acall(
            lambda: self.ctx.run(events.Listener, self.ctx.settings.session_url, (events.CHANNEL,), "ayon-stream"),
            retry_on=BROKEN)
        self.fd = self.listener.fileno()  # kept: a dead connection can no longer tell its socket
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self.connecting = None
        self.ready.set()
        self._broadcast(RESYNC)  # whatever happened while not listening is replayed

    def _readable(self) -> None:
        try:
            found = self.listener.received()
        except BROKEN:
            self._lost()
            return
        for _, payload in found:
            self._broadcast(payload)

    def _broadcast(self, item) -> None:
        for queue in list(self.queues):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                # A slow client: drop what is queued and let it catch up from the table.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)

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


def replay(db, after: tuple[datetime.datetime, str], patterns: list[str]) -> list[tuple]:
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


def message(event_id: str, topic: str, status: str, description: str, updated_at: datetime.datetime) -> SSEvent:
    body = {"id": event_id, "topic": topic, "status": status, "description": description,
            "updated_at": times.rfc3339(updated_at)}
    return SSEvent(json=body, event_id=encode_id(updated_at, event_id))


class Stream:
    """One client's stream: replay from its cursor, then live notifications, heartbeats between."""

    def __init__(self, ctx, broker: Broker, heartbeat: float):
        self.ctx, self.broker, self.heartbeat = ctx, broker, heartbeat

    async def run(self, queue, patterns, cursor, replay_first: bool):
        sent = collections.OrderedDict()  # (id, updated_at) recently sent: replay and live overlap
        try:
            yield SSEvent(retry=RETRY_MS, comment="connected")
            if replay_first:
                async for item in self._replay(cursor, patterns, sent):
                    cursor = item[0]
                    yield item[1]
            last_beat = time.monotonic()
            while not shutting_down():
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(1.0, self.heartbeat))
                except asyncio.TimeoutError:
                    if time.monotonic() - last_beat >= self.heartbeat:
                        last_beat = time.monotonic()
                        yield SSEvent(comment="keepalive")
                    continue
                if item is RESYNC:
                    async for replayed in self._replay(cursor, patterns, sent):
                        cursor = replayed[0]
                        yield replayed[1]
                    continue
                note = _decode(item)
                if note is None or not matches(note[1], patterns):
                    continue
                key = (note[0], note[4])
                if key in sent:
                    continue
                _remember(sent, key)
                cursor = max(cursor, (note[4], note[0]))
                last_beat = time.monotonic()
                yield message(*note)
        finally:
            self.broker.unsubscribe(queue)

    async def _replay(self, cursor, patterns, sent):
        for _ in range(REPLAY_PAGES):
            try:
                rows = await self.ctx.run(replay, self.ctx.db, cursor, patterns)
            except BROKEN:
                return  # the broker reconnects and asks for another replay
            for event_id, topic, status, description, updated_at in rows:
                cursor = (updated_at, event_id)
                if (event_id, updated_at) in sent:
                    continue
                _remember(sent, (event_id, updated_at))
                yield cursor, message(event_id, topic, status, description, updated_at)
            if len(rows) < REPLAY_PAGE:
                return


def _remember(sent: collections.OrderedDict, key) -> None:
    sent[key] = True
    while len(sent) > QUEUE_SIZE:
        sent.popitem(last=False)


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
                f"is sent every {int(HEARTBEAT_SECONDS)} s when nothing happens.",
    query=[Query("topic", ListOf(TOPIC_FILTER), "Comma-separated exact topics or prefixes ending in '*'.")],
    headers=[Header("Last-Event-ID", AnyText(), "The id of the last message received: replay from there.")],
    responses={200: Reply("An endless text/event-stream", {"type": "string"}, "text/event-stream")},
)


class EventStream:
    def __init__(self, ctx, heartbeat: float | None = None):
        self.ctx = ctx
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self.broker = None

    @STREAM
    async def on_get(self, req, resp):
        patterns = req.context.query["topic"] or []
        cursor = self._last_event_id(req)
        if self.broker is None:
            self.broker = Broker(self.ctx)
        try:
            queue = await self.broker.subscribe()
        except asyncio.TimeoutError:
            raise falcon.HTTPServiceUnavailable(title="Event stream unavailable",
                                                description="cannot LISTEN on PostgreSQL; retry shortly",
                                                retry_after=5) from None
        replay_first = cursor is not None
        if cursor is None:
            # Changes from now on (LISTEN is already active); a resync after an outage replays from here.
            now = await self.ctx.run(self.ctx.db.fetchone, "SELECT clock_timestamp()")
            cursor = (now[0], "00000000-0000-0000-0000-000000000000")
        resp.sse = Stream(self.ctx, self.broker, self.heartbeat).run(queue, patterns, cursor, replay_first)
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
