"""Plain VACUUM (ANALYZE) of the whole database, never FULL."""

DESCRIPTION = "vacuum and analyze the database (plain, never FULL)"
ENABLED = True
LAST = True


def run(ctx):
    with ctx.db.connection() as conn:
        conn.autocommit = True  # VACUUM cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE)")
    ctx.progress("vacuum done")
    return 0
