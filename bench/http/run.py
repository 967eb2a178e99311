"""`python -m bench.http`: requests/s, p99 and CPU per request of this server against four other stacks.

All stacks run side by side on the same machine and database, each with two
workers, driven by wrk on loopback at each connection count, one stack at a
time with their runs interleaved. Exit 0 when every run completed with only
good responses (with --strict, also every target met at the first
connection count and load spread over both workers), 1 otherwise, 2 on bad
arguments or tools.
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
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
WORKERS = 2
PATHS = {servers.INFO: "/api/info", servers.EVENTS: "/api/events?limit=50"}
STACKS = ("ayon", "falcon-ceiling", "db-ceiling", "fastapi-default", "fastapi-tuned")
# Run only when named in --stacks: db-ceiling's other driver, to compare the two in one run.
EXTRA_STACKS = ("db-ceiling-asyncpg",)
CONNECTIONS = (32, 64, 128)
# A worker doing less than this share of the CPU work means the load was not spread.
MIN_WORKER_SHARE = 0.25
# (endpoint, other stack, least ayon / other in requests/s), judged at the first connection count.
TARGETS = (
    (servers.EVENTS, "db-ceiling", 0.85),
    (servers.EVENTS, "fastapi-tuned", 1.3),
    (servers.INFO, "falcon-ceiling", 0.85),
    (servers.INFO, "fastapi-tuned", 1.5),
)
# ayon's p99 on this endpoint no worse than this stack's, at the first connection count.
P99_TARGET = (servers.EVENTS, "fastapi-tuned")


@dataclass
class Case:
    stack: str
    endpoint: str
    connections: int
    rps: float
    p99_ms: float
    bad: int
    shares: list[float]
    runs: list[float]
    cpu_us: float  # worker CPU time per request: comparable even on a busy machine
    pg_us: float | None  # PostgreSQL CPU time per request (None when its processes cannot be seen)


def connection_list(text: str) -> list[int]:
    """`32` or `32,64,128`: distinct positive counts, in the order given."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts separated by commas such as 32,64,128, got {text!r}") from None
    if any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct counts of at least 1, got {text!r}")
    return counts


def stack_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in STACKS + EXTRA_STACKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(STACKS + EXTRA_STACKS)}, got {text!r}")
    return [s for s in STACKS + EXTRA_STACKS if s in names]


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is kept (default 3)")
    parser.add_argument("--connections", type=connection_list, default=None,
                        help="wrk connections, one count or a list such as 32,64,128 (default 32,64,128; "
                             "32 with --smoke); targets are judged at the first")
    parser.add_argument("--events", type=int, default=100_000, help="events in the table (default 100000)")
    parser.add_argument("--stacks", type=stack_list, default=list(STACKS),
                        help=f"the stacks to run, separated by commas (default: {','.join(STACKS)}; also "
                             f"{', '.join(EXTRA_STACKS)}: db-ceiling with asyncpg instead of psycopg2)")
    parser.add_argument("--postgres-url", default="", help="an existing PostgreSQL server (default: embedded)")
    parser.add_argument("--smoke", action="store_true", help="1 s runs, once, small table: checks the harness only")
    parser.add_argument("--reuse-port", action="store_true",
                        help="one SO_REUSEPORT socket per worker for ayon and falcon-ceiling too (gunicorn "
                             "--reuse-port); by default they run as configured")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed or load is uneven")
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = [CONNECTIONS[0]] if args.smoke else list(CONNECTIONS)
    if args.smoke:
        args.seconds, args.repeat, args.events = 1, 1, min(args.events, 2000)
    if args.seconds < 1 or args.repeat < 1 or args.events < 51:
        parser.error("--seconds and --repeat must be at least 1, --events more than 50")
    return args


def _used(after: dict[int, float], before: dict[int, float]) -> list[float]:
    # A process that started during the run counts from zero; one that ended is lost (rare: pools persist).
    return [after[pid] - before.get(pid, 0.0) for pid in after]


@dataclass
class Run:
    """One wrk run and the CPU it cost."""

    result: wrk.Result
    shares: list[float]
    cpu_us: float
    pg_us: float | None


def one_run(stack: servers.Stack, database: BenchDatabase, endpoint: str, connections: int,
            args: argparse.Namespace) -> Run:
    """One wrk run, with the workers' (and PostgreSQL's) CPU time per request and each worker's share."""
    before, pg_before = stack.cpu_seconds(), database.cpu_seconds()
    result = wrk.run(stack.base + PATHS[endpoint], args.seconds, connections, headers=HEADERS)
    after, pg_after = stack.cpu_seconds(), database.cpu_seconds()
    requests = max(result.requests, 1)
    pg_us = None
    if pg_before is not None and pg_after is not None:
        pg_us = sum(_used(pg_after, pg_before)) / requests * 1e6
    used = _used(after, before)
    total = sum(used) or 1.0
    return Run(result, sorted(u / total for u in used), sum(used) / requests * 1e6, pg_us)


