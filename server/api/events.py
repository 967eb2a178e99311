"""GET /api/events (filtered, newest first, cursor pages) and GET /api/events/{id}."""

import functools

import falcon

from server.api.pages import (
    cursor_sql,
    cursor_time,
    cursor_uuid,
    decode_cursor,
    like_escape,
    send_json_text,
    utc_json,
)
from server.api.spec import PathParam, Query, Reply, Shape, operation
from server.core import events
from server.core.values import AnyText, Choice, Integer, ListOf, Text, Timestamp, Uuid

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

COLUMNS = events.COLUMNS

# The page and the cursor of its last row in one statement. Each event's JSON is
# rendered when it is written (migrations 0004 and 0005: events.doc, times as rfc3339), so a
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

GET_SQL = "SELECT doc FROM events WHERE id = %(id)s"

# An exact topic, or a prefix ending in '*'; `*` nowhere else (GET /api/events/stream takes several).
TOPIC_FILTER = Text(max_length=200, pattern=r"[^*]*\*?",
                    what="an exact topic or a prefix ending in '*' such as 'server.*'")

EVENT = Shape("Event", {
    "type": "object",
    "required": ["id", "topic", "status", "description", "summary", "payload", "created_at", "updated_at"],
    "properties": {
        "id": Uuid().schema(),
        "topic": {"type": "string"},
        "status": {"type": "string", "enum": list(events.STATUSES)},
        "description": {"type": "string"},
        "summary": {"type": "object"},
        "payload": {"type": "object"},
        "sender": {"type": ["string", "null"]},
        "depends_on": {"type": ["string", "null"], "format": "uuid"},
        "created_at": Timestamp().schema(),
        "updated_at": Timestamp().schema(),
    },
})

PAGE = {"type": "object", "required": ["events", "next_cursor"],
        "properties": {"events": {"type": "array", "items": EVENT}, "next_cursor": {"type": ["string", "null"]}}}

TIME_FILTERS = (("created_since", "created_at", ">="), ("created_until", "created_at", "<"),
                ("updated_since", "updated_at", ">="), ("updated_until", "updated_at", "<"))


def list_query(query) -> tuple[str, dict]:
    """The SQL and parameters of one page of GET /api/events from its checked query parameters."""
    where, params = [], {"limit": query["limit"]}
    topic = query["topic"]
    if topic:
        if topic.endswith("*"):
            where.append("topic LIKE %(topic)s")
            params["topic"] = like_escape(topic[:-1]) + "%"
        else:
            where.append("topic = %(topic)s")
            params["topic"] = topic
    if query["status"]:
        where.append("status = ANY(%(status)s)")
        params["status"] = query["status"]
    for name, column, op in TIME_FILTERS:
        if query[name] is not None:
            where.append(f"{column} {op} %({name})s")
            params[name] = query[name]
    if query["cursor"]:
        created, event_id = decode_cursor(query["cursor"])[:2]
        where.append("(created_at, id) < (%(c_created)s, %(c_id)s::uuid)")
        params["c_created"], params["c_id"] = cursor_time(created), cursor_uuid(event_id)
    return page_sql(tuple(where)), params


@functools.cache
def page_sql(conditions: tuple[str, ...]) -> str:
    """LIST_SQL for these conditions, built once: the same string object each time, whose hash Python keeps."""
    return LIST_SQL.format(where=("WHERE " + " AND ".join(conditions)) if conditions else "")


def plan_fits_all(params: dict) -> bool:
    """Whether one plan serves every value of the page's parameters: the newest events, after a cursor or not.

    The filters' selectivity depends on their values (a rare topic, a narrow
    time range), so a filtered page is planned for its values.
    """
    return params.keys() <= {"limit", "c_created", "c_id"}


class EventList:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("List events, newest first", tags=["events"], query=[
        Query("topic", TOPIC_FILTER, "An exact topic, or a prefix ending in '*' such as 'server.*'."),
        Query("status", ListOf(Choice(events.STATUSES)), "One status, or several separated by commas."),
        Query("created_since", Timestamp(), "Created at or after this time."),
        Query("created_until", Timestamp(), "Created before this time."),
        Query("updated_since", Timestamp(), "Updated at or after this time."),
        Query("updated_until", Timestamp(), "Updated before this time."),
        Query("limit", Integer(1, MAX_LIMIT), "Events per page.", DEFAULT_LIMIT),
        Query("cursor", AnyText(), "The next_cursor of the previous page."),
    ], responses={200: Reply("One page of events", PAGE)})
    async def on_get(self, req, resp):
        sql, params = list_query(req.context.query)
        send_json_text(resp, await self.ctx.fetch_text(sql, params, generic=plan_fits_all(params)))


class EventItem:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("One event", tags=["events"],
               path=[PathParam("event_id", Uuid(), "The event's id.", label="id")],
               responses={200: Reply("The event", EVENT), 404: "No event with this id"})
    async def on_get(self, req, resp, event_id):
        text = await self.ctx.fetch_text(GET_SQL, {"id": event_id}, generic=True)
        if text is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"no event with id {event_id}")
        send_json_text(resp, text)
