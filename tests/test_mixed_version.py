"""Release N and N+1 side by side on one database, as a rolling upgrade runs them.

Release N is this tree; N+1 is a copy of it plus migrations (the way tests/test_new_program.py
adds a program): an expand one, a nullable `events.origin` that N+1's code writes and its event
documents carry, and in the second case a contract one that makes it NOT NULL. Everything runs
for real: instances under supervisord, N+1's setup and contract step as commands, gunicorn.
"""

import json
import shutil
import subprocess
import sys
import threading
import time

from server.core import migrations
from tests.apiclient import AUTH, Gunicorn, http
from tests.conftest import ROOT
from tests.instance import Instance, http_get, poll

EXPAND = """-- kind: expand
-- Where an event was written from: written by release N+1, NULL from release N (which knows nothing of it).
ALTER TABLE events ADD COLUMN origin text;

CREATE OR REPLACE FUNCTION ayon_event_doc(e events) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object(
        'id', e.id, 'topic', e.topic, 'status', e.status, 'description', e.description,
        'summary', e.summary, 'payload', e.payload, 'sender', e.sender, 'depends_on', e.depends_on,
        'origin', e.origin,
        'created_at', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(e.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
$$;
"""
CONTRACT = """-- kind: contract
-- Every writer is release N+1 now: origin is required.
UPDATE events SET origin = 'before N+1' WHERE origin IS NULL;
ALTER TABLE events ALTER COLUMN origin SET NOT NULL;
"""
EXPAND_FILE, CONTRACT_FILE = "0007_event_origin.sql", "0008_event_origin_required.sql"
ORIGIN = "release N+1"


