"""The embedded PostgreSQL is closed: passwords only, over loopback TCP, programs as a role that is no superuser."""

import os
import stat
import subprocess
import threading

import psycopg2
import pytest

from server.core import db, embedded_pg, migrations
from tests.pg import EmbeddedPostgres, free_port


@pytest.fixture
def server(tmp_path):
    os.chmod(tmp_path, 0o755)
    pg = EmbeddedPostgres(tmp_path / "data", free_port())
    pg.start()
    yield pg
    pg.stop()


def refused(**params) -> str:
    # passfile: not even a password file of the user running the tests may help.
    with pytest.raises(psycopg2.OperationalError) as caught:
        psycopg2.connect(host="127.0.0.1", dbname="postgres", passfile="/nonexistent", connect_timeout=5, **params)
    return str(caught.value)


def test_a_connection_without_the_password_is_refused(server):
    assert "no password supplied" in refused(port=server.port, user="postgres")  # the server asked for one
    assert 'password authentication failed for user "postgres"' in refused(port=server.port, user="postgres",
                                                                           password="postgres")
    psycopg2.connect(server.url).close()
    assert (server.datadir / "pg_hba.conf").read_text() == embedded_pg.HBA
    assert not list(server.datadir.glob(".s.PGSQL.*"))  # no Unix socket to reach it another way
    secrets = server.datadir.parent / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets / "postgres.pgpass").stat().st_mode) == 0o600
    assert server.password not in (server.datadir / "server.log").read_text()


def test_a_cluster_made_with_trust_is_closed_at_the_next_start(tmp_path):
    os.chmod(tmp_path, 0o755)
    datadir = tmp_path / "data"
    datadir.mkdir(mode=0o700)
    user = embedded_pg.run_as()
    if user:
        embedded_pg._chown_tree(datadir, user)
    # What the previous version made: trust for everyone, no superuser password.
    subprocess.run([embedded_pg.bin_path("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                    "--no-instructions", "--no-sync"], **embedded_pg.as_user(user), cwd=datadir,
                   check=True, capture_output=True)
    pg = EmbeddedPostgres(datadir, free_port())
    pg.start()
    try:
        assert "no password supplied" in refused(port=pg.port, user="postgres")
        psycopg2.connect(pg.url).close()
    finally:
        pg.stop()


def test_the_password_is_made_once_whoever_asks_first(tmp_path):
    found = []
    threads = [threading.Thread(target=lambda: found.append(embedded_pg.password(tmp_path, "ayon"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(found[0]) >= 40
    assert embedded_pg.password(tmp_path, "ayon") == found[0]
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["ayon.pgpass"]


def test_programs_connect_as_the_owner_which_is_no_superuser(server, tmp_path):
    data = tmp_path / "instance"
    superuser = db.with_database(server.url, "postgres")
    assert embedded_pg.ensure_owner(superuser, data) == ["created role ayon", "created database ayon owned by ayon"]
    owner_url = embedded_pg.url(data, server.port)
    assert "ayon:" not in owner_url and embedded_pg.password(data, "ayon") not in owner_url
    migrations.migrate(owner_url, say=lambda _: None)
    conn = psycopg2.connect(owner_url)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == ("ayon", False)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    conn.rollback()
    conn.autocommit = True
    conn.cursor().execute("VACUUM (ANALYZE, SKIP_LOCKED)")  # what the maintenance task runs: all of it, no warning
    assert conn.notices == []
    conn.close()
    # Again: nothing to create; a new password file is followed.
    (data / "secrets" / "ayon.pgpass").unlink()
    assert embedded_pg.ensure_owner(superuser, data) == []
    psycopg2.connect(owner_url).close()


def test_a_database_the_superuser_made_is_handed_to_the_owner(server, tmp_path):
    # The previous version connected as the superuser: it owned the database and the schema.
    conn = psycopg2.connect(server.url)
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE ayon")
    conn.close()
    migrations.migrate(db.with_database(server.url, "ayon"), say=lambda _: None)
    superuser = db.with_database(server.url, "postgres")
    assert embedded_pg.ensure_owner(superuser, tmp_path) == ["created role ayon", "handed database ayon to ayon"]
    database = db.Database(embedded_pg.url(tmp_path, server.port))
    try:
        assert migrations.status(database).current
        with database.transaction() as cur:
            cur.execute("SELECT ayon_ensure_log_partition(current_date + 30)")  # a function and a table it owns now
            cur.execute("INSERT INTO events (topic, status) VALUES ('test.handed', 'finished') RETURNING id")
            cur.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> 'ayon'")
            assert cur.fetchone() == (0,)
    finally:
        database.close()
