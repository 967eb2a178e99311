"""A task's time limit held by PostgreSQL itself: a killed run leaves no statement behind; no startup `options`."""

import json
import time

import psycopg2
import pytest

from tests.apiclient import wait_for
from tests.test_maintenance import run_cli, set_config, start_cli, write_task

pytestmark = pytest.mark.serial  # a backend must end within its limit (make test runs it alone)

LIMIT_S = 3.0  # maintenance.max_minutes 0.05
GRACE_S = 1.0  # maintenance/runner.py SERVER_GRACE: PostgreSQL ends the statement this long after the limit
MARGIN_S = 1.5  # for the backend to end once its statement is cancelled, and for the polling


def backends(database, pid: int, what: str = "") -> list[tuple]:
    """The run's task connections (state, wait event type, query), optionally only those running `what`."""
    return database.fetchall(
        "SELECT state, wait_event_type, query FROM pg_stat_activity WHERE application_name = %s AND query LIKE %s",
        (f"ayon-maintenance-task-{pid}", f"%{what}%"))


def kill_during(env, database, pid_query: str, *args, extra="", waiting_for_lock=False) -> float:
    """Start a one-shot run, SIGKILL it once a task's statement runs `pid_query`; the time it was first seen."""
    proc = start_cli(env, *args, extra=extra)
    try:
        def running():
            found = [b for b in backends(database, proc.pid, pid_query) if b[0] == "active"]
            return [b for b in found if b[1] == "Lock"] if waiting_for_lock else found
        wait_for(running, 30, f"a task statement running {pid_query}")
        seen = time.monotonic()
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait(10)
    # Killed: nothing is left on the client's side to cancel the statement; it is the server's own to end.
    assert backends(database, proc.pid, pid_query), "the statement ended with its client: nothing to prove"
    wait_for(lambda: not backends(database, proc.pid), LIMIT_S + GRACE_S + MARGIN_S + 5, "the backend to end")
    return time.monotonic() - seen


def test_a_killed_run_does_not_leave_its_long_statement_running(env, database, tmp_path):
    """statement_timeout: a statement that runs (not waits) ends at the task's limit though its client is gone."""
    set_config(database, {"maintenance": {"max_minutes": LIMIT_S / 60}})
    extra = write_task(tmp_path / "tasks", "long_statement", """
        def run(ctx):
            with ctx.db.transaction() as cur:
                cur.execute("SELECT pg_sleep(60)")
            return 1
    """, description="one long statement")
    took = kill_during(env, database, "pg_sleep(60)", "--task", "long_statement", extra=extra)
    assert took < LIMIT_S + GRACE_S + MARGIN_S


def test_a_killed_run_does_not_leave_a_statement_waiting_for_a_lock(env, database, database_url):
    """lock_timeout and statement_timeout: a real task's DELETE queued behind a lock ends at its limit."""
    set_config(database, {"maintenance": {"tasks": {"remove_stale_instances": {"max_minutes": LIMIT_S / 60}}}})
    holder = psycopg2.connect(database_url, application_name="test-lock-holder")
    try:
        holder.cursor().execute("LOCK TABLE instances IN SHARE MODE")  # readers pass, the DELETE waits
        took = kill_during(env, database, "DELETE FROM instances", "--task", "remove_stale_instances",
                           waiting_for_lock=True)
    finally:
        holder.rollback()
        holder.close()
    assert took < LIMIT_S + GRACE_S + MARGIN_S


def test_tasks_connect_without_startup_options_and_set_their_values_in_each_transaction(env, database, tmp_path):
    """A pooler such as PgBouncer refuses the libpq `options` startup parameter: values are SET LOCAL instead."""
    out = tmp_path / "seen.json"
    extra = write_task(tmp_path / "tasks", "report_settings", f"""
        import json

        NAMES = ("max_parallel_workers_per_gather", "max_parallel_maintenance_workers", "statement_timeout",
                 "lock_timeout", "idle_in_transaction_session_timeout")

        def run(ctx):
            seen = {{}}
            with ctx.db.transaction() as cur:
                seen["dsn"] = cur.connection.get_dsn_parameters()
                for name in NAMES:
                    cur.execute("SELECT current_setting(%s)", (name,))
                    seen[name] = cur.fetchone()[0]
            with ctx.db.connection() as conn:  # the same session after the transaction: nothing kept
                with conn.cursor() as cur:
                    cur.execute("SELECT current_setting('statement_timeout'), "
                                "current_setting('max_parallel_workers_per_gather')")
                    seen["after"] = list(cur.fetchone())
                conn.rollback()
            with open({str(out)!r}, "w") as stream:
                json.dump(seen, stream)
            return 0
    """, description="report its session's settings")
    set_config(database, {"maintenance": {"max_minutes": 10}})
    result = run_cli(env, "--task", "report_settings", "--task", "vacuum", extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(out.read_text())
    assert seen["dsn"].get("options", "") == "", seen["dsn"]
    assert seen["max_parallel_workers_per_gather"] == "0" and seen["max_parallel_maintenance_workers"] == "0"
    for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
        # The time left of the task's 10 minutes, plus the grace.
        assert 540_000 <= milliseconds(seen[name]) <= 601_000, seen
    # SET LOCAL ended with the transaction: the session is back at the server's values.
    defaults = database.fetchone("SELECT current_setting('statement_timeout'), "
                                 "current_setting('max_parallel_workers_per_gather')")
    assert seen["after"] == list(defaults)


def milliseconds(shown: str) -> float:
    """A PostgreSQL duration as SHOW writes it (900ms, 42s, 10min) in milliseconds."""
    for unit, factor in (("ms", 1), ("min", 60_000), ("s", 1000), ("h", 3_600_000)):
        if shown.endswith(unit):
            return float(shown[: -len(unit)]) * factor
    pytest.fail(f"not a duration: {shown!r}")