def release_n1(tmp_path, contract: bool):
    """A copy of this tree with N+1's migrations, and its event writer filling the new column."""
    assert migrations.code_schema() == 6, "N+1's migrations are numbered after this tree's last one"
    tree = tmp_path / "n1"
    for package in ("server", "supervision", "procs", "maintenance"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    folder = tree / "server" / "core" / "migrations"
    (folder / EXPAND_FILE).write_text(EXPAND)
    if contract:
        (folder / CONTRACT_FILE).write_text(CONTRACT)
    writer = tree / "server" / "core" / "events.py"
    text = writer.read_text()
    columns = "payload, sender, depends_on) "
    values = '"VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"'
    assert text.count(columns) == 1 and text.count(values) == 1
    writer.write_text(text.replace(columns, "payload, sender, depends_on, origin) ").replace(
        values, f"\"VALUES (%s, %s, %s, %s, %s, %s, %s, '{ORIGIN}') RETURNING id\""))
    return tree


def server_only(env, folder, instance_id, root=ROOT) -> Instance:
    roles = dict(env, AYON_RUN_SERVER="true", AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="false",
                 AYON_INSTANCE_ID=instance_id, PYTHONPATH=str(root), AYON_SERVER_WORKERS="1")
    return Instance(roles, folder, root=root)


def command(env, tree, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=tree, env=dict(env, PYTHONPATH=str(tree)),
                          capture_output=True, text=True, timeout=timeout)


def get_json(instance, path):
    status, body, _ = http_get(instance.url + path, AUTH["Authorization"].split()[1])
    assert status == 200, (path, status, body)
    return json.loads(body)


def ready(instance) -> dict:
    status, body, _ = http_get(instance.url + "/health/ready")
    assert status == 200, body
    return json.loads(body)


def patch_config(instance, days: int) -> None:
    status, body, _ = http(instance.url + "/api/config", "PATCH", {**AUTH, "Content-Type": "application/json"},
                           b'{"maintenance": {"tasks": {"remove_old_logs": {"retention_days": %d}}}}' % days)
    assert status == 200, body


def test_release_n_keeps_serving_beside_n1_until_the_contract_step(tmp_path, env, database):
    tree = release_n1(tmp_path, contract=False)
    old = server_only(env, tmp_path / "n", "release-n").start()
    new = None
    try:
        old.wait_ready(90)
        patch_config(old, 8)  # an event written by N, before N+1's migration

        setup = command(env, tree, "procs.setup")
        assert setup.returncode == 0, setup.stderr
        assert f"applied migration {EXPAND_FILE} (expand" in setup.stdout + setup.stderr

        # N stays ready on the newer schema and serves, both before and after its next readiness check.
        for _ in range(2):
            state = ready(old)
            assert state["reason"].startswith("current; the database also has newer expand migration(s) "
                                              "0007_event_origin"), state
        info = get_json(old, "/api/info")
        assert (info["schema_version"], info["code_schema_version"], info["schema_current"]) == (7, 6, True)

        new = server_only(env, tmp_path / "n1", "release-n1", root=tree).start()
        new.wait_ready(90)
        assert get_json(new, "/api/info")["code_schema_version"] == 7
        patch_config(new, 9)  # an event written by N+1, with its origin
        # Each release reads the other's events: N's documents now carry a field N does not know.
        for instance in (old, new):
            events = {e["summary"].get("changes", {}).get("maintenance.tasks.remove_old_logs.retention_days", {})
                      .get("new"): e for e in get_json(instance, "/api/events?topic=server.config_changed")["events"]}
            assert events[9]["origin"] == ORIGIN and events[8].get("origin") is None, events

        # The contract step refuses while N beats, naming it, with its exit code.
        refused = command(env, tree, "procs.setup", "--contract")
        assert refused.returncode == 3, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: contract migrations refused: 1 instance(s) of an older release still run: "
                               "release-n (release "), last
        assert last.endswith("; stop them (finish the rollout) and run `python -m procs.setup --contract` again")

        # With --wait it waits for N, and goes on once N has stopped (cleanly: no stale timeout).
        waiting = subprocess.Popen([sys.executable, "-m", "procs.setup", "--contract", "--wait", "120"], cwd=tree,
                                   env=dict(env, PYTHONPATH=str(tree)), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        lines = []
        threading.Thread(target=lambda: lines.extend(waiting.stdout), daemon=True).start()
        poll(lambda: any("waiting for the instances of older releases to stop" in line for line in lines), 60,
             lambda: f"the contract step's waiting line: {lines}")
        assert waiting.poll() is None
        assert old.stop() == 0
        stopped = time.monotonic()
        assert waiting.wait(60) == 0, "".join(lines)
        assert time.monotonic() - stopped < 20, "the contract step waited for N's heartbeats to go stale"
        rows = database.fetchall("SELECT program, stopped_at IS NOT NULL, schema_known FROM instances "
                                 "WHERE instance_id = 'release-n' ORDER BY program")
        assert rows and all(marked and known == 6 for _, marked, known in rows), rows
        assert ready(new)["status"] == "ready"
        assert new.stop() == 0
    finally:
        old.kill()
        if new is not None:
            new.kill()


def test_a_contract_migration_waits_for_the_contract_step_and_then_n_refuses(tmp_path, env, database):
    tree = release_n1(tmp_path, contract=True)
    old = server_only(env, tmp_path / "n", "release-n").start()
    try:
        old.wait_ready(90)
        setup = command(env, tree, "procs.setup")
        assert setup.returncode == 0, setup.stderr
        said = setup.stdout + setup.stderr
        assert f"applied migration {EXPAND_FILE} (expand" in said
        assert (f"stopping before contract migration {CONTRACT_FILE} (1 migration(s) left): run "
                "`python -m procs.setup --contract` once every instance runs this release") in said
        assert database.fetchall("SELECT version FROM schema_migrations WHERE version >= 7") == [(7,)]
        assert ready(old)["status"] == "ready"
        assert old.stop() == 0
    finally:
        old.kill()

    applied = command(env, tree, "procs.setup", "--contract")
    assert applied.returncode == 0, applied.stderr
    assert f"applied migration {CONTRACT_FILE} (contract" in applied.stdout + applied.stderr
    assert database.fetchall("SELECT version, kind FROM schema_migrations WHERE version >= 7 ORDER BY 1") == [
        (7, "expand"), (8, "contract")]

    line = ("the database has migration 0008_event_origin_required that this code does not know (a newer schema, "
            "and a contract migration: this release cannot work on it); run a server version that includes it")
    # Release N's server refuses readiness with that line, and keeps refusing (nothing to wait for).
    server = Gunicorn(dict(env, AYON_INSTANCE_ID="release-n-again"), workers=1)
    try:
        def refused():
            status, body, _ = http_get(server.url + "/health/ready")
            return body if status == 503 else None

        body = json.loads(poll(refused, 60, lambda: f"503 from release N's readiness: {server.output()}"))
        assert body == {"status": "not ready", "reason": line}
    finally:
        server.stop()
    # Its setup and its programs say the same in one line, and exit 2: restarting cannot help.
    again = command(env, ROOT, "procs.setup")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"Error: {line}"]
