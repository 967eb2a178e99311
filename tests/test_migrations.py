"""Migrations against the real PostgreSQL."""

import shutil

import pytest

from server.core import db, migrations
from server.core.errors import SchemaError


def copy_migrations(tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, folder)
    return folder


def tables(url):
    conn = db.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        found = {r[0] for r in cur.fetchall()}
    conn.close()
    return found


def test_fresh_apply_then_reapply_is_a_noop(empty_database_url):
    said = []
    count = migrations.migrate(empty_database_url, said.append)
    assert count == len(migrations.load()) and count >= 1
    assert said[0].startswith("applied migration 0001_initial.sql")
    assert {"events", "server_config", "schema_migrations"} <= tables(empty_database_url)
    assert migrations.migrate(empty_database_url, said.append) == 0
    rows = db.Database(empty_database_url).fetchall("SELECT version, name, sha256 FROM schema_migrations ORDER BY 1")
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in migrations.load()]
    assert all(len(sha) == 64 for _, _, sha in rows)


def test_edited_applied_file_is_refused(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    migrations.migrate(empty_database_url, directory=folder)
    (folder / "0001_initial.sql").write_text((folder / "0001_initial.sql").read_text() + "\n-- edited\n")
    (folder / "9000_more.sql").write_text("CREATE TABLE must_not_exist (n int);")
    with pytest.raises(SchemaError, match=r"^migration 0001_initial\.sql was edited after it was applied"):
        migrations.migrate(empty_database_url, directory=folder)
    assert "must_not_exist" not in tables(empty_database_url)


def test_newer_database_is_refused(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9000_future.sql").write_text("CREATE TABLE future (n int);")
    migrations.migrate(empty_database_url, directory=folder)
    with pytest.raises(SchemaError, match=r"^the database has migration 9000_future that this code does not know"):
        migrations.migrate(empty_database_url)
    database = db.Database(empty_database_url)
    status = migrations.status(database)
    assert not status.current and "does not know" in status.reason


def test_failing_migration_leaves_no_partial_change(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9001_broken.sql").write_text("CREATE TABLE half_done (n int);\nSELECT * FROM no_such_table;")
    expected = r"^migration 9001_broken\.sql failed, nothing of it applied: relation \"no_such_table\""
    with pytest.raises(SchemaError, match=expected):
        migrations.migrate(empty_database_url, directory=folder)
    assert "half_done" not in tables(empty_database_url)
    assert "events" in tables(empty_database_url)  # earlier files stay applied
    versions = [r[0] for r in db.Database(empty_database_url).fetchall("SELECT version FROM schema_migrations")]
    assert 9001 not in versions


def test_status_reports_pending_then_current(empty_database_url):
    database = db.Database(empty_database_url)
    assert not migrations.status(database).current
    migrations.migrate(empty_database_url)
    status = migrations.status(database)
    assert status.current and status.version == status.expected


def test_bad_file_name_is_refused(tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(SchemaError, match=r"migration file 2_oops\.sql: expected NNNN_short_name\.sql"):
        migrations.load(folder)
