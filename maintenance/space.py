"""Sizes on disk: what a task's tables take before and after it, and what a removal would free.

`pg_total_relation_size` counts a table with its indexes and TOAST; a
partitioned table (`logs`) is the sum of its partitions. A table that does not
exist (yet) counts nothing. Sizes are bytes of files: a DELETE frees space for
reuse inside them, and only dropped partitions and vacuumed file ends shrink
them, which is why the summary shows both before and after.
"""

from psycopg2 import sql

# The tables themselves and, for a partitioned one, its partitions (pg_partition_tree lists nothing
# for a table that is not part of a partition tree; a partitioned parent itself takes no space).
RELATIONS = """
    SELECT to_regclass(t.name) AS oid FROM unnest(%(tables)s::text[]) AS t(name)
    UNION
    SELECT tree.relid FROM unnest(%(tables)s::text[]) AS t(name), LATERAL pg_partition_tree(to_regclass(t.name)) AS tree
"""


def table_bytes(cur, tables) -> int:
    """Bytes the tables take on disk, indexes and partitions included."""
    cur.execute(f"SELECT coalesce(sum(pg_total_relation_size(r.oid)), 0)::bigint FROM ({RELATIONS}) r "
                "WHERE r.oid IS NOT NULL", {"tables": list(tables)})
    return int(cur.fetchone()[0])


def database_bytes(cur) -> int:
    cur.execute("SELECT pg_database_size(current_database())")
    return int(cur.fetchone()[0])


def row_bytes(cur, table: str) -> float:
    """Average bytes per row of a table on disk (indexes included): the estimate for rows a DELETE frees."""
    cur.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0), coalesce(sum(greatest(c.reltuples, 0)), 0) "
        f"FROM ({RELATIONS}) r JOIN pg_class c ON c.oid = r.oid",
        {"tables": [table]},
    )
    size, tuples = cur.fetchone()
    if not tuples:  # never analyzed: count instead of guessing
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        tuples = cur.fetchone()[0]
    return float(size) / tuples if tuples else 0.0


def readable(size: int | None) -> str:
    """Bytes as people read them: 0 B, 812 B, 12.3 MiB."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
