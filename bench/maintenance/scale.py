"""`python -m bench.maintenance.scale`: retention on 10 million events and 20 million log records.

On one embedded PostgreSQL (durable settings; seeded with fsync off, then
restarted durable) and one gunicorn with 2 workers, under a paced load of
GET /api/events (the events page):

1. 20 million log records in 20 day partitions, 12 of them past the 7-day
   retention: the remove_old_logs task, the events page's p99 during it
   against the same load idle just before, sizes before and after;
2. events at 1, 5 and 10 million rows, a fifth of each past the 90-day
   retention (1 % of those still pending, which must stay): the
   remove_old_events task, its time per removed row, the same p99 figures,
   and the table's size before and after (`--vacuum`: then a plain VACUUM).

Targets (issue 30): p99 during each run <= 1.2x idle; the time per removed
event flat from 1 to 10 million (the largest within 1.5x of the smallest).
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.maintenance import data
from bench.maintenance.probe import Probe, percentile
from bench.maintenance.run import ROOT, TOKEN, Server, machine, maintenance, task_seconds
from server.core import config, db, migrations
from server.core.db import Database
from tests.pg import EmbeddedPostgres, free_port

OLD_SHARE = 0.2
P99_TARGET = 1.2
FLAT_TARGET = 1.5


def arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.maintenance.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000,10000000", help="event table sizes, comma-separated")
    parser.add_argument("--log-rows", type=int, default=20_000_000, help="log records (default 20 million)")
    parser.add_argument("--log-days", type=int, default=20, help="day partitions they fill (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="length of each idle window")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second per connection (4 of them)")
    parser.add_argument("--folder", type=Path, help="keep the database in this folder and reuse what an earlier "
                        "run left there (seeding 10 million events takes long on a loaded machine)")
    parser.add_argument("--vacuum", action="store_true", help="end with a plain VACUUM of it all under the same load")
    return parser.parse_args(argv)


def add_events(url: str, old: int, recent: int) -> None:
    """`old` finished events 100 to 300 days old (1 % pending), `recent` ones 1 to 80 days old.

    Each row's stored document is rendered in the same INSERT (the triggers are
    off: they would NOTIFY every row for nobody), in chunks of a million rows.
    """
    conn = data.connect(url)
    chunk = 1_000_000
    try:
        with conn.cursor() as cur:
            cur.execute("SET session_replication_role = replica")
            for count, newest, span, pending in ((old, 100, 200, 100), (recent, 1, 79, 0)):
                for start in range(0, count, chunk):
                    cur.execute(
                        "INSERT INTO events SELECT id, topic, status, description, summary, payload, sender, NULL,"
                        " t, t, ayon_event_doc(ROW(id, topic, status, description, summary, payload, sender, NULL,"
                        " t, t, NULL)::events) FROM ("
                        "  SELECT gen_random_uuid() AS id, CASE WHEN i %% 10 = 0 THEN 'action.launch'"
                        "   ELSE 'entity.task.changed' END AS topic,"
                        "   CASE WHEN %(pending)s > 0 AND i %% %(pending)s = 0 THEN 'pending'"
                        "    WHEN i %% 7 = 0 THEN 'failed' ELSE 'finished' END AS status,"
                        "   'event number ' || i AS description, '{}'::jsonb AS summary,"
                        "   jsonb_build_object('n', i, 'project', 'project' || (i %% 5)) AS payload, 'bench' AS sender,"
                        # In time order, as events are written: oldest first.
                        "   now() - make_interval(days => %(newest)s) - (%(count)s - i)::float8 / %(count)s"
                        "    * make_interval(days => %(span)s) AS t"
                        "  FROM generate_series(%(lo)s, %(hi)s) i) s",
                        {"lo": start, "hi": min(count, start + chunk) - 1, "pending": pending, "count": count,
                         "newest": newest, "span": span},
                    )
            cur.execute("RESET session_replication_role")
            cur.execute("VACUUM ANALYZE events")
    finally:
        conn.close()


def event_counts(url: str) -> tuple[int, int]:
    """(old, recent): events past the 90-day retention and the others."""
    conn = data.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE updated_at < now() - interval '90 days'), count(*) FROM events")
            old, total = cur.fetchone()
            return old, total - old
    finally:
        conn.close()


def sizes(url: str) -> dict:
    conn = data.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), pg_total_relation_size('events') FROM events")
            events_rows, events_bytes = cur.fetchone()
            cur.execute("SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0), "
                        "coalesce(sum(c.reltuples), 0)::bigint FROM pg_inherits i JOIN pg_class c ON c.oid = inhrelid "
                        "WHERE inhparent = 'logs'::regclass")
            logs_bytes, logs_rows = cur.fetchone()
        return {"events_rows": events_rows, "events_mib": round(events_bytes / 2**20),
                "logs_rows_estimate": int(logs_rows), "logs_mib": round(int(logs_bytes) / 2**20)}
    finally:
        conn.close()


class Window:
    """The probe's idle p99 just before a run and its p99 during the run."""

    def __init__(self, probe: Probe, idle_seconds: float):
        self.probe = probe
        self.idle_from = time.monotonic()
        time.sleep(idle_seconds)
        self.run_from = time.monotonic()

    def close(self) -> dict:
        until = time.monotonic()
        idle = self.probe.window(self.idle_from, self.run_from)
        during = self.probe.window(self.run_from, until)
        p99_idle, p99_run = percentile(idle, 0.99) * 1e3, percentile(during, 0.99) * 1e3
        return {"p99_idle_ms": round(p99_idle, 2), "p99_during_ms": round(p99_run, 2),
                "p99_ratio": round(p99_run / p99_idle, 2), "requests_idle": len(idle), "requests_during": len(during)}


