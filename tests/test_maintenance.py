"""`python -m maintenance` run for real: order, the event, isolation, the lock, signals."""

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from server.core import config, events
from tests.apiclient import wait_for
from tests.conftest import ROOT

# Runs `python -m maintenance` with an extra tasks folder appended to the package
# path and, optionally, the maintenance scheduler's clock shifted by some seconds:
# test-only seams that touch neither the project's tree nor its settings.
LAUNCHER = textwrap.dedent("""
    import sys
    import maintenance.tasks
    extra, offset = sys.argv.pop(1), float(sys.argv.pop(1))
    if extra:
        maintenance.tasks.__path__.append(extra)  # the core finds the added tasks' switches and options there
    if offset:
        import datetime, types, maintenance.scheduler
        class Shifted(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.datetime.now(tz) + datetime.timedelta(seconds=offset)
        shim = types.ModuleType("datetime")
        shim.__dict__.update(datetime.__dict__)
        shim.datetime = Shifted
        maintenance.scheduler.datetime = shim
    from maintenance.cli import main
    main()
""")

DEFAULT_TASKS = ["remove_old_logs", "remove_old_events", "remove_old_webactions", "remove_stale_instances",
                 "cleanup_packages", "vacuum"]


def command(*args, extra="", offset=0.0):
    return [sys.executable, "-c", LAUNCHER, str(extra), str(offset), *args]


