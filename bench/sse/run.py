"""`python -m bench.sse`: live updates at N subscribers, the server against a bare asyncio fan-out.

For each subscriber count (default 1,000, 4,000 and 10,000), each stack is
started afresh with two workers on one embedded PostgreSQL, and:

1. N subscribers open /api/events/stream with a mix of topic filters; 5 % of
   them are slow readers (a 4 KiB receive buffer, and they never read);
2. five events on a topic every subscriber takes, one a second: delivery of
   one event to all, commit to read;
3. RATE events a second for SECONDS, topics round-robin: latency, events
   delivered a second, worker CPU per delivered event, and every reading
   subscriber checked to have all of its events (none behind);
4. the slow readers resume reading: those the server disconnected see it;
5. everyone leaves; worker RSS once it is steady, against before step 1.

The ceiling (bench/sse/ceiling.py) fans the same bytes out from one LISTEN
connection per process, without HTTP framework. Exit 0 when every run
completed (with --strict, also every target met at 10,000), 1 otherwise,
2 on bad arguments.
"""

import argparse
import asyncio
import datetime
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop

from bench.http import servers
from bench.http.database import BenchDatabase
from bench.http.run import machine
from bench.sse.client import Harness
from server.api.stream import matches
from tests.pg import free_port

TOKEN = "bench-token"
WORKERS = 2
COUNTS = (1000, 4000, 10000)
GROUPS = 50
TOPICS = [f"bench.g{k}.{kind}" for kind in ("created", "changed") for k in range(GROUPS)]
BROADCASTS = 5
SLOW_SHARE = 20  # one subscriber in 20 reads nothing
# Targets (issue 30), judged at 10,000 subscribers.
TARGET_COUNT = 10000
TARGET_KIB = 8.0
TARGET_P99_MS = 200.0
TARGET_AFTER = 1.10


def patterns(i: int) -> tuple[str, ...]:
    """Subscriber i's topic filter: half one exact topic, 30 % a prefix, 15 % two prefixes, 5 % everything.

    Those taking everything are the slow readers (`slow`): the most bytes, the soonest dropped.
    """
    k, kind = i % GROUPS, i % 20
    if kind < 10:
        return (f"bench.g{k}.changed", "bench.broadcast")
    if kind < 16:
        return (f"bench.g{k}.*", "bench.broadcast")
    if kind < 19:
        return (f"bench.g{k}.*", f"bench.g{(k + 1) % GROUPS}.*", "bench.broadcast")
    return ("bench.*",)


def slow(i: int) -> bool:
    return i % SLOW_SHARE == SLOW_SHARE - 1


@dataclass
class Result:
    stack: str
    count: int
    kib_per_sub: float
    kib_per_sub_loaded: float  # after the sustained phase, slow readers' buffers included
    rss_start_mib: float
    rss_after_ratio: float
    broadcast_ms: tuple[float, float, float]
    sustained_ms: tuple[float, float, float]
    delivered_per_s: float
    cpu_us: float
    behind: int
    slow: int
    dropped: int
    open_s: float
    published_per_s: float


