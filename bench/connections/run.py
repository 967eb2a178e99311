"""`python -m bench.connections`: what one instance holds of PostgreSQL, against the README's formula.

For each role set (all-in-one, server-only) one real instance (the entrypoint under
supervisord, AYON_POSTGRES_URL set) runs against a fresh PostgreSQL. A sampler counts the
instance's client connections every 0.1 s (pg_stat_activity, the sampler's own left out):
"held" are those open for more than AYON_DB_IDLE_SECONDS + 1 s, "open" all of them,
heartbeats' few milliseconds included.

1. idle: after the idle period, for 6 s (more than a heartbeat interval);
2. load: wrk -c64 on /api/events for --seconds; the peak is the highest count seen;
3. idle again: after the idle period, for 6 s: the pools have shrunk back.

Each figure is printed beside the formula's bound (budget() below, the README's table).
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.http import wrk
from bench.http.database import BenchDatabase
from server.core import db
from tests.instance import Instance, http_get, poll

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "bench-connections-token"
COUNT = """SELECT count(*), count(*) FILTER (WHERE backend_start < now() - make_interval(secs => %s))
           FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'
           AND pid <> pg_backend_pid()"""


def budget(roles: str, workers: int, pool: int) -> dict[str, int]:
    """The README's formula: connections one instance holds, idle and under load (heartbeats aside)."""
    listen = {"server": 2, "all-in-one": 3}[roles]  # installer, webactions (+ the maintenance daemon)
    poll_conn = 1 if roles == "all-in-one" else 0  # the maintenance daemon's request poll, every second
    return {"idle": listen + poll_conn, "load": listen + poll_conn + workers * pool}


class Sampler(threading.Thread):
    def __init__(self, url: str, idle: int):
        super().__init__(daemon=True)
        self.conn = db.connect(url, "ayon-bench-sampler")
        self.conn.autocommit = True
        self.idle = idle
        self.samples: list[tuple[float, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.done.wait(0.1):
                cur.execute(COUNT, (self.idle + 1,))
                total, held = cur.fetchone()
                self.samples.append((time.monotonic(), total, held))

    def between(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        self.conn.close()


def phase(sampler: Sampler, seconds: float) -> dict:
    start = time.monotonic()
    time.sleep(seconds)  # the samples are taken meanwhile
    got = sampler.between(start, time.monotonic())
    return {"held": max(s[2] for s in got), "open_median": statistics.median(s[1] for s in got),
            "open_max": max(s[1] for s in got)}


def measure(roles: str, server_url: str, workers: int, pool: int, idle: int, seconds: float, folder: Path) -> dict:
    database = BenchDatabase(server_url)
    database.seed_events(2000)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
    env.update(AYON_POSTGRES_URL=database.url, AYON_ADMIN_TOKEN=TOKEN, AYON_SERVER_WORKERS=str(workers),
               AYON_DB_POOL_SIZE=str(pool), AYON_DB_IDLE_SECONDS=str(idle), AYON_INSTANCE_ID=f"bench-{roles}",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if roles == "server":
        done = subprocess.run([sys.executable, "-m", "procs.setup"], env={**env, "AYON_DATA_DIR": str(folder / "s")},
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"setup failed: {done.stderr}")
        env.update(AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="false")
    instance = Instance(env, folder / roles).start()
    sampler = None
    try:
        instance.wait_ready(180)
        poll(lambda: http_get(instance.url + "/api/instances", token=TOKEN)[0] == 200, 60, "the API")
        sampler = Sampler(database.url, idle)
        sampler.start()
        time.sleep(idle * 2 + 3)  # the idle period passes, and the programs' start-up connections close
        figures = {"idle": phase(sampler, 6)}
        load_start = time.monotonic()
        result = wrk.run(instance.url + "/api/events?limit=20", seconds, 64, headers={"Authorization": f"Bearer {TOKEN}"})
        got = sampler.between(load_start, time.monotonic())
        figures["load"] = {"held": statistics.median(s[1] for s in got), "open_max": max(s[1] for s in got),
                           "requests_per_s": round(result.requests_per_s), "bad": result.bad}
        time.sleep(idle * 2 + 1)
        figures["idle_again"] = phase(sampler, 6)
        return figures
    finally:
        if sampler is not None:
            sampler.stop()
        instance.kill()
        database.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", type=int, default=4, help="AYON_DB_POOL_SIZE")
    parser.add_argument("--idle", type=int, default=2, help="AYON_DB_IDLE_SECONDS (shortened to keep the run short)")
    parser.add_argument("--seconds", type=float, default=10, help="of wrk load")
    parser.add_argument("--server-url", default="", help="a PostgreSQL server (default: an embedded one)")
    args = parser.parse_args(argv)
    print(f"bench/connections {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.node()} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); "
          f"{args.workers} workers, AYON_DB_POOL_SIZE={args.pool}, AYON_DB_IDLE_SECONDS={args.idle}")
    folder = Path(tempfile.mkdtemp(prefix="ayon-bench-conn-"))
    try:
        for roles in ("all-in-one", "server"):
            bound = budget(roles, args.workers, args.pool)
            got = measure(roles, args.server_url, args.workers, args.pool, args.idle, args.seconds, folder)
            print(f"{roles}:")
            print(f"  idle        held {got['idle']['held']:>3}  open median {got['idle']['open_median']:>4} "
                  f"max {got['idle']['open_max']:>3}   formula {bound['idle']}")
            print(f"  wrk -c64    open median {got['load']['held']:>4} peak {got['load']['open_max']:>3}   formula "
                  f"{bound['load']} ({got['load']['requests_per_s']} requests/s, {got['load']['bad']} bad)")
            print(f"  idle again  held {got['idle_again']['held']:>3}  open median "
                  f"{got['idle_again']['open_median']:>4} max {got['idle_again']['open_max']:>3}   formula {bound['idle']}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
