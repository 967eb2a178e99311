"""`python -m bench.http`: requests/s and p99 of this server against a falcon ceiling and a FastAPI peer.

All three stacks run one after the other on the same machine and database,
each with two workers, driven by wrk on loopback. Exit 0 when every run
completed with only good responses (with --strict, also every target met and
load spread over both workers), 1 otherwise, 2 on bad arguments or tools.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from bench.http import servers, wrk
from bench.http.database import BenchDatabase
from tests.pg import free_port

TOKEN = "bench-token"
WORKERS = 2
ENDPOINTS = (("/api/info", "info"), ("/api/events?limit=50", "events"))
# A worker doing less than this share of the CPU work means the load was not spread.
MIN_WORKER_SHARE = 0.25
TARGETS = (
    ("info", "falcon-ceiling", 0.7),
    ("info", "fastapi-uvicorn", 1.5),
    ("events", "fastapi-uvicorn", 1.5),
)


@dataclass
class Case:
    stack: str
    endpoint: str
    rps: float
    p99_ms: float
    bad: int
    shares: list[float]
    runs: list[float]
    cpu_us: float  # worker CPU time per request: comparable even on a busy machine
    pg_us: float | None  # PostgreSQL CPU time per request (embedded server only)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is kept (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--events", type=int, default=100_000, help="events in the table (default 100000)")
    parser.add_argument("--postgres-url", default="", help="an existing PostgreSQL server (default: embedded)")
    parser.add_argument("--smoke", action="store_true", help="1 s runs, once, small table: checks the harness only")
    parser.add_argument("--reuse-port", action="store_true",
                        help="one SO_REUSEPORT socket per worker in every stack (gunicorn --reuse-port), so the "
                             "kernel spreads connections evenly; by default each stack runs as configured")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed or load is uneven")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.repeat, args.events = 1, 1, min(args.events, 2000)
    if args.seconds < 1 or args.repeat < 1 or args.connections < 1 or args.events < 50:
        parser.error("--seconds, --repeat and --connections must be at least 1, --events at least 50")
    return args


def measure(stack: servers.Stack, database: BenchDatabase, path: str, endpoint: str,
            args: argparse.Namespace) -> Case:
    """Median of `repeat` wrk runs, with each worker's share of the CPU spent serving them."""
    url = stack.base + path
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if not args.smoke:
        wrk.run(url, 1, args.connections, headers=headers)  # warm-up: pools, caches, JIT-less imports
    results, shares, costs, pg_costs = [], [], [], []
    for _ in range(args.repeat):
        before, pg_before = stack.cpu_seconds(), database.cpu_seconds()
        result = wrk.run(url, args.seconds, args.connections, headers=headers)
        after, pg_after = stack.cpu_seconds(), database.cpu_seconds()
        if pg_before is not None and pg_after is not None:
            pg_costs.append((pg_after - pg_before) / max(result.requests, 1) * 1e6)
        used = [after[pid] - before.get(pid, 0.0) for pid in after]
        total = sum(used) or 1.0
        results.append(result)
        shares.append(sorted(u / total for u in used))
        costs.append(sum(used) / max(result.requests, 1) * 1e6)
    ranked = sorted(range(len(results)), key=lambda i: results[i].requests_per_s)
    middle = ranked[len(ranked) // 2]
    return Case(stack.name, endpoint, results[middle].requests_per_s, results[middle].p99_ms,
                sum(r.bad for r in results), shares[middle], [r.requests_per_s for r in results],
                statistics.median(costs), statistics.median(pg_costs) if pg_costs else None)


def run_stack(stack: servers.Stack, database: BenchDatabase, args: argparse.Namespace, say) -> list[Case]:
    say(f"starting {stack.name}")
    stack.start(WORKERS)
    try:
        pids = stack.pids_answering()
        say(f"  {len(stack.workers)} workers; {len(pids)} answered on fresh connections")
        cases = []
        for path, endpoint in ENDPOINTS:
            case = measure(stack, database, path, endpoint, args)
            say(f"  {path}: {case.rps:,.0f} req/s, p99 {case.p99_ms:.2f} ms, {case.cpu_us:.0f} µs CPU/request "
                f"(runs {', '.join(f'{r:,.0f}' for r in case.runs)}; worker CPU shares "
                f"{'/'.join(f'{s:.0%}' for s in case.shares)})")
            cases.append(case)
        return cases
    finally:
        stack.stop()


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def report(cases: list[Case], args: argparse.Namespace) -> tuple[list[str], bool]:
    """The results as a Markdown table plus the target lines; True when every target and spread check holds."""
    by = {(c.stack, c.endpoint): c for c in cases}
    ok = True
    lines = [
        f"Measured {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}; "
        f"wrk -t1 -c{args.connections} -d{args.seconds}s, median of {args.repeat}, {args.events:,} events"
        f"{', one SO_REUSEPORT socket per worker' if args.reuse_port else ', each stack as configured'}.",
        "",
        "| stack | endpoint | req/s | p99 ms | worker CPU µs/request | PostgreSQL CPU µs/request "
        "| worker CPU shares | bad responses |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for c in cases:
        pg = "n/a" if c.pg_us is None else f"{c.pg_us:.0f}"
        lines.append(f"| {c.stack} | {c.endpoint} | {c.rps:,.0f} | {c.p99_ms:.2f} | {c.cpu_us:.0f} | {pg} | "
                     f"{' / '.join(f'{s:.0%}' for s in c.shares)} | {c.bad} |")
        ok &= c.bad == 0
    lines.append("")
    for endpoint, other, target in TARGETS:
        mine, theirs = by.get(("ayon", endpoint)), by.get((other, endpoint))
        if not mine or not theirs or not theirs.rps:
            continue
        ratio = mine.rps / theirs.rps
        met = ratio >= target
        ok &= met
        lines.append(f"- {endpoint}: ayon / {other} = {ratio:.2f} (target >= {target}) "
                     f"{'met' if met else 'MISSED'}")
    for c in cases:
        if len(c.shares) < WORKERS or min(c.shares) < MIN_WORKER_SHARE:
            ok = False
            lines.append(f"- load NOT spread: {c.stack} {c.endpoint} worker CPU shares "
                         f"{' / '.join(f'{s:.0%}' for s in c.shares)}")
    return lines, ok


def main(argv: list[str] | None = None) -> None:
    """Run the whole benchmark and print the report."""
    args = arguments(argv)
    try:
        wrk.wrk_path()
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)

    def say(text: str) -> None:
        print(text, flush=True)

    folder = Path(tempfile.mkdtemp(prefix="ayon-bench-http-"))
    say(f"preparing PostgreSQL with {args.events:,} events (logs in {folder})")
    database = None
    cases: list[Case] = []
    try:
        database = BenchDatabase(args.postgres_url)
        database.seed_events(args.events)
        extra = ["--reuse-port"] if args.reuse_port else []
        for make in (servers.ours, servers.ceiling):
            cases += run_stack(make(database.url, TOKEN, free_port(), folder, extra), database, args, say)
        peer = servers.fastapi(database.url, TOKEN, free_port(), folder, WORKERS, args.reuse_port)
        cases += run_stack(peer, database, args, say)
    except (RuntimeError, OSError, psycopg2.Error) as exc:
        print(f"Error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        sys.exit(1)
    finally:
        if database is not None:
            database.close()
    lines, ok = report(cases, args)
    print("\n".join(["", *lines]))
    complete = all(c.bad == 0 for c in cases)
    if complete:
        shutil.rmtree(folder, ignore_errors=True)  # the servers' logs are kept only when something went wrong
    else:
        print(f"bad responses: see the servers' logs in {folder}")
    sys.exit(0 if complete and (ok or not args.strict) else 1)
