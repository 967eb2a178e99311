"""GET /api/logs: stored log records, newest first, filtered and paginated."""

from server.api.common import check_params, int_between, param, timestamp
from server.api.pages import (cursor_int, cursor_sql, cursor_time, decode_cursor, fetch_text, like_escape,
                              send_json_text, text_param, utc_json)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Records have no key of their own, so ties on ts are broken by a fixed order of
# the other columns and a cursor is (ts of the last row, how many rows of that ts
# were already shown): the next page skips exactly those.
ORDER = "ts DESC, instance, program, pid, logger, message"

RECORD_JSON = """json_build_object(
    'ts', ts, 'level', level, 'instance', instance, 'program', program, 'pid', pid,
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

FILTERS = {"level", "instance", "program", "since", "until", "text", "limit", "cursor"}


def level_at_least(raw: str) -> list[str]:
    """The named level and every level above it."""
    name = raw.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"expected one of {', '.join(l.lower() for l in LEVELS)}, got {raw!r}")
    return list(LEVELS[LEVELS.index(name):])


def text_filter(raw: str) -> str:
    if len(raw) > 200:
        raise ValueError("expected at most 200 characters")
    return raw


def list_query(req) -> tuple[str, dict]:
    """The SQL and parameters of one page of GET /api/logs from the query string."""
    check_params(req, FILTERS)
    where = []
    params = {"limit": param(req, "limit", int_between(1, MAX_LIMIT), DEFAULT_LIMIT), "skip": 0, "c_ts": None}
    levels = param(req, "level", level_at_least)
    if levels:
        where.append("level = ANY(%(levels)s)")
        params["levels"] = levels
    for name in ("instance", "program"):
        value = param(req, name, str)
        if value:
            where.append(f"{name} = %({name})s")
            params[name] = value
    since, until = param(req, "since", timestamp), param(req, "until", timestamp)
    if since is not None:
        where.append("ts >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("ts < %(until)s")
        params["until"] = until
    text = text_param(req, "text", text_filter)
    if text:
        where.append("message ILIKE %(text)s")
        params["text"] = "%" + like_escape(text) + "%"
    raw_cursor = param(req, "cursor", str)
    if raw_cursor:
        ts, skip = decode_cursor(raw_cursor)[:2]
        params["c_ts"], params["skip"] = cursor_time(ts), cursor_int(skip)
        where.append("ts <= %(c_ts)s")
    sql = LIST_SQL.format(where=("WHERE " + " AND ".join(where)) if where else "")
    return sql, params


class Logs:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        sql, params = list_query(req)
        send_json_text(resp, await self.ctx.run(fetch_text, self.ctx.db, sql, params))


def register(app, ctx) -> None:
    app.add_route("/api/logs", Logs(ctx))


def _query(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_TIME = {"type": "string", "format": "date-time"}

OPENAPI = {
    "/api/logs": {
        "get": {
            "summary": "Stored log records, newest first",
            "tags": ["logs"],
            "parameters": [
                _query("level", "This level and above.", {"type": "string", "enum": [l.lower() for l in LEVELS]}),
                _query("instance", "Only this instance.", {"type": "string"}),
                _query("program", "Only this program.", {"type": "string"}),
                _query("since", "At or after this time.", _TIME),
                _query("until", "Before this time.", _TIME),
                _query("text", "Messages containing this text (case-insensitive).",
                       {"type": "string", "maxLength": 200}),
                _query("limit", f"Records per page (default {DEFAULT_LIMIT}).",
                       {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
                _query("cursor", "The next_cursor of the previous page.", {"type": "string"}),
            ],
            "responses": {
                "200": {"description": "One page of log records", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["logs", "next_cursor"],
                    "properties": {
                        "logs": {"type": "array", "items": {"$ref": "#/components/schemas/LogRecord"}},
                        "next_cursor": {"type": ["string", "null"]}}}}}},
            },
        }
    }
}

SCHEMAS = {
    "LogRecord": {
        "type": "object",
        "required": ["ts", "level", "instance", "program", "message"],
        "properties": {
            "ts": _TIME, "level": {"type": "string"}, "instance": {"type": "string"},
            "program": {"type": "string"}, "pid": {"type": ["integer", "null"]},
            "logger": {"type": ["string", "null"]}, "message": {"type": "string"},
            "extras": {"type": ["object", "null"]}, "exc": {"type": ["string", "null"]},
        },
    }
}