def main(argv=None) -> None:
    args = arguments(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="ayon-bench-retention-"))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    say = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    pg = EmbeddedPostgres(folder / "pg", free_port(), fast=False)
    pg.start()
    gunicorn = probe = None
    results: dict = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                     "machine": machine(), "events": [], "logs": None}
    try:
        url = db.with_database(pg.url, "ayon")
        db.create_database_if_missing(url)
        migrations.migrate(url, say=lambda _: None)
        with Database(url, size=1).transaction() as cur:
            config.seed(cur)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AYON_")}
        env.update(AYON_POSTGRES_URL=url, AYON_ADMIN_TOKEN=TOKEN, AYON_DATA_DIR=str(folder / "data"),
                   AYON_INSTANCE_ID="bench", AYON_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
        per_day = args.log_rows // args.log_days
        if data.log_partitions(url) < args.log_days:
            say(f"seeding {per_day * args.log_days:,} log records in {args.log_days} day partitions")
            data.seed_logs(url, range(0, args.log_days), per_day)
        gunicorn = Server(env, folder)
        probe = Probe("127.0.0.1", gunicorn.port, "/api/events?limit=50",
                      {"Authorization": f"Bearer {TOKEN}"}, rate=args.rate)
        probe.start()
        time.sleep(3)  # warm-up: connections open, pools filled, pages cached; not measured

        before = sizes(url)
        say(f"idle {args.idle_seconds:.0f} s, then remove_old_logs under the same load")
        window = Window(probe, args.idle_seconds)
        summary = maintenance(env, "--task", "remove_old_logs")
        figures = window.close()
        after = sizes(url)
        removed = next(t["rows"] for t in summary["tasks"] if t["name"] == "remove_old_logs")
        results["logs"] = {"table_rows": before["logs_rows_estimate"], "removed": removed,
                           "seconds": task_seconds(summary, "remove_old_logs"),
                           "mib_before": before["logs_mib"], "mib_after": after["logs_mib"], **figures}
        say(f"  {json.dumps(results['logs'])}")

        for size in (int(s) for s in args.sizes.split(",")):
            have_old, have_recent = event_counts(url)
            old = max(0, round(size * OLD_SHARE) - have_old)
            recent = max(0, size - round(size * OLD_SHARE) - have_recent)
            say(f"events: adding {old:,} old and {recent:,} recent for a table of {size:,}")
            t0 = time.monotonic()
            add_events(url, old, recent)
            say(f"  seeded in {time.monotonic() - t0:.0f} s")
            before = sizes(url)
            say(f"  idle {args.idle_seconds:.0f} s, then remove_old_events under the same load")
            window = Window(probe, args.idle_seconds)
            summary = maintenance(env, "--task", "remove_old_events")
            figures = window.close()
            seconds = task_seconds(summary, "remove_old_events")
            removed = next(t["rows"] for t in summary["tasks"] if t["name"] == "remove_old_events")
            after = sizes(url)
            entry = {"table_rows": before["events_rows"], "removed": removed, "seconds": seconds,
                     "us_per_row": round(seconds / max(removed, 1) * 1e6, 1),
                     "mib_before": before["events_mib"], "mib_after": after["events_mib"], **figures}
            say(f"  {json.dumps(entry)}")
            results["events"].append(entry)
        if args.vacuum:
            say("plain VACUUM (the vacuum task) under the same load")
            window = Window(probe, args.idle_seconds)
            summary = maintenance(env, "--task", "vacuum")
            results["vacuum"] = {"seconds": task_seconds(summary, "vacuum"),
                                 "events_mib_after": sizes(url)["events_mib"], **window.close()}
            say(f"  {json.dumps(results['vacuum'])}")
        results["request_errors"] = probe.errors
    finally:
        if probe is not None:
            probe.close()
        if gunicorn is not None:
            gunicorn.stop()
        pg.stop()
        if args.folder is None:  # a throwaway database; one in --folder is kept for the next run
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))
    per_row = [e["us_per_row"] for e in results["events"]]
    flat = per_row[-1] / per_row[0]
    worst = max([e["p99_ratio"] for e in results["events"]] + [results["logs"]["p99_ratio"]])
    print()
    print(f"{'events in table':>16} {'removed':>10} {'s':>7} {'us/row':>7} {'MiB before':>10} {'after':>7} "
          f"{'p99 idle':>9} {'during':>8} {'ratio':>6}")
    for e in results["events"]:
        print(f"{e['table_rows']:16,} {e['removed']:10,} {e['seconds']:7.1f} {e['us_per_row']:7.1f} "
              f"{e['mib_before']:10,} {e['mib_after']:7,} {e['p99_idle_ms']:9.2f} {e['p99_during_ms']:8.2f} "
              f"{e['p99_ratio']:6.2f}")
    lg = results["logs"]
    print(f"logs {lg['table_rows']:,} rows, {lg['removed']:,} removed in {lg['seconds']:.2f} s; "
          f"{lg['mib_before']:,} -> {lg['mib_after']:,} MiB; p99 {lg['p99_idle_ms']:.2f} -> {lg['p99_during_ms']:.2f} ms "
          f"({lg['p99_ratio']:.2f}x)")
    print(f"per removed event: {per_row[-1]:.1f} us at the largest vs {per_row[0]:.1f} at the smallest ({flat:.2f}x, "
          f"target <= {FLAT_TARGET}x); worst p99 ratio {worst:.2f}x (target <= {P99_TARGET}x)")
    if flat > FLAT_TARGET or worst > P99_TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
