"""List endpoints whose JSON PostgreSQL builds: one round trip, opaque cursors, UTC timestamps."""

import base64
import datetime
import re
import uuid
from typing import Any

import falcon

from server.core.db import Connection, Database, execute_prepared


def utc_json(column: str) -> str:
    """SQL rendering a timestamptz as the API writes times (times.rfc3339), whatever the session's time zone."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def cursor_sql(*parts: str) -> str:
    """SQL building an opaque, URL-safe cursor (base64url without padding) from text parts."""
    joined = " || '|' || ".join(f"({p})::text" for p in parts)
    return f"translate(encode(convert_to({joined}, 'UTF8'), 'base64'), E'+/=\\n', '-_')"


def not_a_cursor(name: str = "cursor") -> falcon.HTTPBadRequest:
    """The one answer to a cursor (or a Last-Event-ID) this server did not hand out."""
    return falcon.HTTPBadRequest(title="Invalid query parameter",
                                 description=f"'{name}': not a cursor returned by a previous page")


def decode_cursor(raw: str, name: str = "cursor") -> list[str]:
    """The parts of a cursor made by cursor_sql; anything else is a 400 naming the parameter."""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except ValueError:  # binascii.Error, non-ASCII text, UnicodeDecodeError
        text = ""
    parts = text.split("|")
    if len(parts) < 2:
        raise not_a_cursor(name)
    return parts


def cursor_time(value: str, name: str = "cursor") -> datetime.datetime:
    """A cursor's time, in UTC: a stream compares it with aware times, and PostgreSQL takes any UTC time Python has.

    Cursors carry `Z`: a time without a zone is no cursor of ours, and an
    offset is folded here (PostgreSQL refuses those past 15:59:59).
    """
    try:
        found = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if found.tzinfo is None:
            raise ValueError(value)
        return found.astimezone(datetime.timezone.utc)
    except (ValueError, OverflowError):
        raise not_a_cursor(name) from None


def cursor_uuid(value: str, name: str = "cursor") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_a_cursor(name) from None


# A count of rows already shown, as PostgreSQL's OFFSET (bigint) takes it; never int() of thousands of digits.
_COUNT = re.compile(r"[0-9]{1,18}").fullmatch


def cursor_int(value: str, name: str = "cursor") -> int:
    if not _COUNT(value):
        raise not_a_cursor(name)
    return int(value)


def fetch_text(db: Database, sql: str, params: Any = None) -> str | None:
    """First column of the first row of one read-only statement, in autocommit: a single round trip.

    PostgreSQL renders times in JSON in the session's time zone; the API's
    answers are in UTC whatever the server's default, so a connection that is
    not in UTC yet is switched once (it carries no other state).
    """
    with db.connection() as conn:
        conn.autocommit = True  # the pool turns it off again when the connection goes back
        with conn.cursor() as cur:
            if conn.get_parameter_status("TimeZone") not in UTC_NAMES:
                cur.execute("SET TIME ZONE 'UTC'")
            if isinstance(params, dict) and isinstance(conn, Connection):
                execute_prepared(conn, cur, sql, params)
            else:
                cur.execute(sql, params)
            row = cur.fetchone()
    return row[0] if row else None


UTC_NAMES = ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT")


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def send_json_text(resp, text: str) -> None:
    resp.text = text
    resp.content_type = falcon.MEDIA_JSON
