"""`python -m bench.maintenance`: the maintenance procedure on 5 million old log rows and 1 million old events.

Measures, on one PostgreSQL (embedded, durable settings) and one gunicorn:
1. the whole procedure's duration and each task's, with p99 of GET /api/events
   at a fixed request rate during the run beside the same load idle;
2. removing old logs by partition (the remove_old_logs task) against a plain
   DELETE plus VACUUM of the same rows, and the task at 1 and 5 million rows.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.maintenance import data
from bench.maintenance.probe import Probe, percentile
from server.core import config, db, events, migrations
from server.core.db import Database
from tests.pg import EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token"
OLD_DAYS = range(10, 15)  # five whole days past the 7-day log retention


def arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.maintenance", description=__doc__.splitlines()[0])
    parser.add_argument("--log-rows", type=int, default=5_000_000, help="old log rows (default 5 million)")
    parser.add_argument("--events", type=int, default=1_000_000, help="old events (default 1 million)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="length of the idle window")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second per connection")
    return parser.parse_args(argv)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"


class Server:
    """gunicorn with the project's config, two workers."""

    def __init__(self, env: dict, folder: Path):
        self.port = free_port()
        self.log = open(folder / "gunicorn.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py"], cwd=ROOT,
            env=dict(env, AYON_HTTP_BIND=f"127.0.0.1:{self.port}", AYON_SERVER_WORKERS="2"),
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not become ready; see {folder / 'gunicorn.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def maintenance(env: dict, *args: str) -> dict:
    """Run `python -m maintenance` for real; the summary of the run's event."""
    done = subprocess.run([sys.executable, "-m", "maintenance", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"maintenance exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    database = Database(env["AYON_POSTGRES_URL"], size=1)
    try:
        [run] = events.query(database, topic="server.maintenance", limit=1)
    finally:
        database.close()
    return run["summary"]


def task_seconds(summary: dict, name: str) -> float:
    return next(t["duration_s"] for t in summary["tasks"] if t["name"] == name)


def main(argv=None) -> None:
    args = arguments(argv)
    folder = Path(tempfile.mkdtemp(prefix="ayon-bench-maintenance-"))
    folder.chmod(0o755)
    say = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    server_pg = EmbeddedPostgres(folder / "pg", free_port(), fast=False)
    server_pg.start()
    gunicorn = None
    try:
        url = db.with_database(server_pg.url, "ayon")
        db.create_database_if_missing(url)
        migrations.migrate(url, say=lambda _: None)
        with Database(url, size=1).transaction() as cur:
            config.seed(cur)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AYON_")}
        env.update(AYON_POSTGRES_URL=url, AYON_ADMIN_TOKEN=TOKEN, AYON_DATA_DIR=str(folder / "data"),
                   AYON_INSTANCE_ID="bench", AYON_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
        per_day = args.log_rows // len(OLD_DAYS)
        say(f"seeding {per_day * len(OLD_DAYS):,} old log rows in {len(OLD_DAYS)} day partitions, 200k recent")
        data.seed_logs(url, OLD_DAYS, per_day)
        data.seed_logs(url, range(0, 1), 200_000)
        say(f"seeding {args.events:,} old events and 50k recent")
        data.seed_events(url, args.events, 50_000)

        gunicorn = Server(env, folder)
        probe = Probe("127.0.0.1", gunicorn.port, "/api/events?limit=50",
                      {"Authorization": f"Bearer {TOKEN}"}, rate=args.rate)
        probe.start()
        time.sleep(2)  # warm-up: connections open, pools filled; not measured
        idle_from = time.monotonic()
        say(f"idle load for {args.idle_seconds:.0f} s, then the procedure under the same load")
        time.sleep(args.idle_seconds)
        run_from = time.monotonic()
        summary = maintenance(env)
        run_until = time.monotonic()
        probe.close()
        idle, during = probe.window(idle_from, run_from), probe.window(run_from, run_until)
        p99_idle, p99_run = percentile(idle, 0.99) * 1e3, percentile(during, 0.99) * 1e3
        gunicorn.stop()
        gunicorn = None

        # The same rows again: the task alone (no API load), a tenth of them, and the plain way.
        say(f"remove_old_logs alone at {per_day * len(OLD_DAYS):,} and a tenth of the rows, then DELETE + VACUUM")
        data.seed_logs(url, OLD_DAYS, per_day)
        large = task_seconds(maintenance(env, "--task", "remove_old_logs"), "remove_old_logs")
        data.seed_logs(url, OLD_DAYS, per_day // 10)
        small = task_seconds(maintenance(env, "--task", "remove_old_logs"), "remove_old_logs")
        data.seed_logs(url, OLD_DAYS, per_day)
        plain = data.delete_and_vacuum(url, 7)

        result = {
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine(),
            "log_rows": per_day * len(OLD_DAYS), "old_events": args.events,
            "procedure_s": summary["duration_s"],
            "tasks_s": {t["name"]: t["duration_s"] for t in summary["tasks"]},
            "rows": {t["name"]: t["rows"] for t in summary["tasks"]},
            "p99_idle_ms": round(p99_idle, 2), "p99_during_ms": round(p99_run, 2),
            "requests_idle": len(idle), "requests_during": len(during), "request_errors": probe.errors,
            "remove_old_logs_s": large, "remove_old_logs_tenth_s": small, "delete_vacuum_s": round(plain, 3),
        }
        print(json.dumps(result, indent=2))
        ratio = p99_run / p99_idle
        speedup = plain / large
        say(f"procedure {summary['duration_s']:.1f} s; p99 idle {p99_idle:.1f} ms, during {p99_run:.1f} ms "
            f"({ratio:.2f}x, target <= 1.5x); partitions {large:.2f} s vs DELETE+VACUUM {plain:.2f} s "
            f"({speedup:.0f}x, target >= 10x); a tenth of the rows {small:.2f} s")
        if ratio > 1.5 or speedup < 10:
            sys.exit(1)
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        server_pg.stop()
