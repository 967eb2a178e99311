"""The fleet fixtures themselves: a real PgBouncer in each pool mode, a real standby."""

from server.core import db
from tests.apiclient import wait_for


def backend(url: str) -> tuple[int, str]:
    conn = db.connect(url, "ayon-test")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), current_database()")
            return cur.fetchone()
    finally:
        conn.close()


def test_pgbouncer_forwards_to_the_database(bouncer, pooled_url, database_url):
    assert bouncer.proc.poll() is None
    assert backend(pooled_url)[1] == db.database_name(database_url)
    assert bouncer.port != db.host_port(database_url).rpartition(":")[2]


def test_standby_streams_and_promotes(standby, pg):
    primary = db.connect(pg.server_url, "ayon-test")
    primary.autocommit = True
    with primary.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS standby_probe")
        cur.execute("CREATE TABLE standby_probe (n int)")
        cur.execute("INSERT INTO standby_probe VALUES (1)")
        cur.execute("SELECT pg_current_wal_lsn()")
        [lsn] = cur.fetchone()
    primary.close()
    def replayed():
        conn = db.connect(db.with_database(standby.url, "postgres"), "ayon-test")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn "
                            "AND to_regclass('standby_probe') IS NOT NULL", (lsn,))
                return cur.fetchone()[0]
        finally:
            conn.close()

    wait_for(replayed, 30, "the standby replays the primary's insert")
    standby.promote()
    conn = db.connect(db.with_database(standby.url, "postgres"), "ayon-test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("INSERT INTO standby_probe VALUES (2) RETURNING n")
        assert cur.fetchone() == (2,)
    conn.close()
    cleanup = db.connect(pg.server_url, "ayon-test")
    cleanup.autocommit = True
    with cleanup.cursor() as cur:
        cur.execute("DROP TABLE standby_probe")
    cleanup.close()
