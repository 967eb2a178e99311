"""Remove heartbeats of programs and instances not seen for days, with their install records."""

from maintenance import space
from maintenance.registry import Option
from server.core.values import Integer

DESCRIPTION = "remove instances and program heartbeats not seen for {stale_days} days"
ENABLED = True
ORDER = 40
OPTIONS = [Option("stale_days", Integer(1, 3650), 14, "Days without a heartbeat before an instance is forgotten.")]
TABLES = ("instances", "package_installs")

STALE = "last_seen < now() - make_interval(days => %(days)s)"


def run(ctx):
    with ctx.db.transaction() as cur:
        cur.execute(
            f"DELETE FROM instances WHERE {STALE} RETURNING instance_id", {"days": ctx.options["stale_days"]},
        )
        deleted = cur.fetchall()  # one row per program of an instance
        gone = sorted({row[0] for row in deleted})
        removed = len(deleted)
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


def preview(ctx):
    with ctx.db.transaction() as cur:
        cur.execute(f"SELECT count(*), array_agg(DISTINCT instance_id) FROM instances WHERE {STALE}",
                    {"days": ctx.options["stale_days"]})
        rows, gone = cur.fetchone()
        cur.execute("SELECT to_regclass('package_installs')")
        if gone and cur.fetchone()[0] is not None:
            # Installs of an instance go only when none of its programs is left.
            cur.execute(
                f"SELECT count(*) FROM package_installs p WHERE p.instance_id = ANY(%(gone)s) AND NOT EXISTS "
                f"(SELECT 1 FROM instances i WHERE i.instance_id = p.instance_id AND NOT ({STALE}))",
                {"gone": gone, "days": ctx.options["stale_days"]},
            )
            rows += cur.fetchone()[0]
        return rows, round(rows * space.row_bytes(cur, "instances"))
