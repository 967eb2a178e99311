"""Batched removal of old, finished events (shared by remove_old_events and remove_old_webactions)."""

import datetime
import time

BATCH = 5000
UNFINISHED = ("pending", "in_progress")


def remove(ctx, retention_days: int, topic_clause: str, what: str) -> int:
    """Delete events matching `topic_clause` last updated before the retention, one batch per transaction.

    Walks `events_updated` by (updated_at, id) so each batch starts where the
    last ended instead of rescanning rows it kept. Never removes unfinished
    events, events another event depends on, or the run's own event; a parent
    whose dependants go in the same batch goes in a later run.
    """
    with ctx.db.transaction() as cur:
        cur.execute("SELECT now() - make_interval(days => %s)", (retention_days,))
        cutoff = cur.fetchone()[0]
    last = (datetime.datetime.min.replace(tzinfo=datetime.timezone.utc), "00000000-0000-0000-0000-000000000000")
    removed = 0
    while True:
        ctx.check_stop()
        started = time.monotonic()
        with ctx.db.transaction() as cur:
            cur.execute(
                "SELECT id, updated_at FROM events WHERE updated_at < %s AND updated_at >= %s "
                "AND (updated_at, id) > (%s, %s::uuid) ORDER BY updated_at, id LIMIT %s",
                (cutoff, last[0], last[0], last[1], BATCH),
            )
            batch = cur.fetchall()
            if not batch:
                return removed
            last = (batch[-1][1], str(batch[-1][0]))
            cur.execute(
                f"DELETE FROM events e WHERE e.id = ANY(%s::uuid[]) AND e.status <> ALL(%s) "
                f"AND e.id <> %s::uuid AND ({topic_clause}) "
                "AND NOT EXISTS (SELECT 1 FROM events d WHERE d.depends_on = e.id)",
                ([str(row[0]) for row in batch], list(UNFINISHED), ctx.event_id),
            )
            removed += cur.rowcount
        ctx.progress(f"{removed} {what} removed")
        ctx.yield_to_traffic(time.monotonic() - started)
