"""Remove log records past their retention: whole day partitions go by DETACH + DROP.

Dropping a partition costs the same whatever its row count, and leaves no dead
rows for vacuum; only stray old rows in `logs_default` are deleted row by row.
"""

import datetime
import re
import time

import psycopg2.errors
from psycopg2 import sql

from maintenance import space
from maintenance.registry import Option
from server.core import retry
from server.core.values import Integer

DESCRIPTION = "remove log records older than {retention_days} days"
ENABLED = True
ORDER = 10
OPTIONS = [Option("retention_days", Integer(1, 3650), 7, "Days of logs to keep.")]
TABLES = ("logs",)

PARTITION = re.compile(r"^logs_(\d{4})(\d{2})(\d{2})$")
BATCH = 10000
# DETACH needs a brief exclusive lock on `logs`; waiting behind a long reader would queue every writer.
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 15


def _partitions(cur) -> list[tuple[str, datetime.date, float]]:
    cur.execute(
        "SELECT c.relname, c.reltuples FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass ORDER BY c.relname"
    )
    found = []
    for name, tuples in cur.fetchall():
        match = PARTITION.match(name)
        if match:
            found.append((name, datetime.date(*map(int, match.groups())), tuples))
    return found


def _drop(ctx, name: str) -> None:
    def detach() -> None:
        with ctx.db.transaction() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            cur.execute(sql.SQL("ALTER TABLE logs DETACH PARTITION {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))

    ctx.check_stop()
    try:
        retry.Retry(f"the lock on logs to detach {name}", first=0.5, factor=1, jitter=0, attempts=LOCK_ATTEMPTS,
                    stop=ctx.stop, say=ctx.progress, say_every=0).call(
            detach, retry_on=(psycopg2.errors.LockNotAvailable,))
    except retry.GaveUp:
        ctx.check_stop()
        raise RuntimeError(f"could not lock logs to detach {name} after {LOCK_ATTEMPTS} attempts") from None


def _old(ctx) -> tuple[datetime.datetime, list[str]]:
    """The cutoff (midnight UTC, `retention_days` ago) and the day partitions wholly before it."""
    with ctx.db.transaction() as cur:
        cur.execute("SELECT (now() AT TIME ZONE 'UTC')::date - %s", (ctx.options["retention_days"],))
        cutoff_day = cur.fetchone()[0]
        partitions = [name for name, day, _ in _partitions(cur) if day < cutoff_day]
    return datetime.datetime.combine(cutoff_day, datetime.time(), datetime.timezone.utc), partitions


def _count(ctx, name: str) -> int:
    # Counted before the DETACH, outside its lock on `logs`: an index-only scan of an old,
    # finished day, so the summary and the preview report exact rows, not the planner's guess.
    with ctx.db.transaction() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
        return cur.fetchone()[0]


def preview(ctx):
    cutoff, partitions = _old(ctx)
    rows = sum(_count(ctx, name) for name in partitions)
    with ctx.db.transaction() as cur:
        size = space.table_bytes(cur, partitions) if partitions else 0
        cur.execute("SELECT count(*) FROM logs_default WHERE ts < %s", (cutoff,))
        stray = cur.fetchone()[0]
        return rows + stray, size + round(stray * space.row_bytes(cur, "logs_default"))


def run(ctx):
    cutoff, partitions = _old(ctx)
    removed = 0
    for name in partitions:
        started = time.monotonic()
        rows = _count(ctx, name)
        _drop(ctx, name)
        removed += rows
        ctx.progress(f"dropped {name}")
        # Counting a day reads its index, and dropping it frees its files: paced like the event batches.
        ctx.yield_to_traffic(time.monotonic() - started)
    while True:
        ctx.check_stop()
        with ctx.db.transaction() as cur:
            cur.execute(
                "DELETE FROM logs_default WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM logs_default WHERE ts < %s LIMIT %s))",
                (cutoff, BATCH),
            )
            count = cur.rowcount
        removed += count
        if count < BATCH:
            return removed
        ctx.progress(f"{removed} rows removed")
