"""The peer: the same two endpoints as FastAPI + asyncpg, as most comparable servers are built.

Run with `uvicorn bench.http.peer_fastapi:app --workers 2`; reads
BENCH_POSTGRES_URL and BENCH_TOKEN from the environment.
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


def _serve(port: int) -> None:
    import socket

    import uvicorn

    # Each process listens on its own SO_REUSEPORT socket: the kernel spreads
    # connections evenly, as gunicorn does with reuse_port.
    # TCP_NODELAY on the listening socket, which Linux passes on to accepted ones: without
    # it (uvicorn's --workers sockets lack it) every response waited ~40 ms on a delayed
    # ACK and the peer served ~700 req/s.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    uvicorn.Server(uvicorn.Config("bench.http.peer_fastapi:app")).run(sockets=[sock])


def main() -> None:
    """`python -m bench.http.peer_fastapi --port P --workers N`: N uvicorn processes on reuse-port sockets."""
    import argparse
    import subprocess
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.http.peer_fastapi")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.port)
        return
    children = [subprocess.Popen([sys.executable, "-m", "bench.http.peer_fastapi", "--serve", "--port", str(args.port)])
                for _ in range(args.workers)]
    sys.exit(max(child.wait() for child in children))


if __name__ == "__main__":
    main()
