"""`fastapi-default`: the two endpoints as FastAPI + asyncpg are usually first written.

Row dicts through FastAPI's own encoder, uvicorn on the asyncio loop with
h11. Served by `python -m bench.http.uvicorn_run bench.http.fastapi_default:app
--loop asyncio --http h11`; reads BENCH_POSTGRES_URL and BENCH_TOKEN.
"""

import hmac
import json
import os
import time
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Header, HTTPException, Query

URL = os.environ["BENCH_POSTGRES_URL"]
TOKEN = os.environ["BENCH_TOKEN"]
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "4"))
STARTED = time.time()

COLUMNS = "id, topic, status, description, summary, payload, sender, depends_on, created_at, updated_at"

pool: asyncpg.Pool | None = None


async def _json_codec(conn) -> None:
    # Decode jsonb like the server does, so both send the same document.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def lifespan(_app):
    global pool
    pool = await asyncpg.create_pool(URL, min_size=POOL_SIZE, max_size=POOL_SIZE, init=_json_codec)
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/api/info")
async def info() -> dict:
    return {"version": "0.0.0", "instance_id": "bench", "roles": ["server"], "schema_version": None,
            "uptime_seconds": round(time.time() - STARTED, 3), "pid": os.getpid()}


@app.get("/api/events")
async def events(limit: int = Query(100, ge=1, le=1000), authorization: str = Header("")) -> dict:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), TOKEN.encode()):
        raise HTTPException(status_code=401, detail="invalid token")
    rows = await pool.fetch(f"SELECT {COLUMNS} FROM events ORDER BY created_at DESC, id DESC LIMIT $1", limit)
    found = []
    for row in rows:
        record = dict(row)
        record["id"] = str(record["id"])
        if record["depends_on"] is not None:
            record["depends_on"] = str(record["depends_on"])
        found.append(record)
    return {"events": found}
