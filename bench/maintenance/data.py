"""The benchmark's data: old log days in partitions, old events, recent rows that must stay."""

import datetime

from server.core import db

MESSAGE = ("'request handled in ' || (i %% 997) || ' ms for project project' || (i %% 13) "
           "|| ' by user user' || (i %% 17)")


def connect(url: str):
    conn = db.connect(url, "ayon-bench")
    conn.autocommit = True
    return conn


def seed_logs(url: str, days_ago: range, rows_per_day: int) -> int:
    """`rows_per_day` log records on each day `days_ago` (UTC), each day in its own partition.

    Each day is filled as a plain table and attached afterwards, so its indexes
    are built once instead of row by row: seeding is not what is measured.
    """
    conn = connect(url)
    today = datetime.datetime.now(datetime.timezone.utc).date()
    try:
        with conn.cursor() as cur:
            for back in days_ago:
                day = today - datetime.timedelta(days=back)
                name = f"logs_{day:%Y%m%d}"
                low = datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc)
                cur.execute(f"CREATE TABLE {name} (LIKE logs INCLUDING DEFAULTS)")
                cur.execute(
                    f"INSERT INTO {name} (ts, level, instance, program, pid, logger, message) "
                    "SELECT %(day)s::timestamptz + i * interval '86399 seconds' / %(n)s, "
                    "(ARRAY['INFO','INFO','INFO','WARNING','ERROR'])[1 + i %% 5], 'bench-' || (i %% 4), "
                    "(ARRAY['server','installer','webactions','maintenance'])[1 + i %% 4], 1000 + i %% 50, "
                    f"'ayon.bench', {MESSAGE} FROM generate_series(0, %(n)s - 1) i",
                    {"day": low, "n": rows_per_day},
                )
                cur.execute(f"ALTER TABLE logs ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)",
                            (low, low + datetime.timedelta(days=1)))
            cur.execute("ANALYZE logs")
    finally:
        conn.close()
    return len(days_ago) * rows_per_day


def seed_events(url: str, old: int, recent: int) -> None:
    """`old` finished events 200 days old (a tenth of them webactions) and `recent` new ones."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            # The triggers would NOTIFY every seeded row for nobody.
            cur.execute("SET session_replication_role = replica")
            for count, age in ((old, "200 days"), (recent, "1 day")):
                cur.execute(
                    "INSERT INTO events (topic, status, description, payload, sender, created_at, updated_at, doc) "
                    "SELECT CASE WHEN i %% 10 = 0 THEN 'action.launch' ELSE 'entity.task.changed' END, "
                    "CASE WHEN i %% 7 = 0 THEN 'failed' ELSE 'finished' END, 'event number ' || i, "
                    "jsonb_build_object('n', i, 'project', 'project' || (i %% 5)), 'bench', t, t, '' "
                    f"FROM generate_series(1, %s) i, LATERAL (SELECT now() - interval '{age}' "
                    "+ i * interval '1 millisecond' AS t) ts",
                    (count,),
                )
            # With the triggers off, each event's API document is rendered here.
            cur.execute("UPDATE events SET doc = ayon_event_doc(events) WHERE doc = ''")
            cur.execute("RESET session_replication_role")
            cur.execute("VACUUM ANALYZE events")
    finally:
        conn.close()


def log_partitions(url: str) -> int:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'logs'::regclass")
            return cur.fetchone()[0]
    finally:
        conn.close()


def delete_and_vacuum(url: str, days: int) -> float:
    """The plain way: DELETE the old log rows, then VACUUM to make the space reusable; seconds taken."""
    import time

    conn = connect(url)
    try:
        with conn.cursor() as cur:
            started = time.monotonic()
            cur.execute("DELETE FROM logs WHERE ts < (now() AT TIME ZONE 'UTC')::date - %s", (days,))
            cur.execute("VACUUM logs")
            return time.monotonic() - started
    finally:
        conn.close()
