"""The image as users run it: one container per role set, checked from outside."""

import json
import re
import time
import uuid

import psycopg2
import pytest

from tests.image.podman import (
    HARDENED_OPTIONS,
    STOP_GRACE,
    TOKEN,
    Container,
    podman,
    progress,
    run_once,
    supervisor_status,
)
from tests.pg import free_port
from tests.roles import names_for

IMAGE_USER_ID = "10001"
# supervisord's event listeners: the watchdog (ends the instance when a program goes FATAL,
# takes the finished setup out of the table) and the console (every program's lines on
# stdout); supervisorctl lists them beside the programs but they are not programs.
LISTENERS = ("watchdog", "console")
ALL_IN_ONE = tuple(names_for(server=True, setup=True, maintenance=True, embedded=True))


def running(**roles: bool) -> dict[str, str]:
    """Every program of these roles RUNNING (a finished setup has left the table)."""
    return {name: "RUNNING" for name in names_for(**roles) if name != "setup"}
# Whose environment, as /proc shows it, holds the token: nobody's. The server has it in memory only
# (forked from supervisord, supervision/preload.py), and it answers with it.
ENVIRON_CHECK = """
import json, os, urllib.request
bind = os.environ.get("AYON_HTTP_BIND", "0.0.0.0:5000").replace("0.0.0.0", "127.0.0.1")
request = urllib.request.Request("http://" + bind + "/api/config",
                                 headers={"Authorization": "Bearer " + os.environ["AYON_ADMIN_TOKEN"]})
found = {"answer": ["server", urllib.request.urlopen(request, timeout=30).status]}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue  # this check, run with the container's environment
    try:
        env = open(f"/proc/{pid}/environ", "rb").read()
        name = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()[:100]
    except OSError:
        continue
    found[pid] = [name, os.environ["AYON_ADMIN_TOKEN"].encode() in env]
print(json.dumps(found))
"""


def programs_of(states: dict[str, str]) -> dict[str, str]:
    return {name: state for name, state in states.items() if name not in LISTENERS}


