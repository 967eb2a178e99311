"""`ayon-doctor` against a real instance: healthy it passes, and each broken set-up is named with a non-zero exit.

One instance (every role, an external database) serves the module; each
test breaks one thing, reads the doctor's verdict, and mends it.
"""

import json
import os
import subprocess
import sys
import time

import psycopg2.extensions
import pytest

from server.core import db, layout, logspool
from tests.conftest import ROOT
from tests.instance import Instance, poll
from tests.pg import free_port
from supervision import doctor as doctor_mod
from tests.roles import names_for

TOKEN = "doctor-test-token"
CHECKS = ["database", "schema", "pooler", "connections", "clock", "data-disk", "db-disk", "spool", "locks",
          "maintenance", "programs", "installs"]
PROGRAMS = set(names_for(server=True, setup=True, maintenance=True, embedded=False))
SPOOL_MAX = 1024 * 1024


def doctor(env: dict, *args: str, timeout: float = 60) -> tuple[int, dict[str, str], str]:
    """(exit code, {check: status} from the lines, stdout and stderr) of one `ayon-doctor` run; with --json,
    stdout alone in place of the output (it must parse)."""
    result = subprocess.run([sys.executable, "-m", "supervision.doctor", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    verdicts = {}
    if "--json" in args:
        assert result.stderr == "", result.stderr
        return result.returncode, verdicts, result.stdout
    else:
        for line in result.stdout.splitlines():
            status, check = line.split()[:2]
            verdicts[check] = status
    return result.returncode, verdicts, output


def lines_of(output: str) -> dict[str, str]:
    return {line.split()[1]: line for line in output.splitlines() if line[:4].strip() in ("ok", "warn", "fail")}


def password_of(url: str) -> str:
    return psycopg2.extensions.parse_dsn(url).get("password", "")


@pytest.fixture(scope="module")
def instance(pg, tmp_path_factory):
    url = pg.new_database()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
    env.update(AYON_POSTGRES_URL=url, AYON_INSTANCE_ID="doc", AYON_ADMIN_TOKEN=TOKEN, AYON_SERVER_WORKERS="1",
               AYON_LOG_SPOOL_MAX=str(SPOOL_MAX), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    node = Instance(env, tmp_path_factory.mktemp("doctor")).start()
    try:
        node.wait_ready(120)
        node.wait_running(PROGRAMS, 60)
        # Every program has beaten once (the server's beat comes from its worker a moment after ready).
        database = db.Database(url, size=1)
        poll(lambda: database.fetchone("SELECT count(*) FROM instances WHERE instance_id = 'doc'")[0]
             >= len(PROGRAMS - {"setup"}), 60, "a heartbeat of every program")
        database.close()
        yield node
    finally:
        node.kill()
        pg.drop_database(url)


def test_a_healthy_instance_passes_with_every_check_ok(instance):
    code, verdicts, output = doctor(instance.env)
    assert code == 0, output
    assert list(verdicts) == CHECKS, output
    assert set(verdicts.values()) == {"ok"}, output
    lines = lines_of(output)
    assert "round trip" in lines["database"] and "direct" in lines["pooler"], output
    assert "'doc' (supervisord pid" in lines["locks"] and "(python -m procs.logcollector)" in lines["locks"], output
    secret = password_of(instance.env["AYON_POSTGRES_URL"])
    if secret:
        assert secret not in output and ":***@" in lines["database"], output
    assert TOKEN not in output

    code, _, text = doctor(instance.env, "--json")
    document = json.loads(text)
    assert code == 0 and document["status"] == "ok" and document["exit"] == 0
    assert {c["check"]: c["status"] for c in document["checks"]} == verdicts
    assert (secret not in text if secret else True) and TOKEN not in text


def test_a_stale_schema_is_named(instance):
    database = db.Database(instance.env["AYON_POSTGRES_URL"], size=1)
    try:
        # A newer release's contract migration: this code cannot work on it (an expand one it would accept).
        database.execute("INSERT INTO schema_migrations (version, name, sha256, kind) "
                         "VALUES (9999, 'from_later', 'x', 'contract')")
        code, verdicts, output = doctor(instance.env)
        assert code == 2 and verdicts["schema"] == "fail", output
        assert "9999_from_later that this code does not know" in lines_of(output)["schema"], output
        code, _, text = doctor(instance.env, "--json")
        checks = {c["check"]: c for c in json.loads(text)["checks"]}
        assert code == 2 and checks["schema"]["status"] == "fail" and checks["schema"]["todo"], text
        database.execute("DELETE FROM schema_migrations WHERE version = 9999")

        last = database.fetchone("SELECT version, name, sha256 FROM schema_migrations ORDER BY version DESC LIMIT 1")
        database.execute("DELETE FROM schema_migrations WHERE version = %s", (last[0],))
        try:
            code, verdicts, output = doctor(instance.env)
            assert code == 2 and verdicts["schema"] == "fail", output
            assert "1 migration(s) not applied yet" in output and "run setup" in output, output
        finally:
            database.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)", last)
    finally:
        database.execute("DELETE FROM schema_migrations WHERE version = 9999")
        database.close()


def test_a_stuck_maintenance_lock_is_named_with_its_holder(instance):
    url = instance.env["AYON_POSTGRES_URL"]
    database = db.Database(url, size=1)
    with db.held_lock(url, db.MAINTENANCE_LOCK, "ayon-test-stuck") as taken:
        assert taken
        poll(lambda: database.fetchone(
            "SELECT clock_timestamp() - xact_start > make_interval(secs => %s) FROM pg_stat_activity "
            "WHERE application_name = 'ayon-test-stuck'", (doctor_mod.LOCK_STUCK + 0.5,))[0], 30,
            "the lock held longer than the doctor allows with no run")
        code, verdicts, output = doctor(instance.env)
    database.close()
    assert code == 2 and verdicts["locks"] == "fail", output
    line = lines_of(output)["locks"]
    assert "ayon.maintenance: STUCK" in line and "ayon-test-stuck" in line and "pg_terminate_backend(" in line, line
    code, verdicts, output = doctor(instance.env)
    assert verdicts["locks"] == "ok", output


def test_a_stopped_program_is_named(instance):
    assert instance.ctl("stop", "webactions").returncode == 0
    try:
        code, verdicts, output = doctor(instance.env)
        assert code == 2 and verdicts["programs"] == "fail", output
        line = lines_of(output)["programs"]
        assert "webactions is STOPPED" in line and "supervisorctl start webactions" in line, line
    finally:
        instance.ctl("start", "webactions")
        instance.wait_running(PROGRAMS, 60)


def test_a_full_spool_is_named(instance):
    assert instance.ctl("stop", "logcollector").returncode == 0
    try:
        spool = layout.spool_dir(instance.env["AYON_DATA_DIR"])
        line = logspool.encode(time.time() - 120, "INFO", "doc", "doctortest", os.getpid(), "ayon.test", "x" * 1000)
        (spool / f"doctortest-{os.getpid()}-abcdef-000001{logspool.SUFFIX}").write_bytes(
            line * (SPOOL_MAX // len(line) + 1))
        code, verdicts, output = doctor(instance.env)
        assert code == 2 and verdicts["spool"] == "fail", output
        text = lines_of(output)["spool"]
        assert "1.0 MiB undelivered" in text and "logcollector" in text, text
    finally:
        instance.ctl("start", "logcollector")


def test_an_unreachable_database_fails_fast_and_shows_no_password(tmp_path):
    secret = "doctor-secret-pw"
    url = f"postgresql://ayon:{secret}@127.0.0.1:{free_port()}/ayon"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
    env.update(AYON_POSTGRES_URL=url, AYON_DATA_DIR=str(tmp_path / "data"), AYON_ADMIN_TOKEN=TOKEN,
               AYON_SUPERVISOR_CONF=str(tmp_path / "supervisord.conf"), PYTHONPATH=str(ROOT))
    started = time.monotonic()
    code, verdicts, output = doctor(env)
    assert time.monotonic() - started < 15, output
    assert code == 2 and verdicts["database"] == "fail", output
    assert list(verdicts) == CHECKS
    assert "did not answer" in lines_of(output)["database"] and "AYON_POSTGRES_URL" in output, output
    assert secret not in output and TOKEN not in output and ":***@127.0.0.1" in output, output
    code, _, text = doctor(env, "--json")
    document = json.loads(text)
    assert code == 2 and document["status"] == "fail"
    assert {c["check"]: c["status"] for c in document["checks"]} == verdicts
    assert secret not in text


def test_a_transaction_pooler_without_a_session_url_is_named(pg, database_url, tmp_path):
    from tests.fleet import PgBouncer

    bouncer = PgBouncer(pg.server_url, "transaction").start()
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
        env.update(AYON_POSTGRES_URL=bouncer.url(database_url), AYON_DATA_DIR=str(tmp_path / "data"),
                   AYON_SUPERVISOR_CONF=str(tmp_path / "supervisord.conf"), PYTHONPATH=str(ROOT))
        code, verdicts, output = doctor(env)
        assert code == 2 and verdicts["pooler"] == "fail", output
        assert "transaction pooling" in lines_of(output)["pooler"] and "AYON_POSTGRES_SESSION_URL" in output, output
        code, verdicts, output = doctor({**env, "AYON_POSTGRES_SESSION_URL": database_url})
        assert verdicts["pooler"] == "ok", output
        assert "LISTEN works on AYON_POSTGRES_SESSION_URL" in lines_of(output)["pooler"], output
    finally:
        bouncer.stop()
