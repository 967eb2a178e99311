"""Plain VACUUM (ANALYZE) of the whole database, never FULL."""

DESCRIPTION = "vacuum and analyze the database (plain, never FULL)"
ENABLED = True
LAST = True
TABLES = ()  # the database as a whole: the run's before and after sizes tell what it gave back


def run(ctx):
    ctx.check_stop()
    with ctx.db.connection() as conn:
        conn.autocommit = True  # VACUUM cannot run inside a transaction
        with conn.cursor() as cur:
            # Plain VACUUM takes no exclusive locks, so the API keeps serving; FULL would rewrite and lock.
            # A manual VACUUM runs unthrottled by default; autovacuum's cost delay keeps it gentle.
            cur.execute("SET vacuum_cost_delay = '2ms'")
            # SKIP_LOCKED: a table another session holds locked is left for the next run, never waited for.
            cur.execute("VACUUM (ANALYZE, SKIP_LOCKED)")
    ctx.progress("vacuum done")
    return 0


def preview(ctx):
    return 0, 0  # removes no rows; what it frees inside files is reused, rarely returned to the disk
