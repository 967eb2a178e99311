"""Migrations against the real PostgreSQL."""

import shutil
import time

import pytest

from server.core import db, migrations
from server.core.errors import SchemaError
from server.core.migrations import MigrationLocked


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
    (folder / "9000_more.sql").write_text("-- kind: expand\nCREATE TABLE must_not_exist (n int);")
    with pytest.raises(SchemaError, match=r"^migration 0001_initial\.sql was edited after it was applied"):
        migrations.migrate(empty_database_url, directory=folder)
    assert "must_not_exist" not in tables(empty_database_url)


def test_newer_contract_database_is_refused(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9000_future.sql").write_text("-- kind: contract\nCREATE TABLE future (n int);")
    migrations.migrate(empty_database_url, directory=folder, contract=True)
    migrations.migrate(empty_database_url, directory=folder)
    with pytest.raises(SchemaError, match=r"^the database has migration 9000_future that this code does not know "
                                          r"\(a newer schema, and a contract migration"):
        migrations.migrate(empty_database_url)
    database = db.Database(empty_database_url)
    status = migrations.status(database)
    assert not status.current and status.fatal and "does not know" in status.reason


def test_failing_migration_leaves_no_partial_change(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9001_broken.sql").write_text("-- kind: expand\nCREATE TABLE half_done (n int);\nSELECT * FROM no_such_table;")
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


# The checksums of the migrations applied in the field before kinds existed: the kind line added to
# each is not checksummed, so no database that has them refuses them as edited.
FIELD_CHECKSUMS = {
    "0001_initial.sql": "b2dc916ad7401f7e47abc7f1a54f6beddd845c55347742dc0d52bdc6f4140c7f",
    "0002_log_collector.sql": "017f33523a750154f921b0cbc3717f1b9f7b5252e5e415d92c4340a37f5853fa",
    "0003_packages.sql": "a021ae8100f39bf66cce775cc7622f1485e713f1c1a2012a409b5162d8ff9515",
    "0004_event_documents.sql": "662cf0e7703a51129aa8ba73e0d7be6cafe239d3e17de69484b06d2abc2f9b40",
    "0005_event_times_z.sql": "34ff37496363f8c6fb398f8d392205ae21e8db694d9dfcb9ec11439b19580fa7",
}


def test_every_file_declares_its_kind_and_old_checksums_hold():
    found = {m.filename: m for m in migrations.load()}
    assert {name: found[name].sha256 for name in FIELD_CHECKSUMS} == FIELD_CHECKSUMS
    assert all(m.kind in ("expand", "contract") for m in found.values())
    for path in migrations.MIGRATIONS_DIR.glob("*.sql"):
        assert path.read_text().startswith("-- kind: "), path.name


@pytest.mark.parametrize("first, error", [
    ("CREATE TABLE t (n int);", "its first line must declare its kind, `-- kind: expand` or `-- kind: contract`"),
    ("-- kind: shrink\nCREATE TABLE t (n int);", "unknown kind 'shrink' in its first line (expected expand or contract)"),
    ("-- kind:\nCREATE TABLE t (n int);", "unknown kind '' in its first line"),
])
def test_missing_or_unknown_kind_is_one_line_naming_the_file(tmp_path, first, error):
    folder = copy_migrations(tmp_path)
    (folder / "9000_new.sql").write_text(first)
    with pytest.raises(SchemaError) as raised:
        migrations.load(folder)
    assert str(raised.value).startswith(f"migration file 9000_new.sql: {error}")
    assert "\n" not in str(raised.value)


def test_a_concurrently_file_holds_only_index_statements(tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9000_mixed.sql").write_text("-- kind: expand\nCREATE INDEX CONCURRENTLY IF NOT EXISTS e_x ON events "
                                           "(topic);\nALTER TABLE events ADD COLUMN x text;")
    with pytest.raises(SchemaError, match=r"^migration file 9000_mixed\.sql: CONCURRENTLY runs outside a transaction"):
        migrations.load(folder)


def test_setup_stops_before_a_contract_migration_and_the_contract_step_applies_it(empty_database_url, tmp_path):
    migrations.migrate(empty_database_url)  # an installed database
    folder = copy_migrations(tmp_path)
    (folder / "9000_narrow.sql").write_text("-- kind: contract\nALTER TABLE events ADD COLUMN narrow text;")
    (folder / "9001_after.sql").write_text("-- kind: expand\nCREATE TABLE after_narrow (n int);")
    said = []
    assert migrations.migrate(empty_database_url, said.append, directory=folder) == 0
    assert said == ["stopping before contract migration 9000_narrow.sql (2 migration(s) left): run "
                    "`python -m procs.setup --contract` once every instance runs this release"]
    database = db.Database(empty_database_url)
    # The new code works before its contract migrations: ready, the step still to come.
    state = migrations.status(database, folder)
    assert state.current and state.contract_pending == ("9000_narrow.sql", "9001_after.sql")
    assert migrations.migrate(empty_database_url, said.append, directory=folder, contract=True) == 2
    rows = database.fetchall("SELECT version, kind FROM schema_migrations WHERE version >= 6 ORDER BY 1")
    assert rows == [(6, "expand"), (9000, "contract"), (9001, "expand")]
    assert database.fetchall("SELECT kind FROM schema_migrations WHERE version < 6") == [("expand",)] * 5
    # This code, which does not know 9000, now refuses: the same line as ever, naming the kind.
    state = migrations.status(database)
    assert not state.current and state.fatal
    assert state.reason.startswith("the database has migration 9000_narrow that this code does not know")


def test_a_fresh_database_gets_contract_migrations_too(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9000_narrow.sql").write_text("-- kind: contract\nCREATE TABLE narrow (n int);")
    assert migrations.migrate(empty_database_url, directory=folder) == len(migrations.load(folder))


def test_a_newer_expand_schema_is_one_the_old_code_works_on(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9000_wider.sql").write_text("-- kind: expand\nALTER TABLE events ADD COLUMN wider text;")
    migrations.migrate(empty_database_url, directory=folder)
    database = db.Database(empty_database_url)
    state = migrations.status(database)
    assert state.current and not state.fatal and state.newer == ("9000_wider",)
    assert state.version == 9000 and state.expected == migrations.code_schema()
    said = []
    assert migrations.migrate(empty_database_url, said.append) == 0  # the old setup, run again
    assert said == ["the database has 1 newer expand migration(s) this code does not know (9000_wider): "
                    "it works on them"]


def test_a_changed_kind_is_refused(empty_database_url, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "9000_wider.sql").write_text("-- kind: expand\nCREATE TABLE wider (n int);")
    migrations.migrate(empty_database_url, directory=folder)
    (folder / "9000_wider.sql").write_text("-- kind: contract\nCREATE TABLE wider (n int);")
    with pytest.raises(SchemaError, match=r"^migration 9000_wider\.sql changed its kind after it was applied "
                                          r"\(expand in the database, contract in code\)"):
        migrations.migrate(empty_database_url, directory=folder)


def test_statements_split_outside_quotes_and_comments():
    sql = ("-- a; comment\nCREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;b' $body$;\n"
           "/* b; */ SELECT 'it''s; here', \"odd;name\" FROM t;  ;\n")
    found = migrations.statements(sql)
    assert [s.bare for s in found] == ["CREATE FUNCTION F() RETURNS TEXT LANGUAGE SQL AS $$?$$",
                                       "SELECT '?' , \"ODD;NAME\" FROM T"]
    assert found[1].text == "/* b; */ SELECT 'it''s; here', \"odd;name\" FROM t"


def held_open(url, *statements):
    """A session that ran `statements` in a transaction it keeps open, holding their locks."""
    conn = db.connect(url, "ayon-test-holder")
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    return conn


def index_state(url, name):
    conn = db.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,))
        row = cur.fetchone()
    conn.close()
    return None if row is None else row[0]


def test_a_migration_behind_a_held_lock_fails_cleanly_and_runs_again(empty_database_url, tmp_path):
    migrations.migrate(empty_database_url)
    folder = copy_migrations(tmp_path)
    (folder / "9000_wider.sql").write_text("-- kind: expand\nALTER TABLE events ADD COLUMN wider text;")
    holder = held_open(empty_database_url, "SELECT count(*) FROM events")  # a long read: ACCESS SHARE
    said = []
    try:
        started = time.monotonic()
        with pytest.raises(MigrationLocked) as raised:
            migrations.migrate(empty_database_url, said.append, directory=folder, lock_timeout=0.3, attempts=2)
        assert time.monotonic() - started < 5
        assert str(raised.value).startswith("migration 9000_wider.sql waited 0.3 s for a lock (lock_timeout) 2 times, "
                                            "nothing of it applied: canceling statement due to lock timeout")
        assert raised.value.exit_code == 1  # running it again can help
        assert said == ["migration 9000_wider.sql waited 0.3 s for a lock (lock_timeout), nothing of it applied; "
                        "trying again (1/2)"]
        database = db.Database(empty_database_url)
        assert database.fetchone("SELECT count(*) FROM schema_migrations WHERE version = 9000") == (0,)
        # Nobody queued behind it: a writer goes on while the reader still holds its lock.
        database.execute("INSERT INTO events (topic, status) VALUES ('test.after', 'finished')")
    finally:
        holder.close()
    assert migrations.migrate(empty_database_url, directory=folder, lock_timeout=0.3) == 1


def test_a_concurrent_index_behind_a_writer_leaves_nothing_and_runs_again(empty_database_url, tmp_path):
    migrations.migrate(empty_database_url)
    folder = copy_migrations(tmp_path)
    (folder / "9000_probe_index.sql").write_text(
        "-- kind: expand\nCREATE INDEX CONCURRENTLY IF NOT EXISTS events_probe ON events (description);\n")
    assert migrations.load(folder)[-1].concurrent
    # A writer's open transaction: CREATE INDEX CONCURRENTLY makes its index, then waits for such writers.
    holder = held_open(empty_database_url, "INSERT INTO events (topic, status) VALUES ('test.writer', 'pending')")
    try:
        with pytest.raises(MigrationLocked, match=r"^migration 9000_probe_index\.sql waited 0\.3 s for a lock"):
            migrations.migrate(empty_database_url, directory=folder, lock_timeout=0.3, attempts=1)
        # Left invalid (its drop would wait for the same writer): unused, and dropped by the next run.
        assert index_state(empty_database_url, "events_probe") is False
    finally:
        holder.close()
    assert migrations.migrate(empty_database_url, directory=folder, lock_timeout=0.3) == 1
    assert index_state(empty_database_url, "events_probe") is True
    assert migrations.migrate(empty_database_url, directory=folder) == 0
