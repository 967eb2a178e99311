"""What makes the procedure trustworthy, run for real: the dry run, time limits, the window, sizes, its own logs."""

import json
import re
import time

import psycopg2

from server.core import events
from tests.apiclient import AUTH, client, make_app  # noqa: F401  (fixture)
from tests.test_maintenance import run_cli, runs, seed_old_data, set_config, write_task
from tests.test_notify import receiver  # noqa: F401  (fixture: an HTTP receiver on loopback)

# Row counts of every table a task may touch, and the events as they are: what a dry run must leave alone.
TABLES = ("logs", "events", "instances", "packages", "package_blobs", "package_installs")


def snapshot(database) -> dict:
    found = {table: database.fetchone(f"SELECT count(*) FROM {table}")[0] for table in TABLES}
    found["events"] = database.fetchall("SELECT id, topic, status, updated_at FROM events ORDER BY id")
    # Storing the command's own log records may add the partitions of the days around today: not old data.
    recent = time.strftime("logs_%Y%m%d", time.gmtime(time.time() - 86400))
    found["partitions"] = [name for (name,) in database.fetchall(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass ORDER BY 1") if name == "logs_default" or name < recent]
    return found


def seed_packages(database):
    """A removed package past its retention, its blob, and an install record of an instance that is gone."""
    with database.transaction() as cur:
        cur.execute("INSERT INTO package_blobs (sha256, data, size, created_at) VALUES "
                    "(repeat('a', 64), '\\x00'::bytea, 1, now() - interval '100 days')")
        cur.execute("INSERT INTO packages (name, version, kind, sha256, active, removed_at) VALUES "
                    "('old', '1.0', 'addon', repeat('a', 64), false, now() - interval '100 days')")
        cur.execute("INSERT INTO package_installs (instance_id, name, version, status, updated_at) VALUES "
                    "('vanished', 'old', '1.0', 'installed', now() - interval '10 days')")


def test_dry_run_reports_what_the_real_run_then_removes_and_changes_nothing(env, database):
    seed_old_data(database)
    seed_packages(database)
    before = snapshot(database)

    result = run_cli(env, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    after = snapshot(database)
    previews = events.query(database, topic=events.MAINTENANCE_PREVIEW)
    assert len(previews) == 1 and previews[0]["status"] == "finished"
    # Nothing changed but the dry run's own event (and the log records it stored of itself).
    after["events"] = [e for e in after["events"] if str(e[0]) != previews[0]["id"]]
    assert {k: v for k, v in after.items() if k != "logs"} == {k: v for k, v in before.items() if k != "logs"}
    assert runs(database) == []
    preview = {t["name"]: t for t in previews[0]["summary"]["tasks"]}
    assert re.search(r"dry run: \d+ rows, about .+ would be removed; nothing was changed", result.stdout)

    real = run_cli(env)
    assert real.returncode == 0, real.stdout + real.stderr
    [run] = runs(database)
    removed = {t["name"]: t for t in run["summary"]["tasks"]}
    for name, task in removed.items():
        assert preview[name]["rows"] == task["rows"], (name, preview[name], task)
    assert removed["remove_old_logs"]["rows"] == 55 and removed["remove_old_events"]["rows"] == 30
    assert removed["cleanup_packages"]["rows"] == 3 and removed["remove_stale_instances"]["rows"] == 1
    assert previews[0]["summary"]["rows_total"] == sum(t["rows"] for t in removed.values())
    # Bytes: an estimate, but of the right order: the dropped 30-day partition alone is at least one page.
    assert preview["remove_old_logs"]["bytes_estimate"] >= 8192


def test_dry_run_takes_no_lock_a_real_run_waits_for(env, database, database_url):
    """A run in progress holds the fleet lock: a dry run still answers, and the run is not disturbed."""
    from server.core.db import connect, try_advisory_lock

    holder = connect(database_url, "test-lock-holder")
    holder.autocommit = True
    try:
        assert try_advisory_lock(holder, "ayon.maintenance")
        started = time.monotonic()
        result = run_cli(env, "--dry-run", "--task", "remove_old_events")
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < 20
        [preview] = events.query(database, topic=events.MAINTENANCE_PREVIEW)
        assert [t["name"] for t in preview["summary"]["tasks"]] == ["remove_old_events"]
    finally:
        holder.close()


def test_api_dry_run_and_preview_with_a_candidate_value(client, database):
    with database.transaction() as cur:
        cur.execute("INSERT INTO events (topic, status, updated_at) SELECT 'test.aged', 'finished', "
                    "now() - make_interval(days => d) + interval '12 hours' FROM generate_series(1, 60) AS d")
    before = snapshot(database)

    # Aged half a day short of d days: the stored retention (90 days) removes none; a candidate of 30 days, 30.
    stored = client.simulate_get("/api/maintenance/preview", params={"tasks": "remove_old_events"})
    assert stored.status_code == 200, stored.text
    assert stored.json["tasks"][0]["rows"] == 0 and "id" not in stored.json
    candidate = client.simulate_get("/api/maintenance/preview",
                                    params={"remove_old_events.retention_days": "30", "tasks": "remove_old_events"})
    assert candidate.status_code == 200, candidate.text
    assert candidate.json["tasks"][0]["rows"] == 30
    assert candidate.json["candidate"] == {"maintenance": {"tasks": {"remove_old_events": {"retention_days": 30}}}}
    switched_off = client.simulate_get("/api/maintenance/preview", params={"remove_old_events.enabled": "false"})
    assert next(t for t in switched_off.json["tasks"] if t["name"] == "remove_old_events")["rows"] is None
    assert snapshot(database) == before  # a preview records nothing

    posted = client.simulate_post("/api/maintenance/run", json={"dry_run": True, "tasks": ["remove_old_events"]})
    assert posted.status_code == 200, posted.text
    event = events.get(database, posted.json["id"])
    assert event["topic"] == events.MAINTENANCE_PREVIEW and event["summary"]["rows_total"] == 0
    assert posted.headers["location"] == f"/api/events/{posted.json['id']}"
    assert events.query(database, topic=events.MAINTENANCE_REQUEST) == []  # no run was asked for

    # Bad candidates are a 400 naming the parameter, and change nothing.
    for params, word in (({"remove_old_events.retention_days": "0"}, "remove_old_events.retention_days"),
                         ({"remove_old_events.retention_days": "ninety"}, "remove_old_events.retention_days"),
                         ({"remove_old_events.enabled": "maybe"}, "remove_old_events.enabled"),
                         ({"remove_old_events.max_minutes": "5"}, "unknown query parameter"),
                         ({"tasks": "nope"}, "unknown task 'nope'")):
        answer = client.simulate_get("/api/maintenance/preview", params=params)
        assert answer.status_code == 400 and word in answer.json["error"]["description"], (params, answer.text)


def test_a_task_past_its_time_limit_is_cancelled_and_the_next_tasks_run(env, database, database_url):
    # remove_stale_instances blocks on a lock another session holds on its table; its limit is 3 s
    # (0.05 min), the others keep the default. Vacuum skips the locked table rather than wait.
    set_config(database, {"maintenance": {"tasks": {"remove_stale_instances": {"max_minutes": 0.05}}}})
    holder = psycopg2.connect(database_url, application_name="test-lock-holder")
    try:
        holder.cursor().execute("LOCK TABLE instances IN SHARE MODE")  # readers pass, the DELETE waits
        started = time.monotonic()
        result = run_cli(env, "--task", "remove_stale_instances", "--task", "remove_old_events", "--task", "vacuum")
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert result.returncode == 1, result.stdout + result.stderr
    [run] = runs(database)
    assert run["status"] == "failed" and "remove_stale_instances" in run["description"]
    tasks = {t["name"]: t for t in run["summary"]["tasks"]}
    stuck = tasks["remove_stale_instances"]
    assert stuck["status"] == "failed" and stuck["timed_out"] is True
    assert stuck["error"] == "time limit of 0.05 min reached; its statement was cancelled"
    assert stuck["time_limit_s"] == 3.0 and 3.0 <= stuck["duration_s"] < 10
    assert tasks["remove_old_events"]["status"] == "finished"
    assert tasks["vacuum"]["status"] == "finished" and tasks["vacuum"]["time_limit_s"] == 3600
    assert took < 60
    assert re.search(r"remove_stale_instances +failed .* time limit of 0\.05 min reached", result.stdout)


def test_the_window_closes_and_the_tasks_left_are_skipped(env, database, tmp_path):
    # A task that works 3 s; the window is 1.2 s: what comes after it, vacuum included, is skipped.
    extra = write_task(tmp_path / "tasks", "aa_slow", """
        def run(ctx):
            ctx.stop.wait(3)
            return 0
    """, order=1)
    set_config(database, {"maintenance": {"window_minutes": 0.02}})
    result = run_cli(env, extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = runs(database)
    tasks = run["summary"]["tasks"]
    assert tasks[0]["name"] == "aa_slow" and tasks[0]["status"] == "finished"
    assert all(t["status"] == "skipped" and t["reason"] == "window closed" for t in tasks[1:]), tasks
    assert tasks[-1]["name"] == "vacuum"
    assert run["status"] == "finished" and "the window closed before" in run["description"]
    assert run["summary"]["window_minutes"] == 0.02
    assert re.search(r"vacuum +skipped +0\.00 s +0 rows  window closed", result.stdout)


def test_each_run_records_sizes_before_and_after(env, database):
    seed_old_data(database)
    with database.transaction() as cur:  # enough old events for the table to shrink measurably... in rows
        cur.execute("INSERT INTO events (topic, status, updated_at, description) SELECT 'test.bulk', 'finished', "
                    "now() - interval '400 days', repeat('x', 500) FROM generate_series(1, 2000)")
    result = run_cli(env)
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = runs(database)
    summary = run["summary"]
    assert summary["db_bytes_before"] > 1_000_000 and summary["db_bytes_after"] > 1_000_000
    tasks = {t["name"]: t for t in summary["tasks"]}
    logs = tasks["remove_old_logs"]
    assert logs["tables"] == ["logs"]
    # The 30-day-old partition was dropped: its files are gone.
    assert logs["bytes_after"] < logs["bytes_before"]
    for name in ("remove_old_events", "remove_old_webactions", "remove_stale_instances", "cleanup_packages"):
        assert tasks[name]["bytes_before"] > 0 and tasks[name]["bytes_after"] > 0, tasks[name]
    assert tasks["vacuum"]["tables"] == [] and tasks["vacuum"]["bytes_before"] is None
    # The API shows the same summary.
    with_api = make_app_client(env)
    overview = with_api.simulate_get("/api/maintenance").json
    assert overview["last_runs"][0]["summary"]["db_bytes_before"] == summary["db_bytes_before"]


def make_app_client(env):
    import falcon.testing

    return falcon.testing.TestClient(make_app(env["AYON_POSTGRES_URL"]), headers=AUTH)


def test_a_one_shot_run_logs_reach_the_logs_api(env, database):
    result = run_cli(env, "--task", "vacuum")
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = runs(database)
    api = make_app_client(env)
    found = api.simulate_get("/api/logs", params={"program": "maintenance", "limit": "100"}).json["logs"]
    messages = [r["message"] for r in found]
    assert any(m.startswith("vacuum ") and "finished" in m for m in messages), messages
    assert "maintenance finished: 1 tasks finished in" in " ".join(messages)
    assert any(run["id"] in m for m in messages)
    # The dry run too.
    dry = run_cli(env, "--dry-run", "--task", "vacuum")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    found = api.simulate_get("/api/logs", params={"program": "maintenance", "limit": "100"}).json["logs"]
    assert any("dry run: 0 rows" in r["message"] for r in found)


def test_a_one_shot_run_beside_a_log_collector_leaves_its_records_to_it(env, database):
    """With a collector holding the spool, the one-shot does not ingest: no record is stored twice."""
    import fcntl
    import os

    folder = os.path.join(env["AYON_DATA_DIR"], "spool")
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, ".collector.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = run_cli(env, "--task", "vacuum")
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "logs: a log collector runs beside this process" in result.stdout
    assert database.fetchone("SELECT count(*) FROM logs WHERE program = 'maintenance'") == (0,)
    # The next one-shot, alone, stores both runs' records, each once.
    again = run_cli(env, "--task", "vacuum")
    assert again.returncode == 0
    rows = database.fetchall("SELECT message FROM logs WHERE program = 'maintenance' AND message LIKE 'maintenance finished%'")
    assert len(rows) == 2, rows


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match[1]) if match else None


def test_a_failing_run_changes_the_failure_metrics_and_the_webhook_gets_one_post(env, database, tmp_path, receiver):
    hook = receiver()  # answers 204 (retries are tested in tests/test_notify.py)
    set_config(database, {"maintenance": {"notify": {"url": hook.url(), "allow_private_urls": True,  # on loopback
                                                 "secret": "s3cret-for-the-hook"}}})
    api = make_app_client(env)
    before = api.simulate_get("/metrics").text
    assert metric(before, "ayon_maintenance_last_run_status", '{status="failed"}') == 0
    assert metric(before, "ayon_maintenance_last_run_timestamp_seconds", '{outcome="failed"}') is None

    extra = write_task(tmp_path / "tasks", "broken", "def run(ctx):\n    raise RuntimeError('disk on fire')\n")
    result = run_cli(env, extra=extra)
    assert result.returncode == 1, result.stdout + result.stderr
    [run] = runs(database)
    assert run["status"] == "failed"

    after = api.simulate_get("/metrics").text
    assert metric(after, "ayon_maintenance_last_run_status", '{status="failed"}') == 1
    assert metric(after, "ayon_maintenance_last_run_status", '{status="finished"}') == 0
    failed_at = metric(after, "ayon_maintenance_last_run_timestamp_seconds", '{outcome="failed"}')
    assert failed_at is not None and abs(failed_at - time.time()) < 120
    assert metric(after, "ayon_maintenance_in_progress") == 0

    delivered = hook.requests
    assert len(delivered) == 1
    body = json.loads(delivered[-1]["body"])
    assert body["event_id"] == run["id"] and body["status"] == "failed" and body["topic"] == "server.maintenance"
    assert body["summary"] == run["summary"]
    assert {t["name"] for t in body["summary"]["tasks"]} >= {"broken", "vacuum"}
    assert delivered[-1]["headers"]["X-Ayon-Webhook-Secret"] == "s3cret-for-the-hook"
    assert "s3cret-for-the-hook" not in result.stdout + result.stderr

    # A finished run is not sent unless on_finish is set.
    ok = run_cli(env, "--task", "vacuum")
    assert ok.returncode == 0
    assert len(hook.requests) == 1