class Publisher:
    """bench/sse/publish.py in its own process: commits are timed there, away from the subscribers' loop."""

    def __init__(self, url: str, rate: float):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.sse.publish", url, str(rate), *TOPICS],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=servers.ROOT, env={**os.environ, "PYTHONPATH": str(servers.ROOT)})
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the publisher did not start")

    async def send(self, command: str) -> list[tuple[int, float, str]]:
        return await asyncio.to_thread(self._send, command)

    def _send(self, command: str) -> list[tuple[int, float, str]]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        found = []
        for line in self.proc.stdout:
            if line.strip() == "done":
                return found
            seq, when, topic = line.split()
            found.append((int(seq), float(when), topic))
        raise RuntimeError("the publisher ended")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def rss(stack: servers.Stack) -> int:
    total = 0
    for worker in stack.workers:
        try:
            total += worker.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def cpu(stack: servers.Stack) -> float:
    return sum(stack.cpu_seconds().values())


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    values = sorted(values)
    return (values[len(values) // 2] * 1000, values[min(len(values) - 1, int(len(values) * 0.99))] * 1000,
            values[-1] * 1000)


async def until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def steady_rss(stack: servers.Stack, timeout: float = 20.0) -> int:
    """Worker RSS once two samples a second apart agree within 1 % (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    last = rss(stack)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = rss(stack)
        if abs(now - last) <= last * 0.01:
            return now
        last = now
    return last


async def measure(stack: servers.Stack, count: int, publisher: Publisher, args, say) -> Result:
    harness = Harness("127.0.0.1", stack.port, TOKEN)
    # Warm-up: the first streams make the broker, its LISTEN connection and the pools.
    await harness.open([("/api/events/stream?topic=bench.broadcast", False) for _ in range(20)])
    await publisher.send("b")
    await asyncio.sleep(0.5)
    harness.close()
    start = await steady_rss(stack)
    harness.arrivals.clear()

    paths = [("/api/events/stream?topic=" + ",".join(patterns(i)), slow(i)) for i in range(count)]
    opened = time.monotonic()
    await harness.open(paths)
    open_s = time.monotonic() - opened
    connected = await steady_rss(stack, 10)
    readers = [(sub, sub.patterns) for sub in harness.subs if not sub.slow]
    say(f"  {stack.name} {count}: {len(harness.subs)} subscribers open in {open_s:.1f} s, "
        f"{(connected - start) / count / 1024:.1f} KiB worker RSS each")

    latencies = []
    for _ in range(BROADCASTS):
        (seq, committed, _), = await publisher.send("b")
        await until(lambda seq=seq: len(harness.arrivals.get(seq, ())) >= len(readers), 10)
        latencies += [t - committed for t in harness.arrivals.get(seq, ())]
        await asyncio.sleep(1.0)
    broadcast = percentiles(latencies)

    before_cpu = cpu(stack)
    sent = await publisher.send(str(int(args.rate * args.seconds)))
    expected = {id(sub): BROADCASTS + sum(1 for _, _, topic in sent if matches(topic, p)) for sub, p in readers}
    total = sum(expected.values()) - BROADCASTS * len(readers)
    await until(lambda: all(sub.seen >= expected[id(sub)] for sub, _ in readers), 15)
    used = cpu(stack) - before_cpu
    loaded = rss(stack)
    times, first, last = [], sent[0][1], sent[0][1]
    for seq, committed, _ in sent:
        for t in harness.arrivals.get(seq, ()):
            times.append(t - committed)
            last = max(last, t)
    delivered = len(times)
    published = (len(sent) - 1) / max(sent[-1][1] - sent[0][1], 1e-9)
    behind = sum(1 for sub, _ in readers if sub.seen < expected[id(sub)])
    for sub, p in readers:
        if sub.seen < expected[id(sub)] and args.verbose:
            say(f"    behind: {p} saw {sub.seen} of {expected[id(sub)]}, closed {sub.closed}")

    slow_subs = [sub for sub in harness.subs if sub.slow]
    for sub in slow_subs:
        sub.transport.resume_reading()
    await until(lambda: all(sub.closed for sub in slow_subs), 10)
    dropped = sum(1 for sub in slow_subs if sub.closed)
    harness.close()
    after = await steady_rss(stack)
    result = Result(stack.name, count, (connected - start) / count / 1024, (loaded - start) / count / 1024,
                    start / 2**20, after / start, broadcast, percentiles(times),
                    delivered / max(last - first, 1e-9), used / max(delivered, 1) * 1e6, behind, len(slow_subs),
                    dropped, open_s, published)
    if delivered < total:
        say(f"  {stack.name} {count}: {total - delivered} of {total} deliveries missing")
    say(f"  {stack.name} {count}: broadcast p50/p99/max {broadcast[0]:.0f}/{broadcast[1]:.0f}/{broadcast[2]:.0f} ms;"
        f" {args.rate:g}/s for {args.seconds} s (committed at {published:.0f}/s): "
        f"{result.delivered_per_s:,.0f} deliveries/s, p99 "
        f"{result.sustained_ms[1]:.0f} ms, {result.cpu_us:.1f} µs worker CPU each, {behind} behind; slow "
        f"readers dropped {dropped}/{len(slow_subs)}; RSS after leaving {result.rss_after_ratio:.2f}x start")
    return result


def make_stack(name: str, database_url: str, folder: Path) -> servers.Stack:
    port = free_port()
    if name == "ayon":
        return servers.ours(database_url, TOKEN, port, folder, [])
    env = servers._bench_env(database_url, TOKEN)
    command = [sys.executable, "-m", "bench.sse.ceiling", "--port", str(port), "--workers", str(WORKERS)]
    return servers.Stack("ceiling", command, env, port, folder / "ceiling.log")


def report(results: list[Result], args, load: tuple[float, float]) -> tuple[list[str], bool]:
    lines = [
        f"Measured {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}; {WORKERS} workers, "
        f"{BROADCASTS} broadcasts, then {args.rate:g} events/s for {args.seconds} s over {len(TOPICS)} topics; "
        f"1 subscriber in {SLOW_SHARE} never reads; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| stack | subscribers | KiB RSS / subscriber (loaded) | RSS after leaving "
        "| one event to all p50/p99/max ms "
        "| sustained p50/p99/max ms | events/s committed | deliveries/s | worker CPU µs / delivery "
        "| behind | slow readers dropped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.stack} | {r.count:,} | {r.kib_per_sub:.1f} ({r.kib_per_sub_loaded:.1f}) | {r.rss_after_ratio:.2f}x of "
            f"{r.rss_start_mib:.0f} MiB | {'/'.join(f'{v:.0f}' for v in r.broadcast_ms)} | "
            f"{'/'.join(f'{v:.0f}' for v in r.sustained_ms)} | {r.published_per_s:.0f} | {r.delivered_per_s:,.0f} | "
            f"{r.cpu_us:.1f} | {r.behind} | "
            f"{r.dropped}/{r.slow} |")
    ok = True
    by = {(r.stack, r.count): r for r in results}
    lines.append("")
    for count in args.counts:
        mine, ceiling = by.get(("ayon", count)), by.get(("ceiling", count))
        if mine and ceiling:
            lines.append(f"- {count:,}: ayon / ceiling: CPU per delivery {mine.cpu_us / ceiling.cpu_us:.2f}, "
                         f"RSS per subscriber {mine.kib_per_sub / max(ceiling.kib_per_sub, 0.01):.2f}, "
                         f"broadcast p99 {mine.broadcast_ms[1] / max(ceiling.broadcast_ms[1], 0.01):.2f}")
    mine = by.get(("ayon", TARGET_COUNT))
    if mine is not None:
        checks = [
            (f"<= {TARGET_KIB:g} KiB worker RSS per subscriber", mine.kib_per_sub <= TARGET_KIB,
             f"{mine.kib_per_sub:.1f}"),
            (f"one event to all p99 <= {TARGET_P99_MS:g} ms", mine.broadcast_ms[1] <= TARGET_P99_MS,
             f"{mine.broadcast_ms[1]:.0f}"),
            (f"{args.rate:g} events/s with no subscriber behind", mine.behind == 0, f"{mine.behind} behind"),
            (f"RSS after leaving <= {TARGET_AFTER:.2f}x start", mine.rss_after_ratio <= TARGET_AFTER,
             f"{mine.rss_after_ratio:.2f}x"),
            ("every slow reader dropped", mine.dropped == mine.slow, f"{mine.dropped}/{mine.slow}"),
        ]
        for what, met, figure in checks:
            lines.append(f"- {TARGET_COUNT:,} subscribers: {what}: {figure} {'met' if met else 'MISSED'}")
            ok &= met
    return lines, ok


def counts(text: str) -> list[int]:
    try:
        found = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts separated by commas such as 1000,4000, got {text!r}") from None
    if any(c < 20 for c in found):
        raise argparse.ArgumentTypeError(f"expected counts of at least 20, got {text!r}")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse", description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=counts, default=list(COUNTS),
                        help="subscriber counts, such as 1000,4000,10000 (the default)")
    parser.add_argument("--rate", type=float, default=100.0, help="events a second in the sustained phase (100)")
    parser.add_argument("--seconds", type=int, default=10, help="length of the sustained phase (10)")
    parser.add_argument("--stacks", default="ayon,ceiling", help="ayon, ceiling or both (the default)")
    parser.add_argument("--verbose", action="store_true", help="name each subscriber found behind")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed at 10,000")
    args = parser.parse_args(argv)
    stacks = [s for s in args.stacks.split(",") if s]
    if not stacks or set(stacks) - {"ayon", "ceiling"} or args.rate <= 0 or args.seconds < 1:
        parser.error("--stacks takes ayon and/or ceiling; --rate and --seconds must be positive")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.counts) + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        print(f"Error: the open-files hard limit is {hard}, {need} are needed for {max(args.counts):,} "
              f"subscribers; raise it (ulimit -Hn) or give --counts", file=sys.stderr)
        sys.exit(2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def say(text: str) -> None:
        print(text, flush=True)

    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="ayon-bench-sse-"))
    database = publisher = None
    results = []
    try:
        say(f"preparing PostgreSQL (logs in {folder})")
        database = BenchDatabase()
        database.seed_events(1000)
        publisher = Publisher(database.url, args.rate)
        for count in args.counts:
            for name in stacks:
                stack = make_stack(name, database.url, folder)
                stack.start(WORKERS)
                try:
                    results.append(uvloop.run(measure(stack, count, publisher, args, say)))
                finally:
                    stack.stop()
    except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
        print(f"Error: {exc or type(exc).__name__}; the servers' logs are in {folder}", file=sys.stderr)
        sys.exit(1)
    finally:
        if publisher is not None:
            publisher.close()
        if database is not None:
            database.close()
    lines, ok = report(results, args, (load_before, os.getloadavg()[0]))
    print("\n".join(["", *lines]))
    shutil.rmtree(folder, ignore_errors=True)
    sys.exit(0 if ok or not args.strict else 1)
