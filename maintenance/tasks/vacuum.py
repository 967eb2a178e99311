"""Plain VACUUM (ANALYZE) of the whole database, never FULL."""

import contextlib

import psycopg2

from server.core.db import apply_settings

DESCRIPTION = "vacuum and analyze the database (plain, never FULL)"
ENABLED = True
LAST = True
TABLES = ()  # the database as a whole: the run's before and after sizes tell what it gave back


def run(ctx):
    ctx.check_stop()
    with ctx.db.connection() as conn:
        conn.autocommit = True  # VACUUM cannot run inside a transaction
        with conn.cursor() as cur:
            # VACUUM cannot run inside a transaction block, so the SET LOCAL every other statement of a
            # task gets (its time limit, one core) cannot reach it: a plain SET on this session, right
            # before it, and RESET after, so the pooled connection keeps none of it. Behind a transaction
            # pooler the two may reach different server connections; the pooler's query_timeout bounds it there.
            # A manual VACUUM runs unthrottled by default; autovacuum's cost delay keeps it gentle.
            apply_settings(cur, {**ctx.db.session_settings(), "vacuum_cost_delay": "2ms"}, local=False)
            try:
                # Plain VACUUM takes no exclusive locks, so the API keeps serving; FULL would rewrite and lock.
                # SKIP_LOCKED: a table another session holds locked is left for the next run, never waited for.
                cur.execute("VACUUM (ANALYZE, SKIP_LOCKED)")
            finally:
                with contextlib.suppress(psycopg2.Error):
                    cur.execute("RESET ALL")
    ctx.progress("vacuum done")
    return 0


def preview(ctx):
    return 0, 0  # removes no rows; what it frees inside files is reused, rarely returned to the disk
