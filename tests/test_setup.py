"""The setup process, run for real as `python -m procs.setup`."""

import os
import re
import subprocess
import sys
import time

from server.core import config, db, embedded_pg, instancelock
from tests.conftest import ROOT
from tests.pg import EmbeddedPostgres, free_port


def run_setup(env, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "procs.setup"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_eight_concurrent_setups_on_an_empty_server(pg, env):
    url = pg.url_for("race_" + str(free_port()))
    env["AYON_POSTGRES_URL"] = url
    procs = [
        subprocess.Popen([sys.executable, "-m", "procs.setup"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    try:
        assert [p.returncode for p in procs] == [0] * 8, outputs
        text = "\n".join(outputs)
        assert text.count("created database") == 1
        assert text.count("applied migration 0001_initial.sql") == 1
        database = db.Database(url)
        rows = database.fetchall("SELECT version FROM schema_migrations")
        assert len(rows) == len(set(rows)) >= 1
        assert database.fetchone("SELECT count(*) FROM server_config") == (1,)
        database.close()
    finally:
        pg.drop_database(url)


def test_closed_port_gives_up_with_waiting_lines(env):
    port = free_port()
    env["AYON_POSTGRES_URL"] = f"postgresql://ayon@127.0.0.1:{port}/ayon"
    env["AYON_DB_WAIT_TIMEOUT"] = "3"
    started = time.monotonic()
    result = run_setup(env)
    assert time.monotonic() - started < 5
    assert result.returncode == 1
    assert re.search(rf"waiting for PostgreSQL at 127\.0\.0\.1:{port} \(\d/3 s\): ", result.stdout)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: PostgreSQL at 127.0.0.1:{port} did not answer within 3 s")


def test_second_run_is_a_fast_noop(env):
    first = run_setup(env)
    assert first.returncode == 0, first.stderr
    second = run_setup(env)
    assert second.returncode == 0, second.stderr
    assert "applied migration" not in second.stdout
    took = float(re.search(r"setup done in ([\d.]+) s: schema version \d+, nothing to migrate", second.stdout)[1])
    assert took < 1.0


def test_config_file_is_applied(env, tmp_path, database):
    path = tmp_path / "ayon.yaml"
    path.write_text("maintenance:\n  time: '04:30'\n  tasks:\n    remove_old_logs: {retention_days: 14}\n")
    env["AYON_CONFIG_FILE"] = str(path)
    result = run_setup(env)
    assert result.returncode == 0, result.stderr
    with database.transaction() as cur:
        doc = config.get(cur)
    assert doc["maintenance"]["time"] == "04:30"
    assert doc["maintenance"]["tasks"]["remove_old_logs"]["retention_days"] == 14
    assert doc["maintenance"]["timezone"] == "UTC"


def test_invalid_config_file_changes_nothing(pg, env, tmp_path):
    url = pg.url_for("never_" + str(free_port()))
    env["AYON_POSTGRES_URL"] = url
    path = tmp_path / "ayon.yaml"
    path.write_text("maintenance:\n  time: '25:00'\n")
    env["AYON_CONFIG_FILE"] = str(path)
    result = run_setup(env)
    assert result.returncode == 2
    assert result.stderr == f"Error: AYON_CONFIG_FILE {path}: maintenance.time: expected HH:MM (24-hour), got '25:00'\n"
    conn = pg.admin()
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.database_name(url),))
        assert cur.fetchone() is None
    conn.close()


def test_generated_admin_token_is_printed_once_and_stored_hashed(env, database):
    env.pop("AYON_ADMIN_TOKEN")
    first = run_setup(env)
    assert first.returncode == 0, first.stderr
    token = re.search(r"Generated admin token \(shown once, keep it\): (\S+)", first.stdout)[1]
    second = run_setup(env)
    assert "Generated admin token" not in second.stdout
    stored = database.fetchone("SELECT value FROM secrets WHERE name = 'admin_token_sha256'")[0]
    assert token not in stored and len(stored) == 64


def test_embedded_setup_makes_the_owner_role_and_migrates_as_it(tmp_path):
    # The layout the postgres program makes: DATA/postgres, its superuser's password in DATA/secrets.
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    server = EmbeddedPostgres(data / "postgres", free_port())
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AYON_")}
        env.update(AYON_DATA_DIR=str(data), AYON_EMBEDDED_PG_PORT=str(server.port), AYON_INSTANCE_ID="test",
                   AYON_DB_WAIT_TIMEOUT="5", AYON_RUN_SERVER="true")
        held = instancelock.DataFolderLock(str(data), "test")  # as the instance's supervisord holds it
        first = run_setup(env)
        assert first.returncode == 0, first.stderr
        assert "created role ayon" in first.stdout and "created database ayon owned by ayon" in first.stdout
        assert run_setup(env).returncode == 0
        database = db.Database(embedded_pg.url(data, server.port))
        try:
            owners = database.fetchall("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
                                       "ON n.oid = c.relnamespace WHERE n.nspname = 'public'")
            assert owners == [("ayon",)]
            assert database.fetchone("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == (False,)
        finally:
            database.close()
        # A superuser password file that no longer matches: one line, no password in it.
        (data / "secrets" / "postgres.pgpass").write_text("*:*:*:postgres:not-the-password\n")
        env["AYON_DB_WAIT_TIMEOUT"] = "1"
        failed = run_setup(env)
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines()[-1].startswith(
            f"Error: PostgreSQL at 127.0.0.1:{server.port} did not answer within 1 s (")
        assert server.password not in failed.stdout + failed.stderr
        assert "not-the-password" not in failed.stdout + failed.stderr
        held.give_up()
    finally:
        server.stop()


def test_wait_goes_with_contract_only(env):
    result = subprocess.run([sys.executable, "-m", "procs.setup", "--wait", "5"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "Error: --wait goes with --contract (see python -m procs.setup --help)\n"


def test_the_contract_step_on_a_database_nobody_runs_on_applies_and_exits_0(env):
    result = subprocess.run([sys.executable, "-m", "procs.setup", "--contract"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "nothing to migrate" in result.stdout + result.stderr
