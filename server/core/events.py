"""The one module every process uses to dispatch, update, get and query events.

Every function takes either a `Database` (it runs in its own transaction) or
an open cursor (it joins the caller's transaction). Triggers keep
`updated_at` current and NOTIFY `ayon_events` with each change.
"""

import datetime
import json
import select
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from server.core import db as dbmod

STATUSES = ("pending", "in_progress", "finished", "failed", "aborted")
# The NOTIFY channels every process shares (triggers in server/core/migrations send them).
CHANNEL = "ayon_events"  # every event change
CONFIG_CHANNEL = "ayon_config"  # every configuration change
PACKAGES_CHANNEL = "ayon_packages"  # a package to install or remove

# Topics the server itself sends (a contract: monitoring and the dashboard read them).
MAINTENANCE = "server.maintenance"
MAINTENANCE_REQUEST = "server.maintenance.request"
MAINTENANCE_PREVIEW = "server.maintenance.preview"  # a dry run: what a run would remove, nothing changed
CONFIG_CHANGED = "server.config_changed"
CONFIG_REJECTED = "server.config_rejected"  # a program met a stored value it cannot use and kept its last good one
COLUMNS = "id, topic, status, description, summary, payload, sender, depends_on, created_at, updated_at"

_default_sender = "ayon"


def set_default_sender(sender: str) -> None:
    """Name this process in the events it sends (instance/program), once at start."""
    global _default_sender
    _default_sender = sender


@contextmanager
def _cursor(target) -> Iterator[Any]:
    if isinstance(target, dbmod.Database):
        with target.transaction() as cur:
            yield cur
    else:
        yield target


def _row(row: tuple) -> dict:
    record = dict(zip(COLUMNS.split(", "), row, strict=True))
    record["id"] = str(record["id"])
    if record["depends_on"] is not None:
        record["depends_on"] = str(record["depends_on"])
    return record


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return status


def dispatch(
    target,
    topic: str,
    *,
    status: str = "pending",
    description: str = "",
    summary: dict | None = None,
    payload: dict | None = None,
    sender: str | None = None,
    depends_on: str | None = None,
) -> str:
    """Create an event; returns its id."""
    with _cursor(target) as cur:
        cur.execute(
            "INSERT INTO events (topic, status, description, summary, payload, sender, depends_on) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                topic,
                _check_status(status),
                description,
                json.dumps(summary or {}),
                json.dumps(payload or {}),
                sender or _default_sender,
                depends_on,
            ),
        )
        return str(cur.fetchone()[0])


def update(
    target,
    event_id: str,
    *,
    status: str | None = None,
    description: str | None = None,
    summary: dict | None = None,
    payload: dict | None = None,
    only_if: tuple[str, ...] | None = None,
) -> dict | None:
    """Change an event; with `only_if`, only while its status is one of those. Returns it or None."""
    sets, params = [], []
    for column, value in (("status", status), ("description", description)):
        if value is not None:
            sets.append(f"{column} = %s")
            params.append(_check_status(value) if column == "status" else value)
    for column, value in (("summary", summary), ("payload", payload)):
        if value is not None:
            sets.append(f"{column} = %s")
            params.append(json.dumps(value))
    if not sets:
        return get(target, event_id)
    where = "id = %s"
    params.append(event_id)
    if only_if:
        where += " AND status = ANY(%s)"
        params.append(list(only_if))
    with _cursor(target) as cur:
        cur.execute(f"UPDATE events SET {', '.join(sets)} WHERE {where} RETURNING {COLUMNS}", params)
        row = cur.fetchone()
    return _row(row) if row else None


def get(target, event_id: str) -> dict | None:
    try:
        uuid.UUID(str(event_id))
    except ValueError:
        return None
    with _cursor(target) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM events WHERE id = %s", (event_id,))
        row = cur.fetchone()
    return _row(row) if row else None


def topic_clause(topic: str) -> tuple[str, str]:
    """`server.*` matches by prefix; anything else exactly."""
    if topic.endswith("*"):
        prefix = topic[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "topic LIKE %s", prefix + "%"
    return "topic = %s", topic


def query(
    target,
    *,
    topic: str | None = None,
    status: str | list[str] | None = None,
    created_since: datetime.datetime | None = None,
    created_until: datetime.datetime | None = None,
    updated_since: datetime.datetime | None = None,
    updated_until: datetime.datetime | None = None,
    before: tuple[datetime.datetime, str] | None = None,
    limit: int = 100,
) -> list[dict]:
    """Events newest first; `before` is the (created_at, id) cursor of the last page's end."""
    where, params = [], []
    if topic:
        clause, value = topic_clause(topic)
        where.append(clause)
        params.append(value)
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append("status = ANY(%s)")
        params.append(statuses)
    for column, op, value in (
        ("created_at", ">=", created_since),
        ("created_at", "<", created_until),
        ("updated_at", ">=", updated_since),
        ("updated_at", "<", updated_until),
    ):
        if value is not None:
            where.append(f"{column} {op} %s")
            params.append(value)
    if before is not None:
        where.append("(created_at, id) < (%s, %s)")
        params.extend(before)
    sql = f"SELECT {COLUMNS} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
    params.append(limit)
    with _cursor(target) as cur:
        cur.execute(sql, params)
        return [_row(r) for r in cur.fetchall()]


class Listener:
    """A dedicated autocommit connection that LISTENs on channels: the one LISTEN of every process.

    A program's loop blocks in `wait`; the web worker's event loop watches
    `fileno()` (add_reader) and takes what arrived with `received`
    (server/api/stream.py). A lost connection raises one of `db.BROKEN` from
    either: the caller reconnects, and assumes it missed notifications meanwhile.
    """

    def __init__(self, url: str, channels: tuple[str, ...] = (CHANNEL,), application_name: str = "ayon-listen"):
        self.conn = dbmod.connect(url, application_name)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            for channel in channels:
                cur.execute(f"LISTEN {channel}")

    def fileno(self) -> int:
        return self.conn.fileno()

    def wait(self, timeout: float) -> list[tuple[str, Any]]:
        """Notifications received within `timeout` seconds, as (channel, payload decoded when JSON)."""
        if not self.conn.notifies:
            select.select([self.conn], [], [], timeout)
        return self.received()

    def received(self) -> list[tuple[str, Any]]:
        """The notifications that arrived, without blocking (the poll also surfaces a dead connection)."""
        self.conn.poll()
        found = []
        while self.conn.notifies:
            note = self.conn.notifies.pop(0)
            try:
                payload = json.loads(note.payload)
            except ValueError:
                payload = note.payload
            found.append((note.channel, payload))
        return found

    def close(self) -> None:
        self.conn.close()
