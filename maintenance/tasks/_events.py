"""Batched removal of old, finished events (shared by remove_old_events and remove_old_webactions)."""

import datetime
import time

from maintenance import space

BATCH = 5000
UNFINISHED = ("pending", "in_progress")


# What a batch removes of the rows it walks: kept apart so the preview counts by the same rule.
REMOVABLE = ("e.status <> ALL(%(unfinished)s) AND e.id <> %(own)s::uuid AND ({topic})"
             " AND NOT EXISTS (SELECT 1 FROM events d WHERE d.depends_on = e.id)")


def _cutoff(ctx, retention_days: int):
    with ctx.db.transaction() as cur:
        cur.execute("SELECT now() - make_interval(days => %s)", (retention_days,))
        return cur.fetchone()[0]


def count(ctx, retention_days: int, topic_clause: str) -> tuple[int, int]:
    """What `remove` would delete now: rows, and bytes estimated from the table's average row."""
    cutoff = _cutoff(ctx, retention_days)
    with ctx.db.transaction() as cur:
        cur.execute(
            "SELECT count(*) FROM events e WHERE e.updated_at < %(cutoff)s AND " + REMOVABLE.format(topic=topic_clause),
            {"cutoff": cutoff, "unfinished": list(UNFINISHED), "own": ctx.event_id or NO_EVENT},
        )
        rows = cur.fetchone()[0]
        return rows, round(rows * space.row_bytes(cur, "events"))


NO_EVENT = "00000000-0000-0000-0000-000000000000"


def remove(ctx, retention_days: int, topic_clause: str, what: str) -> int:
    """Delete events matching `topic_clause` last updated before the retention, one batch per transaction.

    Walks `events_updated` by (updated_at, id) so each batch starts where the
    last ended instead of rescanning rows it kept. Never removes unfinished
    events, events another event depends on, or the run's own event; a parent
    whose dependants go in the same batch goes in a later run.
    """
    cutoff = _cutoff(ctx, retention_days)
    last = (datetime.datetime.min.replace(tzinfo=datetime.timezone.utc), NO_EVENT)
    removed = 0
    while True:
        ctx.check_stop()
        started = time.monotonic()
        with ctx.db.transaction() as cur:
            # One statement per batch: the ids never travel to Python and back. Each row is deleted where
            # the index scan found it (its ctid), not looked up again by its random uuid in the primary
            # key, whose pages a large table no longer keeps cached: that lookup made the cost per row
            # grow with the table. A row updated meanwhile has moved, so it is left for a later run.
            cur.execute(
                f"""WITH batch AS (
                        SELECT ctid, id, updated_at FROM events
                        WHERE updated_at < %(cutoff)s AND updated_at >= %(after)s
                        AND (updated_at, id) > (%(after)s, %(after_id)s::uuid) ORDER BY updated_at, id
                        LIMIT %(batch)s),
                    gone AS (
                        DELETE FROM events e USING batch b
                        WHERE e.ctid = b.ctid AND {REMOVABLE.format(topic=topic_clause)}
                        RETURNING 1)
                    SELECT (SELECT count(*) FROM gone), last.updated_at, last.id
                    FROM (SELECT updated_at, id FROM batch ORDER BY updated_at DESC, id DESC LIMIT 1) last""",
                {"cutoff": cutoff, "after": last[0], "after_id": last[1], "batch": BATCH,
                 "unfinished": list(UNFINISHED), "own": ctx.event_id},
            )
            row = cur.fetchone()
            if row is None:
                return removed
            removed += row[0]
            last = (row[1], str(row[2]))
        ctx.progress(f"{removed} {what} removed")
        ctx.yield_to_traffic(time.monotonic() - started)
