"""`fastapi-tuned`: the two endpoints as a competent FastAPI deployment serves them.

uvicorn on uvloop with httptools; asyncpg (its statement cache prepares the
page query once per connection, and the pool skips its per-release reset
round trip: these queries leave no session state); the page is joined from
the stored event documents (`events.doc`, the same texts the server sends)
and the answer is orjson bytes. The same bearer-token check as the server.
Served by `python -m bench.http.uvicorn_run bench.http.fastapi_tuned:app
--loop uvloop --http httptools`; reads BENCH_POSTGRES_URL and BENCH_TOKEN.
"""

import base64
import datetime
import hmac
import os
import time
from contextlib import asynccontextmanager

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Response

URL = os.environ["BENCH_POSTGRES_URL"]
TOKEN = os.environ["BENCH_TOKEN"].encode()
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "4"))
STARTED = time.time()

# One row more than asked tells whether there is a next page, as in the server.
PAGE_SQL = "SELECT doc, created_at, id FROM events ORDER BY created_at DESC, id DESC LIMIT $1"

pool: asyncpg.Pool | None = None


async def _keep_session(_conn) -> None:
    """No reset on release: read-only autocommit queries change nothing in the session."""


@asynccontextmanager
async def lifespan(_app):
    global pool
    pool = await asyncpg.create_pool(URL, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=_keep_session)
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


def json_response(value) -> Response:
    return Response(orjson.dumps(value), media_type="application/json")


async def require_token(authorization: str = Header("")) -> None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), TOKEN):
        raise HTTPException(status_code=401, detail="invalid token", headers={"WWW-Authenticate": "Bearer"})


def cursor(created: datetime.datetime, event_id) -> str:
    """The server's cursor: base64url (no padding) of the UTC time and the id."""
    text = f"{created.astimezone(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}|{event_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@app.get("/api/info")
async def info() -> Response:
    return json_response({"version": "0.0.0", "instance_id": "bench", "roles": ["server"], "schema_version": None,
                          "schema_current": True, "pid": os.getpid(),
                          "uptime_seconds": round(time.time() - STARTED, 3)})


@app.get("/api/events", dependencies=[Depends(require_token)])
async def events(limit: int = Query(100, ge=1, le=1000)) -> Response:
    rows = await pool.fetch(PAGE_SQL, limit + 1)
    page = rows[:limit]
    next_cursor = cursor(page[-1][1], page[-1][2]) if len(rows) > limit else None
    # The stored documents go out as they are: orjson embeds each text without parsing it.
    return json_response({"events": [orjson.Fragment(row[0]) for row in page], "next_cursor": next_cursor})