def run_cli(env, *args, extra="", timeout=60):
    return subprocess.run(command(*args, extra=extra), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def start_cli(env, *args, extra=""):
    return subprocess.Popen(command(*args, extra=extra), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def write_task(folder, name, body, order=100, description="a test task"):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(
        f"DESCRIPTION = {description!r}\nORDER = {order}\n\n" + textwrap.dedent(body)
    )
    return folder


def runs(database):
    return events.query(database, topic="server.maintenance", limit=100)


def set_config(database, patch):
    with database.transaction() as cur:
        config.update(cur, patch, who="test")


@pytest.fixture
def slow_task(tmp_path):
    """A task that sits in one long query, the worst case for stopping."""
    return write_task(tmp_path / "tasks", "slow_query", """
        def run(ctx):
            with ctx.db.transaction() as cur:
                cur.execute("SELECT pg_sleep(60)")
            return 1
    """, order=15, description="sleep in the database")


def test_list_shows_order_switches_and_vacuum_last(env, database, tmp_path):
    set_config(database, {"maintenance": {"tasks": {"remove_old_webactions": {"enabled": False}}}})
    extra = write_task(tmp_path / "tasks", "zz_added", "def run(ctx):\n    return 0\n", order=999)
    result = run_cli(env, "--list", extra=extra)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if re.match(r"\s*\d+\. ", line)]
    names = [line.split()[1] for line in lines]
    assert names == DEFAULT_TASKS[:-1] + ["zz_added", "vacuum"]
    assert re.search(r" 1\. remove_old_logs +on +remove log records older than 7 days", lines[0])
    assert re.search(r"remove_old_webactions +off ", lines[2])
    assert re.search(r"vacuum +on +vacuum and analyze", lines[-1])


def test_unknown_task_is_a_usage_error(env):
    result = run_cli(env, "--task", "nope")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("Error: unknown task 'nope'; known tasks: remove_old_logs, ")


def seed_old_data(database):
    with database.transaction() as cur:
        cur.execute("SELECT ayon_ensure_log_partition(current_date - 30)")
        cur.execute("SELECT ayon_ensure_log_partition(current_date)")
        for days, count in ((30, 50), (20, 5), (0, 7)):  # 20 days ago: no partition, rows in logs_default
            cur.execute(
                "INSERT INTO logs (ts, level, instance, program, message) "
                "SELECT now() - make_interval(days => %s), 'INFO', 'i', 'p', 'm' FROM generate_series(1, %s)",
                (days, count),
            )
        cur.execute("ANALYZE logs")
        old = "now() - interval '200 days'"
        cur.execute(
            f"INSERT INTO events (topic, status, created_at, updated_at) SELECT 'test.old', 'finished', {old}, {old} "
            "FROM generate_series(1, 30)"
        )
        cur.execute(f"INSERT INTO events (topic, status, updated_at) VALUES ('test.parent', 'finished', {old}) "
                    "RETURNING id")
        parent = cur.fetchone()[0]
        cur.execute("INSERT INTO events (topic, status, depends_on) VALUES ('test.child', 'finished', %s)", (parent,))
        cur.execute(f"INSERT INTO events (topic, status, updated_at) VALUES ('test.unfinished', 'pending', {old})")
        cur.execute(f"INSERT INTO events (topic, status, updated_at) VALUES ('action.done', 'failed', {old})")
        cur.execute("INSERT INTO events (topic, status) VALUES ('test.recent', 'finished')")
        cur.execute("INSERT INTO instances (instance_id, program, last_seen) VALUES "
                    "('gone', 'server', now() - interval '60 days'), ('here', 'server', now())")


def test_run_reports_each_task_in_its_event(env, database, database_url, tmp_path):
    seed_old_data(database)
    set_config(database, {"maintenance": {"tasks": {"remove_stale_instances": {"enabled": False}}}})
    extra = write_task(tmp_path / "tasks", "zz_added", "def run(ctx):\n    ctx.progress('x')\n    return 3\n",
                       order=999, description="an added task")
    listener = events.Listener(database_url)
    try:
        result = run_cli(env, extra=extra)
        seen = []
        while True:
            batch = [p for _, p in listener.wait(0.5) if p["topic"] == "server.maintenance"]
            if not batch:
                break
            seen += batch
    finally:
        listener.close()
    assert result.returncode == 0, result.stdout + result.stderr
    enabled = [n for n in DEFAULT_TASKS[:-1] + ["zz_added", "vacuum"] if n != "remove_stale_instances"]
    assert [p["status"] for p in seen] == ["in_progress"] * (len(enabled) + 1) + ["finished"]
    described = [p["description"] for p in seen[1:-1]]
    assert described[0] == "task 1/6: remove_old_logs — remove log records older than 7 days"
    assert described[1] == "task 2/6: remove_old_events — remove events older than 90 days"
    assert [re.match(r"task \d/6: (\w+) — ", d)[1] for d in described] == enabled
    run = events.get(database, seen[0]["id"])
    assert run["status"] == "finished"
    by_name = {t["name"]: t for t in run["summary"]["tasks"]}
    assert list(by_name) == DEFAULT_TASKS[:-1] + ["zz_added", "vacuum"]
    assert by_name["remove_stale_instances"]["status"] == "skipped"
    assert by_name["remove_stale_instances"]["reason"] == \
        "switched off by maintenance.tasks.remove_stale_instances.enabled = false"
    assert by_name["remove_old_logs"]["rows"] == 55 and by_name["remove_old_events"]["rows"] == 30
    assert by_name["remove_old_webactions"]["rows"] == 1 and by_name["zz_added"]["rows"] == 3
    assert all(t["status"] == "finished" and t["duration_s"] >= 0 for n, t in by_name.items()
               if n != "remove_stale_instances")
    assert run["summary"]["duration_s"] > 0
    # Each line is a log record of the maintenance program: its prefix, then the task's line.
    assert re.search(r"ayon\.maintenance: remove_stale_instances +skipped +0\.00 s +0 rows  switched off by "
                     r"maintenance\.tasks\.remove_stale_instances\.enabled = false$", result.stdout, re.M)
    assert re.search(r"ayon\.maintenance: remove_old_events +finished +[\d.]+ s +30 rows$", result.stdout, re.M)
    assert re.search(rf"INFO +\[test/maintenance\] ayon\.maintenance: maintenance finished: 6 tasks finished in "
                     rf"[\d.]+ s \(event {run['id']}\)$", result.stdout, re.M)
    # No log collector runs beside it: the run stored its own records before it exited.
    assert re.search(r"logs: stored \d+ log records$", result.stdout.splitlines()[-1])
    # What the tasks did: old days and rows gone, everything still needed kept.
    parts = {r[0] for r in database.fetchall(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass")}
    # The 30-day-old partition is gone; today's stays (with the days around it that storing the
    # run's own log records made sure of).
    thirty_days_ago = time.strftime("logs_%Y%m%d", time.gmtime(time.time() - 30 * 86400))
    assert thirty_days_ago not in parts
    assert {"logs_default", time.strftime("logs_%Y%m%d", time.gmtime())} <= parts
    assert all(p == "logs_default" or p >= time.strftime("logs_%Y%m%d", time.gmtime(time.time() - 86400))
               for p in parts), parts
    assert database.fetchone("SELECT count(*) FROM logs WHERE program = 'p'") == (7,)
    topics = {r[0] for r in database.fetchall("SELECT topic FROM events")}
    assert {"test.parent", "test.child", "test.unfinished", "test.recent"} <= topics
    assert not topics & {"test.old", "action.done"}
    assert database.fetchone("SELECT count(*) FROM instances") == (2,)  # the task was switched off
    vacuumed = database.fetchone("SELECT last_vacuum IS NOT NULL, last_analyze IS NOT NULL "
                                 "FROM pg_stat_user_tables WHERE relname = 'events'")
    assert vacuumed == (True, True)


def test_failing_task_is_isolated(env, database, tmp_path):
    extra = write_task(tmp_path / "tasks", "broken", """
        def run(ctx):
            raise RuntimeError("disk on fire")
    """, order=15)
    result = run_cli(env, extra=extra)
    assert result.returncode == 1, result.stdout + result.stderr
    # At ERROR, so a level=error filter of the logs finds the failed task and the failed run.
    assert re.search(r" ERROR +\[[^]]+\] ayon\.maintenance: broken +failed +[\d.]+ s +0 rows  disk on fire$",
                     result.stdout, re.M)
    assert re.search(r" ERROR +\[[^]]+\] [\w.]+: maintenance failed: 1 of 7 tasks failed", result.stdout, re.M)
    [run] = runs(database)
    assert run["status"] == "failed"
    assert run["description"] == "1 of 7 tasks failed: broken"
    statuses = {t["name"]: (t["status"], t["error"]) for t in run["summary"]["tasks"]}
    assert statuses.pop("broken") == ("failed", "disk on fire")
    assert set(statuses.values()) == {("finished", None)} and "vacuum" in statuses


def test_five_concurrent_runs_make_one(env, database, tmp_path):
    extra = write_task(tmp_path / "tasks", "pause", """
        def run(ctx):
            ctx.stop.wait(2)
            return 0
    """, order=15)
    procs = [start_cli(env, "--task", "pause", extra=extra) for _ in range(5)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, outputs
    [run] = runs(database)
    assert run["status"] == "finished"
    busy = [o for o in outputs if "another maintenance run is in progress" in o]
    assert len(busy) == 4, outputs
    assert all(f"another maintenance run is in progress (event {run['id']})" in o for o in busy)


def wait_for_task(database, name):
    return wait_for(lambda: next((r for r in runs(database) if f": {name} — " in r["description"]), None), 30,
                f"the run to reach {name}")


def test_sigkill_leaves_an_orphan_the_next_run_marks_failed(env, database, slow_task):
    proc = start_cli(env, extra=slow_task)
    try:
        run = wait_for_task(database, "slow_query")
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    assert events.get(database, run["id"])["status"] == "in_progress"
    # The killed session's pg_sleep ends with it, so its lock frees; the next run recovers the event.
    result = run_cli(env, "--task", "vacuum")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"marked the interrupted run {run['id']} failed" in result.stdout
    orphan = events.get(database, run["id"])
    assert orphan["status"] == "failed" and orphan["description"].startswith("interrupted: task 2/7: slow_query")


def test_sigterm_mid_query_closes_the_event_within_ten_seconds(env, database, slow_task):
    proc = start_cli(env, extra=slow_task)
    try:
        run = wait_for_task(database, "slow_query")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output = proc.communicate(timeout=15)[0]
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert took < 10, output
    assert proc.returncode == 1, output
    closed = events.get(database, run["id"])
    assert closed["status"] == "aborted" and closed["description"] == "interrupted by shutdown"
    tasks = {t["name"]: t for t in closed["summary"]["tasks"]}
    assert tasks["remove_old_logs"]["status"] == "finished"
    assert (tasks["slow_query"]["status"], tasks["slow_query"]["error"]) == ("failed", "interrupted by shutdown")
    assert (tasks["vacuum"]["status"], tasks["vacuum"]["reason"]) == ("skipped", "interrupted by shutdown")
    assert database.fetchone("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND state = 'active' AND query LIKE 'SELECT pg_sleep(60)%'") == (0,)
    assert json.dumps(closed["summary"])  # the summary is plain JSON for the metrics reader
