"""GET /api/logs: stored log records, newest first, filtered and paginated."""

from server.api.pages import (
    cursor_int,
    cursor_sql,
    cursor_time,
    decode_cursor,
    like_escape,
    send_json_text,
    utc_json,
)
from server.api.spec import Query, Reply, Shape, operation
from server.core.values import AnyText, Choice, Integer, Text, Timestamp

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Records have no key of their own, so ties on ts are broken by a fixed order of
# the other columns and a cursor is (ts of the last row, how many rows of that ts
# were already shown): the next page skips exactly those.
ORDER = "ts DESC, instance, program, pid, logger, message"

RECORD_JSON = f"""json_build_object(
    'ts', {utc_json('ts')}, 'level', level, 'instance', instance, 'program', program, 'pid', pid,
    'logger', logger, 'message', message, 'extras', extras, 'exc', exc)"""

LIST_SQL = f"""
WITH found AS (
    SELECT *, row_number() OVER () AS n FROM (
        SELECT * FROM logs {{where}} ORDER BY {ORDER} OFFSET %(skip)s LIMIT %(limit)s + 1
    ) ordered
), page AS (
    SELECT * FROM found WHERE n <= %(limit)s
), last AS (
    SELECT ts FROM page ORDER BY n DESC LIMIT 1
)
SELECT json_build_object(
    'logs', coalesce((SELECT json_agg({RECORD_JSON} ORDER BY n) FROM page), '[]'::json),
    'next_cursor', CASE WHEN (SELECT count(*) FROM found) > %(limit)s THEN
        (SELECT {cursor_sql(utc_json('last.ts'),
                            "(SELECT count(*) FROM page WHERE page.ts = last.ts) "
                            "+ CASE WHEN last.ts = %(c_ts)s THEN %(skip)s ELSE 0 END")} FROM last) END
)::text
"""

LOG_RECORD = Shape("LogRecord", {
    "type": "object",
    "required": ["ts", "level", "instance", "program", "message"],
    "properties": {
        "ts": Timestamp().schema(), "level": {"type": "string"}, "instance": {"type": "string"},
        "program": {"type": "string"}, "pid": {"type": ["integer", "null"]},
        "logger": {"type": ["string", "null"]}, "message": {"type": "string"},
        "extras": {"type": ["object", "null"]}, "exc": {"type": ["string", "null"]},
    },
})

PAGE = {"type": "object", "required": ["logs", "next_cursor"],
        "properties": {"logs": {"type": "array", "items": LOG_RECORD}, "next_cursor": {"type": ["string", "null"]}}}


def list_query(query) -> tuple[str, dict]:
    """The SQL and parameters of one page of GET /api/logs from its checked query parameters."""
    where = []
    params = {"limit": query["limit"], "skip": 0, "c_ts": None}
    if query["level"]:
        where.append("level = ANY(%(levels)s)")
        params["levels"] = list(LEVELS[LEVELS.index(query["level"].upper()):])  # the level and those above
    for name in ("instance", "program"):
        if query[name]:
            where.append(f"{name} = %({name})s")
            params[name] = query[name]
    if query["since"] is not None:
        where.append("ts >= %(since)s")
        params["since"] = query["since"]
    if query["until"] is not None:
        where.append("ts < %(until)s")
        params["until"] = query["until"]
    if query["text"]:
        where.append("message ILIKE %(text)s")
        params["text"] = "%" + like_escape(query["text"]) + "%"
    if query["cursor"]:
        ts, skip = decode_cursor(query["cursor"])[:2]
        params["c_ts"], params["skip"] = cursor_time(ts), cursor_int(skip)
        where.append("ts <= %(c_ts)s")
    sql = LIST_SQL.format(where=("WHERE " + " AND ".join(where)) if where else "")
    return sql, params


class Logs:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("Stored log records, newest first", tags=["logs"], query=[
        Query("level", Choice(tuple(level.lower() for level in LEVELS)), "This level and above."),
        Query("instance", AnyText(), "Only this instance."),
        Query("program", AnyText(), "Only this program."),
        Query("since", Timestamp(), "At or after this time."),
        Query("until", Timestamp(), "Before this time."),
        Query("text", Text(max_length=200), "Messages containing this text (case-insensitive)."),
        Query("limit", Integer(1, MAX_LIMIT), "Records per page.", DEFAULT_LIMIT),
        Query("cursor", AnyText(), "The next_cursor of the previous page."),
    ], responses={200: Reply("One page of log records", PAGE)})
    async def on_get(self, req, resp):
        sql, params = list_query(req.context.query)
        send_json_text(resp, await self.ctx.fetch_text(sql, params))
