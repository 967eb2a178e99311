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
            # One statement per batch: the ids never travel to Python and back.
            cur.execute(
                f"""WITH batch AS (
                        SELECT id, updated_at FROM events WHERE updated_at < %s AND updated_at >= %s
                        AND (updated_at, id) > (%s, %s::uuid) ORDER BY updated_at, id LIMIT %s),
                    gone AS (
                        DELETE FROM events e USING batch b WHERE e.id = b.id AND e.status <> ALL(%s)
                        AND e.id <> %s::uuid AND ({topic_clause})
                        AND NOT EXISTS (SELECT 1 FROM events d WHERE d.depends_on = e.id)
                        RETURNING 1)
                    SELECT (SELECT count(*) FROM gone), last.updated_at, last.id
                    FROM (SELECT updated_at, id FROM batch ORDER BY updated_at DESC, id DESC LIMIT 1) last""",
                (cutoff, last[0], last[0], last[1], BATCH, list(UNFINISHED), ctx.event_id),
            )
            row = cur.fetchone()
            if row is None:
                return removed
            removed += row[0]
            last = (row[1], str(row[2]))
        ctx.progress(f"{removed} {what} removed")
        ctx.yield_to_traffic(time.monotonic() - started)
