"""bench/upload: a large package upload, from its body in memory to committed, against a ceiling and the old way.

`python -m bench.upload [--mb 60] [--runs 3] [--strict]` on an embedded
PostgreSQL (or BENCH_POSTGRES_URL's server). Each run stores a new zip of
incompressible content (no deduplication) and times, median of the runs:

- `store`: what POST /api/addons does once the body is read: validate the zip
  and its manifest, hash it, store the blob by binary COPY, record the
  package and its install requests, commit (server/core/packages.py store);
- `ceiling`: the same bytes written by a bare binary COPY of one row, commit;
- `bytea literal`: the way uploads were stored before, an INSERT with
  psycopg2.Binary, commit.

The target: `store` under 0.5 s for 60 MB. `--strict` exits 1 when missed.
"""

import argparse
import hashlib
import io
import os
import statistics
import sys
import time
import zipfile

import psycopg2

from bench.http.database import BenchDatabase
from server.core import db, packages

TARGET_SECONDS = 0.5


def package(mb: int, n: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("package.yaml", f"name: bench\nversion: '{n}'\n")
        zf.writestr("payload.bin", os.urandom(mb * 2**20))
    return buffer.getvalue()


def timed(conn, work) -> float:
    started = time.perf_counter()
    with conn, conn.cursor() as cur:
        work(cur)
    return time.perf_counter() - started


def clear(conn) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE package_installs, packages, package_blobs")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=60, help="payload size in MiB (default 60)")
    parser.add_argument("--runs", type=int, default=3, help="runs per way, median reported (default 3)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when `store` misses its target")
    args = parser.parse_args()
    database = BenchDatabase(os.environ.get("BENCH_POSTGRES_URL", ""))
    conn = db.connect(database.url, "ayon-bench-upload")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO instances (instance_id, program) VALUES ('bench', 'installer')")
        ways = {
            "store": lambda body: lambda cur: packages.store(cur, body, "addon"),
            "ceiling": lambda body: lambda cur: cur.copy_expert(
                packages._COPY_BLOB, packages._CopyRow(hashlib.sha256(body).hexdigest(), body),
                size=packages._COPY_CHUNK),
            "bytea literal": lambda body: lambda cur: cur.execute(
                "INSERT INTO package_blobs (sha256, data, size) VALUES (%s, %s, %s)",
                (hashlib.sha256(body).hexdigest(), psycopg2.Binary(body), len(body))),
        }
        times = {name: [] for name in ways}
        print(f"bench/upload: {args.mb} MiB packages, {args.runs} runs per way", flush=True)
        for run in range(args.runs):
            for name, way in ways.items():  # interleaved: a busy moment hits every way alike
                body = package(args.mb, run)
                clear(conn)
                took = timed(conn, way(body))
                times[name].append(took)
                print(f"  run {run + 1} {name}: {took:.3f} s", flush=True)
        clear(conn)
    finally:
        conn.close()
        database.close()
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{'way':<14} {'median s':>9} {'MB/s':>8}")
    for name, seconds in median.items():
        print(f"{name:<14} {seconds:9.3f} {args.mb * 1.048576 / seconds:8.0f}")
    print(f"\nstore / ceiling: {median['store'] / median['ceiling']:.2f}; "
          f"bytea literal / store: {median['bytea literal'] / median['store']:.1f}x slower")
    met = median["store"] < TARGET_SECONDS * args.mb / 60
    print(f"store {median['store']:.3f} s for {args.mb} MiB: target < {TARGET_SECONDS * args.mb / 60:.2f} s "
          f"{'met' if met else 'MISSED'}")
    if args.strict and not met:
        sys.exit(1)
