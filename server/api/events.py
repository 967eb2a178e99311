"""GET /api/events (filtered, newest first, cursor pages) and GET /api/events/{id}."""

import uuid

import falcon

from server.core import events
from server.api.common import check_params, int_between, param, timestamp
from server.api.pages import (cursor_sql, cursor_time, cursor_uuid, decode_cursor, fetch_text, like_escape,
                              send_json_text, text_param, utc_json)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

COLUMNS = events.COLUMNS

# The page and the cursor of its last row in one statement. Each event's JSON is
# rendered when it is written (migration 0004: events.doc, times in UTC), so a
# page is a join of stored texts and Python only passes it on. One row more
# than asked tells whether there is a next page.
LIST_SQL = f"""
WITH found AS (
    SELECT created_at, id, doc FROM events {{where}} ORDER BY created_at DESC, id DESC LIMIT %(limit)s + 1
)
SELECT '{{{{"events": [' || coalesce((SELECT string_agg(doc, ',' ORDER BY created_at DESC, id DESC)
                        FROM (SELECT * FROM found ORDER BY created_at DESC, id DESC LIMIT %(limit)s) p), '')
    || '], "next_cursor": ' || coalesce(to_json(CASE WHEN EXISTS (SELECT FROM found OFFSET %(limit)s) THEN
        (SELECT {cursor_sql(utc_json('created_at'), 'id')} FROM (
            -- Only the page's last row is encoded, not every row the OFFSET skips.
            SELECT created_at, id FROM found ORDER BY created_at DESC, id DESC OFFSET %(limit)s - 1 LIMIT 1) last)
        END)::text, 'null') || '}}}}'
"""

GET_SQL = "SELECT doc FROM events WHERE id = %s"

FILTERS = {"topic", "status", "created_since", "created_until", "updated_since", "updated_until", "limit", "cursor"}


def topic_pattern(raw: str) -> str:
    """`server.*` (a prefix) or an exact topic; `*` only at the end."""
    if "*" in raw[:-1]:
        raise ValueError(f"expected an exact topic or a prefix ending in '*' such as 'server.*', got {raw!r}")
    return raw


def statuses(raw: str) -> list[str]:
    """One status or several separated by commas."""
    found = [s.strip() for s in raw.split(",") if s.strip()]
    for status in found:
        if status not in events.STATUSES:
            raise ValueError(f"{status!r} is not one of {', '.join(events.STATUSES)}")
    return found


def list_query(req) -> tuple[str, dict]:
    """The SQL and parameters of one page of GET /api/events from the query string."""
    check_params(req, FILTERS)
    where, params = [], {"limit": param(req, "limit", int_between(1, MAX_LIMIT), DEFAULT_LIMIT)}
    topic = text_param(req, "topic", topic_pattern)
    if topic:
        if topic.endswith("*"):
            where.append("topic LIKE %(topic)s")
            params["topic"] = like_escape(topic[:-1]) + "%"
        else:
            where.append("topic = %(topic)s")
            params["topic"] = topic
    status = text_param(req, "status", statuses)
    if status:
        where.append("status = ANY(%(status)s)")
        params["status"] = status
    for name, column, op in (
        ("created_since", "created_at", ">="),
        ("created_until", "created_at", "<"),
        ("updated_since", "updated_at", ">="),
        ("updated_until", "updated_at", "<"),
    ):
        value = param(req, name, timestamp)
        if value is not None:
            where.append(f"{column} {op} %({name})s")
            params[name] = value
    raw_cursor = param(req, "cursor", str)
    if raw_cursor:
        created, event_id = decode_cursor(raw_cursor)[:2]
        where.append("(created_at, id) < (%(c_created)s, %(c_id)s::uuid)")
        params["c_created"], params["c_id"] = cursor_time(created), cursor_uuid(event_id)
    sql = LIST_SQL.format(where=("WHERE " + " AND ".join(where)) if where else "")
    return sql, params


class EventList:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        sql, params = list_query(req)
        send_json_text(resp, await self.ctx.run(fetch_text, self.ctx.db, sql, params))


class EventItem:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp, event_id):
        check_params(req, set())
        try:
            uuid.UUID(event_id)
        except ValueError:
            raise falcon.HTTPBadRequest(title="Invalid path parameter",
                                        description=f"'id': expected a UUID, got {event_id!r}") from None
        text = await self.ctx.run(fetch_text, self.ctx.db, GET_SQL, (event_id,))
        if text is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"no event with id {event_id}")
        send_json_text(resp, text)


def register(app, ctx) -> None:
    app.add_route("/api/events", EventList(ctx))
    app.add_route("/api/events/{event_id}", EventItem(ctx))


_TIME = {"type": "string", "format": "date-time"}


def _query(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "topic", "status", "description", "summary", "payload", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "topic": {"type": "string"},
        "status": {"type": "string", "enum": list(events.STATUSES)},
        "description": {"type": "string"},
        "summary": {"type": "object"},
        "payload": {"type": "object"},
        "sender": {"type": ["string", "null"]},
        "depends_on": {"type": ["string", "null"], "format": "uuid"},
        "created_at": _TIME,
        "updated_at": _TIME,
    },
}

OPENAPI = {
    "/api/events": {
        "get": {
            "summary": "List events, newest first",
            "tags": ["events"],
            "parameters": [
                _query("topic", "An exact topic, or a prefix ending in '*' such as 'server.*'.",
                       {"type": "string", "pattern": r"^[^*]*\*?$"}),
                _query("status", "One status, or several separated by commas.", {"type": "string"}),
                _query("created_since", "Created at or after this time.", _TIME),
                _query("created_until", "Created before this time.", _TIME),
                _query("updated_since", "Updated at or after this time.", _TIME),
                _query("updated_until", "Updated before this time.", _TIME),
                _query("limit", f"Events per page (default {DEFAULT_LIMIT}).",
                       {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
                _query("cursor", "The next_cursor of the previous page.", {"type": "string"}),
            ],
            "responses": {
                "200": {"description": "One page of events", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["events", "next_cursor"],
                    "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                                   "next_cursor": {"type": ["string", "null"]}}}}}},
            },
        }
    },
    "/api/events/{event_id}": {
        "get": {
            "summary": "One event",
            "tags": ["events"],
            "parameters": [{"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "The event's id (a UUID)."}],
            "responses": {
                "200": {"description": "The event", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Event"}}}},
                "404": {"$ref": "#/components/responses/NotFound"},
            },
        }
    },
}

SCHEMAS = {"Event": EVENT_SCHEMA}
