"""Remove package data nobody references any more and install records of instances that are gone."""

from maintenance import space
from maintenance.registry import Option
from server.core.values import Integer

DESCRIPTION = "remove unreferenced package data, packages removed over {removed_retention_days} days ago"
ENABLED = True
ORDER = 50
OPTIONS = [
    Option("removed_retention_days", Integer(1, 3650), 30, "Days a removed package is kept before it is deleted."),
]

TABLES = ("packages", "package_blobs", "package_installs")

REMOVED = "NOT active AND removed_at < now() - make_interval(days => %(days)s)"
# A blob is stored before the package row that references it; a young orphan may be an upload in flight.
BLOB_GRACE = "1 hour"
# An installer may record installs just before its first heartbeat lands.
INSTALL_GRACE = "1 day"

ORPHAN_INSTALL = (f"p.updated_at < now() - interval '{INSTALL_GRACE}' "
                  "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = p.instance_id)")
ORPHAN_BLOB = (f"b.created_at < now() - interval '{BLOB_GRACE}' "
               "AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.sha256 = b.sha256)")


def _exists(cur, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s)", (table,))
    return cur.fetchone()[0] is not None


def run(ctx):
    removed = 0
    with ctx.db.transaction() as cur:
        # The packages tables come with their own migration; without them there is nothing to do.
        if not all(_exists(cur, t) for t in ("packages", "package_blobs", "package_installs")):
            ctx.progress("no package tables")
            return 0
        cur.execute(f"DELETE FROM packages WHERE {REMOVED}", {"days": ctx.options["removed_retention_days"]})
        removed += cur.rowcount
        cur.execute(f"DELETE FROM package_installs p WHERE {ORPHAN_INSTALL}")
        removed += cur.rowcount
    ctx.check_stop()
    with ctx.db.transaction() as cur:
        cur.execute(f"DELETE FROM package_blobs b WHERE {ORPHAN_BLOB}")
        removed += cur.rowcount
    ctx.progress(f"{removed} rows removed")
    return removed


def preview(ctx):
    with ctx.db.transaction() as cur:
        if not all(_exists(cur, t) for t in TABLES):
            return 0, 0
        days = {"days": ctx.options["removed_retention_days"]}
        cur.execute(f"SELECT count(*) FROM packages WHERE {REMOVED}", days)
        packages = cur.fetchone()[0]
        cur.execute(f"SELECT count(*) FROM package_installs p WHERE {ORPHAN_INSTALL}")
        installs = cur.fetchone()[0]
        # The blobs left without a package once the removed packages are gone, with their stored size.
        cur.execute(
            f"SELECT count(*), coalesce(sum(b.size), 0) FROM package_blobs b WHERE b.created_at < now() - "
            f"interval '{BLOB_GRACE}' AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.sha256 = b.sha256 "
            f"AND NOT ({REMOVED}))", days,
        )
        blobs, blob_bytes = cur.fetchone()
        estimate = packages * space.row_bytes(cur, "packages") + installs * space.row_bytes(cur, "package_installs")
        return packages + installs + blobs, round(estimate) + int(blob_bytes)
