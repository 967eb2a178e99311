"""Remove heartbeats of programs and instances not seen for days, with their install records."""

from maintenance.registry import Option
from server.core.values import Integer

DESCRIPTION = "remove instances and program heartbeats not seen for {stale_days} days"
ENABLED = True
ORDER = 40
OPTIONS = [Option("stale_days", Integer(1, 3650), 14, "Days without a heartbeat before an instance is forgotten.")]


def run(ctx):
    with ctx.db.transaction() as cur:
        cur.execute(
            "DELETE FROM instances WHERE last_seen < now() - make_interval(days => %s) RETURNING instance_id",
            (ctx.options["stale_days"],),
        )
        gone = sorted({row[0] for row in cur.fetchall()})
        removed = len(gone)
        # package_installs arrives with the packages migration; this task works with or without it.
        cur.execute("SELECT to_regclass('package_installs')")
        if gone and cur.fetchone()[0] is not None:
            cur.execute(
                "DELETE FROM package_installs p WHERE p.instance_id = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = p.instance_id)",
                (gone,),
            )
            removed += cur.rowcount
    ctx.progress(f"{removed} rows removed")
    return removed
