r"""`db-ceiling`: a bare falcon ASGI app issuing exactly the server's page query, with the fastest driver found.

What this stack (gunicorn's asgi worker, falcon, PostgreSQL) can do for
`/api/events`: no middleware, no metrics, no access log, the bearer token
compared in place, and the page statement of GET /api/events with no filter
prepared once per connection with a generic plan
(`plan_cache_mode = force_generic_plan`). Two drivers (BENCH_DRIVER):

- `psycopg2` (default, the faster here): psycopg2 in asynchronous mode
  (`async_=1`), waited on with the loop's add_reader/add_writer, so no
  query crosses to a thread; PREPARE/EXECUTE like the server.
- `asyncpg`: its own prepared statements (extended protocol), the pool's
  per-release reset skipped.

Served by gunicorn (`-k asgi --asgi-loop uvloop --reuse-port`); reads
BENCH_POSTGRES_URL, BENCH_TOKEN, BENCH_DRIVER and BENCH_POOL_SIZE.
"""

import asyncio
import hmac
import json
import os

import falcon
import falcon.asgi

# The server's own wait on an asynchronous psycopg2 connection, on the running loop.
from server.core.aiodb import wait

# Copied from server/api/events.py (LIST_SQL for `?limit=50`, no filter), with
# %(limit)s as $1 as server/core/db.py's execute_prepared sends it; the harness's
# test fails when the server's statement changes, so this copy is refreshed.
PAGE_SQL = r"""
WITH found AS (
    SELECT created_at, id, doc FROM events  ORDER BY created_at DESC, id DESC LIMIT $1 + 1
)
SELECT '{"events": [' || coalesce((SELECT string_agg(doc, ',' ORDER BY created_at DESC, id DESC)
                        FROM (SELECT * FROM found ORDER BY created_at DESC, id DESC LIMIT $1) p), '')
    || '], "next_cursor": ' || coalesce(to_json(CASE WHEN EXISTS (SELECT FROM found OFFSET $1) THEN
        (SELECT translate(encode(convert_to((to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text || '|' || (id)::text, 'UTF8'), 'base64'), E'+/=\n', '-_') FROM (
            -- Only the page's last row is encoded, not every row the OFFSET skips.
            SELECT created_at, id FROM found ORDER BY created_at DESC, id DESC OFFSET $1 - 1 LIMIT 1) last)
        END)::text, 'null') || '}'
"""

GENERIC_PLAN = "SET plan_cache_mode = force_generic_plan"
APPLICATION_NAME = "ayon-bench-db-ceiling"


class Psycopg2Pages:
    """`size` asynchronous psycopg2 connections, opened on first use; a failed one is dropped and reopened."""

    def __init__(self, url: str, size: int):
        self.url = url
        # None stands for a connection still to open: a failure puts one back, so no waiter starves.
        self.idle: asyncio.Queue = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(None)

    async def _open(self):
        import psycopg2

        conn = psycopg2.connect(self.url, async_=1, application_name=APPLICATION_NAME)
        try:
            await wait(conn)
            cur = conn.cursor()
            cur.execute(GENERIC_PLAN)
            await wait(conn)
            cur.execute("PREPARE page AS " + PAGE_SQL)
            await wait(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def page(self, limit: int) -> bytes:
        conn = await self.idle.get()
        try:
            if conn is None:
                conn = await self._open()
            cur = conn.cursor()
            cur.execute("EXECUTE page (%s)", (limit,))
            await wait(conn)
            text = cur.fetchone()[0]
        except BaseException:
            if conn is not None:
                conn.close()
            self.idle.put_nowait(None)
            raise
        self.idle.put_nowait(conn)
        return text.encode()


class AsyncpgPages:
    """An asyncpg pool opened on first use; asyncpg prepares and caches the statement per connection."""

    def __init__(self, url: str, size: int):
        self.url, self.size = url, size
        self.pool = None
        self.lock = asyncio.Lock()

    async def page(self, limit: int) -> bytes:
        if self.pool is None:
            async with self.lock:
                if self.pool is None:
                    self.pool = await self._create()
        return (await self.pool.fetchval(PAGE_SQL, limit)).encode()

    async def _create(self):
        import asyncpg

        async def keep_session(_conn) -> None:
            """No reset on release: the page query leaves no session state."""

        return await asyncpg.create_pool(
            self.url, min_size=self.size, max_size=self.size, reset=keep_session,
            server_settings={"plan_cache_mode": "force_generic_plan", "application_name": APPLICATION_NAME})


DRIVERS = {"psycopg2": Psycopg2Pages, "asyncpg": AsyncpgPages}


class Events:
    def __init__(self, pages, token: str):
        self.pages = pages
        self.token = token.encode()

    async def on_get(self, req, resp):
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token):
            raise falcon.HTTPUnauthorized(title="Invalid token", challenges=["Bearer"])
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = await self.pages.page(limit)


class Info:
    """A constant answer with the worker's pid (the harness checks both workers answer)."""

    def __init__(self):
        self.body = json.dumps({"version": "0.0.0", "status": "constant", "pid": os.getpid()}).encode()

    async def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body


def create_app(pages, token: str) -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.add_route("/api/events", Events(pages, token))
    app.add_route("/api/info", Info())
    return app


def get_app() -> falcon.asgi.App:
    """The app for gunicorn, from the BENCH_* environment."""
    driver = os.environ.get("BENCH_DRIVER", "psycopg2")
    pages = DRIVERS[driver](os.environ["BENCH_POSTGRES_URL"], int(os.environ.get("BENCH_POOL_SIZE", "4")))
    return create_app(pages, os.environ["BENCH_TOKEN"])