def query(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def all_in_one():
    """Every role and the embedded PostgreSQL in one container, as `docker run IMAGE` does."""
    pg_port = free_port()
    container = Container({
        "AYON_INSTANCE_ID": "all-in-one",
        "AYON_HTTP_BIND": f"127.0.0.1:{free_port()}",
        "AYON_EMBEDDED_PG_PORT": str(pg_port),
        "AYON_ADMIN_TOKEN": TOKEN,
    })
    container.pg_port = pg_port
    try:
        yield container.start()
    finally:
        container.remove()


def test_all_in_one_becomes_healthy(all_in_one):
    started = time.monotonic()
    verdict = all_in_one.wait_healthy()
    progress(f"all-in-one healthy in {time.monotonic() - started:.1f} s: {verdict}")
    assert all_in_one.inspect("{{.State.Health.Status}}") == "healthy"
    # The finished setup is gone from the table: `supervisorctl status` as a probe says all is well.
    states = programs_of(supervisor_status(all_in_one))
    assert states == running(server=True, setup=True, maintenance=True, embedded=True)
    status = all_in_one.exec("supervisorctl", "status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_supervisorctl_tail_shows_one_program_and_the_log_shows_all(all_in_one):
    all_in_one.wait_healthy()
    tail = all_in_one.exec("supervisorctl", "tail", "server")
    assert tail.returncode == 0, tail.stdout + tail.stderr
    assert "[all-in-one/server]" in tail.stdout and "Booting worker" in tail.stdout, tail.stdout
    others = re.findall(r"\[all-in-one/(\w+)\]", tail.stdout)
    assert set(others) == {"server"}, tail.stdout
    # `podman logs` still has every program's lines, each with its name
    logs = all_in_one.logs(tail=2000)
    for program in ALL_IN_ONE:
        assert f"[all-in-one/{program}]" in logs, program


def test_all_in_one_secrets_stay_where_needed(all_in_one):
    all_in_one.wait_healthy()
    # The embedded PostgreSQL wants a password, even on loopback.
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(host="127.0.0.1", port=all_in_one.pg_port, user="postgres", dbname="postgres",
                         passfile="/nonexistent", connect_timeout=5)
    result = all_in_one.exec("python", "-c", ENVIRON_CHECK)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found.pop("answer") == ["server", 200]
    with_token = sorted({name for name, token in found.values() if token})
    assert with_token == [], with_token
    assert len([name for name, _ in found.values() if name.startswith("gunicorn: worker")]) == 2, found
    # supervisord (PID 1) itself was started without the secrets
    assert found["1"][1] is False, found["1"]
    postgres = [entry for entry in found.values() if entry[0].startswith("postgres")]
    assert len(postgres) > 3 and not any(token for _, token in postgres)


def test_all_in_one_maintenance_by_hand_finds_its_database(all_in_one):
    # `docker exec ayon python -m maintenance`: the embedded PostgreSQL's owner password is in the data folder.
    all_in_one.wait_healthy()
    result = all_in_one.exec("python", "-m", "maintenance", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def test_all_in_one_processes_run_as_the_image_user(all_in_one):
    all_in_one.wait_healthy()
    table = podman("top", all_in_one.name, "huser", "args", check=True).stdout.splitlines()[1:]
    assert len(table) > 8, table  # supervisord, its programs, gunicorn workers, PostgreSQL
    assert {line.split()[0] for line in table} == {IMAGE_USER_ID}, "\n".join(table)
    assert all_in_one.exec("id", "-un").stdout.strip() == "ayon"


def test_all_in_one_stops_within_the_grace_period(all_in_one):
    all_in_one.wait_healthy()
    started = time.monotonic()
    podman("stop", "--time", str(STOP_GRACE), all_in_one.name, timeout=STOP_GRACE + 30, check=True)
    took = time.monotonic() - started
    progress(f"podman stop took {took:.1f} s")
    assert took < STOP_GRACE, all_in_one.logs()
    assert all_in_one.inspect("{{.State.ExitCode}}") == "0", all_in_one.logs()
    assert "stopped: server (exit status 0)" in all_in_one.logs(tail=200)


def test_bad_flag_exits_2_with_one_error_line():
    result = run_once({"AYON_RUN_SERVER": "maybe"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: AYON_RUN_SERVER='maybe': expected one of true/false/1/0/yes/no/on/off"
    ]


def test_setup_only_exits_0_against_a_postgresql(pg):
    url = pg.url_for("img_" + uuid.uuid4().hex[:10])  # setup must create it
    try:
        started = time.monotonic()
        result = run_once({
            "AYON_RUN_SERVER": "false", "AYON_RUN_MAINTENANCE": "false",
            "AYON_POSTGRES_URL": url, "AYON_ADMIN_TOKEN": TOKEN,
        })
        progress(f"setup-only container exited {result.returncode} in {time.monotonic() - started:.1f} s")
        assert result.returncode == 0, result.stdout + result.stderr
        assert query(url, "SELECT count(*) FROM schema_migrations")[0][0] >= 1
        assert query(url, "SELECT count(*) FROM server_config")[0][0] == 1
    finally:
        pg.drop_database(url)


def test_server_only_runs_exactly_its_programs(container_factory, database_url):
    # Hardened as the Kubernetes Deployment runs it: read-only root, no capabilities.
    container = container_factory({
        "AYON_RUN_SETUP": "false", "AYON_RUN_MAINTENANCE": "false",
        "AYON_POSTGRES_URL": database_url, "AYON_ADMIN_TOKEN": TOKEN,
        "AYON_INSTANCE_ID": "server-only", "AYON_HTTP_BIND": f"127.0.0.1:{free_port()}",
    }, options=HARDENED_OPTIONS)
    container.wait_healthy()
    assert programs_of(supervisor_status(container)) == running(server=True, setup=False, maintenance=False,
                                                                embedded=False)

    # The health check fails as soon as one expected program is not running.
    assert container.exec("supervisorctl", "stop", "webactions").returncode == 0
    verdict = podman("healthcheck", "run", container.name)
    assert verdict.returncode != 0
    assert container.exec("/app/scripts/healthcheck").stdout.strip() == "unhealthy: webactions is STOPPED"
    assert container.exec("supervisorctl", "start", "webactions").returncode == 0
    container.wait_healthy()


def test_maintenance_only_runs_exactly_its_programs_and_runs_the_procedure(container_factory, database_url):
    container = container_factory({
        "AYON_RUN_SETUP": "false", "AYON_RUN_SERVER": "false",
        "AYON_POSTGRES_URL": database_url, "AYON_INSTANCE_ID": "maintenance-only",
    })
    container.wait_healthy()
    assert programs_of(supervisor_status(container)) == running(server=False, setup=False, maintenance=True,
                                                                embedded=False)

    result = container.exec("python", "-m", "maintenance", timeout=180)
    finished = [line for line in result.stdout.splitlines() if "maintenance finished" in line] or ["(no output)"]
    progress("python -m maintenance: " + finished[-1].split(": ", 1)[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = query(database_url, "SELECT status FROM events WHERE topic = 'server.maintenance'")
    assert ("finished",) in rows, rows


def test_one_shot_maintenance_with_no_database_refuses_at_once():
    # `docker run IMAGE python -m maintenance` with AYON_POSTGRES_URL forgotten: no instance runs
    # the embedded PostgreSQL beside it, so it says so instead of waiting for 127.0.0.1:5432.
    started = time.monotonic()
    result = run_once({}, "python", "-m", "maintenance")
    took = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "Error: AYON_POSTGRES_URL is not set, and no instance with the embedded PostgreSQL runs on "
        "AYON_DATA_DIR /var/lib/ayon: set AYON_POSTGRES_URL to the database's URL"], result.stderr
    progress(f"python -m maintenance with no database: exit 2 in {took:.1f} s (container start included)")


def test_one_shot_maintenance_run_as_the_cronjob_does(database_url):
    result = run_once({"AYON_POSTGRES_URL": database_url, "AYON_INSTANCE_ID": "cronjob"},
                      "python", "-m", "maintenance", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = query(database_url, "SELECT status FROM events WHERE topic = 'server.maintenance'")
    assert rows == [("finished",)], rows
    # No log collector in a CronJob's pod: the run stored its own log records before it exited.
    assert "logs: stored" in result.stdout.strip().splitlines()[-1], result.stdout
    logged = query(database_url, "SELECT count(*) FROM logs WHERE instance = 'cronjob' AND program = 'maintenance' "
                                 "AND message LIKE 'maintenance finished%%'")
    assert logged == [(1,)], logged