def summary(stack: str, endpoint: str, connections: int, runs: list[Run]) -> Case:
    """The median run by requests/s; CPU figures are medians of their own."""
    middle = sorted(runs, key=lambda r: r.result.requests_per_s)[len(runs) // 2]
    pg = [r.pg_us for r in runs if r.pg_us is not None]
    return Case(stack, endpoint, connections, middle.result.requests_per_s, middle.result.p99_ms,
                sum(r.result.bad for r in runs), middle.shares, [r.result.requests_per_s for r in runs],
                statistics.median(r.cpu_us for r in runs), statistics.median(pg) if pg else None)


def start_all(stacks: list[servers.Stack], say) -> dict[str, str]:
    """Start every stack; each stack's loop and parser.

    Every stack that claims to send the server's events page must send the
    same document as the first one.
    """
    runtimes, first = {}, None
    for stack in stacks:
        say(f"starting {stack.name}")
        stack.start(WORKERS)
        runtimes[stack.name] = stack.runtime()
        say(f"  {len(stack.workers)} workers answering ({runtimes[stack.name]})")
        if stack.same_page and servers.EVENTS in stack.endpoints:
            page = stack.page(PATHS[servers.EVENTS], TOKEN)
            first = first or (stack.name, page)
            if first[1] != page:
                raise RuntimeError(f"{stack.name} answers {PATHS[servers.EVENTS]} with another document than "
                                   f"{first[0]}")
    return runtimes


def measure_all(stacks: list[servers.Stack], database: BenchDatabase, args: argparse.Namespace, say) -> list[Case]:
    """Every case, the stacks' runs interleaved: load from outside drifts over all stacks alike, not one."""
    cases = []
    for connections in args.connections:
        for endpoint, path in PATHS.items():
            serving = [s for s in stacks if endpoint in s.endpoints]
            if not args.smoke:
                for stack in serving:  # warm-up: pools, caches, prepared statements
                    wrk.run(stack.base + path, 1, connections, headers=HEADERS)
            runs: dict[str, list[Run]] = {stack.name: [] for stack in serving}
            for _ in range(args.repeat):
                for stack in serving:
                    runs[stack.name].append(one_run(stack, database, endpoint, connections, args))
            for stack in serving:
                case = summary(stack.name, endpoint, connections, runs[stack.name])
                pg = "" if case.pg_us is None else f" + {case.pg_us:.0f} PostgreSQL"
                say(f"  {stack.name} {path} -c{connections}: {case.rps:,.0f} req/s, p99 {case.p99_ms:.2f} ms, "
                    f"{case.cpu_us:.0f} worker{pg} µs CPU/request (runs {', '.join(f'{r:,.0f}' for r in case.runs)};"
                    f" worker CPU shares {'/'.join(f'{s:.0%}' for s in case.shares)})")
                cases.append(case)
    order = {name: i for i, name in enumerate(STACKS + EXTRA_STACKS)}
    endpoints = list(PATHS)
    return sorted(cases, key=lambda c: (order[c.stack], endpoints.index(c.endpoint),
                                        args.connections.index(c.connections)))


def make_stacks(args: argparse.Namespace, database_url: str, folder: Path) -> list[servers.Stack]:
    extra = ["--reuse-port"] if args.reuse_port else []
    makers = {
        "ayon": lambda port: servers.ours(database_url, TOKEN, port, folder, extra),
        "falcon-ceiling": lambda port: servers.falcon_ceiling(database_url, TOKEN, port, folder, extra),
        "db-ceiling": lambda port: servers.db_ceiling(database_url, TOKEN, port, folder, WORKERS, "psycopg2"),
        "db-ceiling-asyncpg": lambda port: servers.db_ceiling(database_url, TOKEN, port, folder, WORKERS, "asyncpg"),
        "fastapi-default": lambda port: servers.fastapi_default(database_url, TOKEN, port, folder, WORKERS),
        "fastapi-tuned": lambda port: servers.fastapi_tuned(database_url, TOKEN, port, folder, WORKERS),
    }
    return [makers[name](free_port()) for name in args.stacks]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{len(os.sched_getaffinity(0))} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def ratio_lines(cases: list[Case], connections: int, judged: bool) -> tuple[list[str], bool]:
    """ayon against every other stack at one connection count; targets checked when `judged`."""
    by = {(c.stack, c.endpoint): c for c in cases if c.connections == connections}
    targets = {(endpoint, other): least for endpoint, other, least in TARGETS}
    lines, ok = [], True
    if judged:
        lines += [f"- -c{connections} {endpoint}: ayon / {other} not measured (target >= {least})"
                  for endpoint, other, least in TARGETS
                  if ("ayon", endpoint) not in by or (other, endpoint) not in by]
    for endpoint in PATHS:
        mine = by.get(("ayon", endpoint))
        if mine is None:
            continue
        for other in (STACKS + EXTRA_STACKS)[1:]:
            theirs = by.get((other, endpoint))
            if theirs is None or not theirs.rps:
                continue
            ratio = mine.rps / theirs.rps
            line = f"- -c{connections} {endpoint}: ayon / {other} = {ratio:.2f}"
            least = targets.get((endpoint, other))
            if judged and least is not None:
                line += f" (target >= {least}) {'met' if ratio >= least else 'MISSED'}"
                ok &= ratio >= least
            lines.append(line)
        if endpoint == P99_TARGET[0]:
            theirs = by.get((P99_TARGET[1], endpoint))
            if theirs is not None:
                line = (f"- -c{connections} {endpoint} p99: ayon {mine.p99_ms:.2f} ms, {theirs.stack} "
                        f"{theirs.p99_ms:.2f} ms")
                if judged:
                    met = mine.p99_ms <= theirs.p99_ms
                    line += f" (target: no worse) {'met' if met else 'MISSED'}"
                    ok &= met
                lines.append(line)
    return lines, ok


def report(cases: list[Case], runtimes: dict[str, str], args: argparse.Namespace,
           load: tuple[float, float]) -> tuple[list[str], bool]:
    """The results as a Markdown table plus the ratio lines; True when every target and spread check holds."""
    ok = True
    lines = [
        f"Measured {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}; "
        f"wrk -t1 -d{args.seconds}s at -c{', -c'.join(map(str, args.connections))}, median of {args.repeat}, "
        f"{args.events:,} events; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after"
        f"{'; ayon and falcon-ceiling with one SO_REUSEPORT socket per worker' if args.reuse_port else ''}.",
        "",
        *(f"- {name}: {runtime}" for name, runtime in runtimes.items()),
        "",
        "| stack | endpoint | connections | req/s | p99 ms | worker CPU µs/request | PostgreSQL CPU µs/request "
        "| worker CPU shares | bad responses |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in cases:
        pg = "n/a" if c.pg_us is None else f"{c.pg_us:.0f}"
        lines.append(f"| {c.stack} | {c.endpoint} | {c.connections} | {c.rps:,.0f} | {c.p99_ms:.2f} | {c.cpu_us:.0f} "
                     f"| {pg} | {' / '.join(f'{s:.0%}' for s in c.shares)} | {c.bad} |")
        ok &= c.bad == 0
    for i, connections in enumerate(args.connections):
        found, met = ratio_lines(cases, connections, judged=i == 0)
        if found:
            lines += ["", *found]
        ok &= met
    spread = [c for c in cases if len(c.shares) < WORKERS or min(c.shares) < MIN_WORKER_SHARE]
    if spread:
        lines.append("")
    for c in spread:
        ok = False
        lines.append(f"- load NOT spread: {c.stack} {c.endpoint} -c{c.connections} worker CPU shares "
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

    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="ayon-bench-http-"))
    say(f"preparing PostgreSQL with {args.events:,} events (logs in {folder})")
    database = None
    stacks: list[servers.Stack] = []
    try:
        database = BenchDatabase(args.postgres_url)
        database.seed_events(args.events)
        stacks = make_stacks(args, database.url, folder)
        runtimes = start_all(stacks, say)
        say(f"measuring: {args.repeat} run(s) of {args.seconds} s per case, the stacks in turn")
        cases = measure_all(stacks, database, args, say)
    except (RuntimeError, OSError, psycopg2.Error) as exc:
        print(f"Error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        sys.exit(1)
    finally:
        for stack in stacks:
            stack.stop()
        if database is not None:
            database.close()
    lines, ok = report(cases, runtimes, args, (load_before, os.getloadavg()[0]))
    print("\n".join(["", *lines]))
    complete = all(c.bad == 0 for c in cases)
    if complete:
        shutil.rmtree(folder, ignore_errors=True)  # the servers' logs are kept only when something went wrong
    else:
        print(f"bad responses: see the servers' logs in {folder}")
    sys.exit(0 if complete and (ok or not args.strict) else 1)
