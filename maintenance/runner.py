"""One maintenance run: the fleet-wide lock, the tasks in sequence, the `server.maintenance` event.

Each task runs in a worker thread under its time limit; past it, the task's
statement is cancelled and the task recorded failed, and the run goes on. The
optional window (`maintenance.window_minutes`) keeps tasks from starting late.
The run records the size of each task's tables and of the database before and
after, and tells the webhook (maintenance/notify.py) when it failed. The dry
run is maintenance/preview.py.
"""

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psycopg2

from maintenance import notify, registry, space
from server.core import config, events, times
from server.core.db import BROKEN, MAINTENANCE_LOCK, Database, Settings, connect, held_lock
from server.core.errors import first_line

LOCK = MAINTENANCE_LOCK
SHUTDOWN = "interrupted by shutdown"
# One core at most for maintenance: parallel query and index-vacuum workers would take the CPU the API
# needs (the point of running tasks one after another).
ONE_CORE = {"max_parallel_workers_per_gather": "0", "max_parallel_maintenance_workers": "0"}
# PostgreSQL ends a task's statement itself this long after the task's time limit, where the runner cancels
# it at the limit: so a live runner records the limit, and a dead one (SIGKILL, a lost host) cannot leave
# the statement running.
SERVER_GRACE = 1.0

# After a stop request a task gets this long to reach a safe point before its query is cancelled.
CANCEL_AFTER = 3.0
# ...and this long in all before the run is closed without it (the process must exit within 10 s).
ABANDON_AFTER = 7.0
# A task past its time limit has its statement cancelled, again every RECANCEL_EVERY seconds, and after
# GIVE_UP_AFTER the run goes on without it (on fresh connections).
RECANCEL_EVERY = 2.0
GIVE_UP_AFTER = 30.0
WINDOW_CLOSED = "window closed"

log = logging.getLogger("ayon.maintenance")


def time_limit_error(seconds: float) -> str:
    return f"time limit of {seconds / 60:g} min reached; its statement was cancelled"


@dataclass
class Outcome:
    """How a call to `Runner.run` ended: finished/failed/aborted, or busy/skipped without running."""

    status: str
    message: str
    event_id: str | None = None
    summary: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.status in ("failed", "aborted") else 0


def recover_orphans(cur) -> list[str]:
    """Mark runs left in_progress by a dead process failed. Only call while holding the lock."""
    found = []
    for topic in (events.MAINTENANCE, events.MAINTENANCE_REQUEST):
        cur.execute(
            "UPDATE events SET status = 'failed', description = 'interrupted: ' || description "
            "WHERE topic = %s AND status = 'in_progress' RETURNING id",
            (topic,),
        )
        found += [str(row[0]) for row in cur.fetchall()]
    return found


def bounded(deadline: float) -> Settings:
    """The settings of a task's every transaction: one core, and PostgreSQL's own end of it at `deadline`.

    statement_timeout fires in the backend whether or not the client still lives (a backend
    notices a dead client only when it writes to it); lock_timeout ends a wait for a lock sooner
    when a task sets its own, and a transaction left idle ends the session.
    """
    def settings() -> dict[str, str]:
        left = f"{max(1, round((deadline + SERVER_GRACE - time.monotonic()) * 1000))}ms"
        return {**ONE_CORE, "statement_timeout": left, "lock_timeout": left,
                "idle_in_transaction_session_timeout": left}

    return settings


def task_line(name: str, status: str, duration: float, rows: int | None, note: str = "") -> str:
    line = f"{name:<24} {status:<8} {duration:8.2f} s {rows or 0:>10} rows"
    return f"{line}  {note}" if note else line


class Runner:
    """Runs the procedure once per `run()` call; `out` receives one line per task, `fail` a failed task's."""

    def __init__(self, url: str, out: Callable[[str], None], stop: threading.Event, tty: bool = False,
                 read_config: Callable = config.get, instance: str = "", fail: Callable[[str], None] | None = None):
        self.url = url
        self.out = out
        self.fail = fail or out  # a log's error level, so a level filter finds failed runs
        self.stop = stop
        self.tty = tty
        self.read_config = read_config  # the daemon's keeps its last good values
        self.instance = instance
        self.app_name = f"ayon-maintenance-task-{os.getpid()}"

    # --- the lock ---

    def _holder_event(self, conn) -> str | None:
        # The holder creates its event just after taking the lock: give it a moment to appear.
        deadline = time.monotonic() + 2.0
        while True:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT id FROM events WHERE topic = %s AND status = 'in_progress' "
                    "ORDER BY created_at DESC LIMIT 1",
                    (events.MAINTENANCE,),
                )
                row = cur.fetchone()
            if row or time.monotonic() > deadline:
                return str(row[0]) if row else None
            time.sleep(0.1)

    # The fleet-wide lock is a transaction-level advisory lock held by an open transaction on a connection
    # of its own (db.held_lock): it ends with the run or its process, whatever a pooler does with
    # sessions. The run's own statements go on a second, autocommit connection, so each event change
    # is visible (and NOTIFYed) at once.

    def _connect(self):
        conn = connect(self.url, "ayon-maintenance")
        conn.autocommit = True
        return conn

    def recover(self) -> list[str]:
        """When no run holds the lock, mark orphaned in_progress runs failed; returns their ids."""
        with held_lock(self.url, LOCK, "ayon-maintenance-lock") as taken:
            if not taken:
                return []
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    return recover_orphans(cur)
            finally:
                conn.close()

    def run(
        self,
        names: list[str] | None = None,
        trigger: str = "manual",
        slot: str | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        """Take the fleet-wide lock and run the tasks; without the lock, say who holds it."""
        if self.stop.is_set():
            return Outcome("skipped", "stopped before the run started")
        with held_lock(self.url, LOCK, "ayon-maintenance-lock") as taken:
            return self._run_holding(taken, names, trigger, slot, request_id)

    def _run_holding(self, taken: bool, names, trigger, slot, request_id) -> Outcome:
        conn = self._connect()
        try:
            if not taken:
                holder = self._holder_event(conn) or "starting"
                return Outcome("busy", f"another maintenance run is in progress (event {holder})", holder)
            with conn.cursor() as cur:
                for orphan in recover_orphans(cur):
                    self.out(f"marked the interrupted run {orphan} failed")
                if slot is not None:
                    cur.execute(
                        "SELECT id FROM events WHERE topic = %s AND payload->>'slot' = %s LIMIT 1", (events.MAINTENANCE, slot)
                    )
                    done = cur.fetchone()
                    if done:
                        return Outcome("skipped", f"the run due at {slot} already happened (event {done[0]})")
                if request_id is not None:
                    if events.update(cur, request_id, status="in_progress", only_if=("pending",)) is None:
                        return Outcome("skipped", f"request {request_id} was already taken")
                doc = self.read_config(cur)
            return self._run_locked(conn, doc, names, trigger, slot, request_id)
        finally:
            conn.close()

    # --- the run itself ---

    def _run_locked(self, lock_conn, doc, names, trigger, slot, request_id) -> Outcome:
        # `lock_conn` is the run's autocommit connection (the lock itself is held on another).
        with lock_conn.cursor() as cur:
            return self._run_steps(cur, lock_conn, doc, names, trigger, slot, request_id)

    def _run_steps(self, cur, lock_conn, doc, names, trigger, slot, request_id) -> Outcome:
        steps = registry.plan(doc, names)
        enabled = [task for task, on, _ in steps if on]
        window = doc.maintenance.window_minutes
        payload = {"trigger": trigger, "tasks": [t.name for t, _, _ in steps]}
        if slot:
            payload["slot"] = slot
        if request_id:
            payload["request_id"] = request_id
        event_id = events.dispatch(
            cur, events.MAINTENANCE, status="in_progress",
            description=f"starting: {len(enabled)} tasks", payload=payload,
        )
        if request_id:
            events.update(cur, request_id, description=f"running as event {event_id}",
                          summary={"run_event_id": event_id})
        started = time.monotonic()
        closes = started + window * 60 if window else None
        db_before = _size(cur, space.database_bytes)
        results = []
        pools = [Database(self.url, size=2, application_name=self.app_name)]
        try:
            number = 0
            for task, on, options in steps:
                reason = None
                if not on:
                    reason = f"switched off by {task.switch()} = false"
                elif self.stop.is_set():
                    reason = SHUTDOWN
                elif closes is not None and time.monotonic() >= closes:
                    reason = WINDOW_CLOSED
                if reason:
                    results.append(self._result(task.name, "skipped", 0.0, 0, reason=reason))
                    self.out(task_line(task.name, "skipped", 0.0, 0, reason))
                    continue
                number += 1
                description = f"task {number}/{len(enabled)}: {task.name} — {task.describe(options)}"
                # The tasks ended so far: the dashboard shows a running run's rows from them.
                events.update(cur, event_id, description=description, summary={"tasks": results})
                limit = registry.time_limit(doc, task.name)
                before = _size(cur, space.table_bytes, task.tables) if task.tables else None
                db = pools[-1].with_settings(bounded(time.monotonic() + limit))
                ctx = registry.Context(db, options, self._progress(number, len(enabled), task.name),
                                       threading.Event(), event_id)
                result = self._execute(task, ctx, lock_conn, limit)
                if result.pop("abandoned"):
                    # Its thread may still hold a connection: the next tasks get their own.
                    pools.append(Database(self.url, size=2, application_name=self.app_name))
                after = _size(cur, space.table_bytes, task.tables) if task.tables else None
                result.update(tables=list(task.tables), bytes_before=before, bytes_after=after)
                results.append(result)
                (self.fail if result["status"] == "failed" else self.out)(
                    task_line(task.name, result["status"], result["duration_s"], result["rows"], result["error"] or ""))
        finally:
            for pool in pools:
                with contextlib.suppress(Exception):
                    pool.close()
        duration = round(time.monotonic() - started, 3)
        summary = {"tasks": results, "duration_s": duration, "db_bytes_before": db_before,
                   "db_bytes_after": _size(cur, space.database_bytes), "window_minutes": window}
        failed = [r["name"] for r in results if r["status"] == "failed"]
        if self.stop.is_set():
            status, description = "aborted", SHUTDOWN
        elif failed:
            status, description = "failed", f"{len(failed)} of {len(results)} tasks failed: {', '.join(failed)}"
        else:
            status, description = "finished", f"{number} tasks finished in {duration:.1f} s"
            closed = [r["name"] for r in results if r["reason"] == WINDOW_CLOSED]
            if closed:
                description += f"; the window closed before {', '.join(closed)}"
        events.update(cur, event_id, status=status, description=description, summary=summary)
        if request_id:
            events.update(cur, request_id, status="finished" if status == "finished" else "failed",
                          description=f"run {event_id} {status}", summary={"run_event_id": event_id, "status": status})
        self._notify(doc, {"topic": events.MAINTENANCE, "event_id": event_id, "status": status,
                           "description": description, "instance": self.instance, **payload,
                           "ended_at": times.rfc3339(times.utc_now()), "summary": summary})
        return Outcome(status, f"maintenance {status}: {description} (event {event_id})", event_id, summary)

    def _notify(self, doc, body: dict) -> None:
        """Tell the webhook, when one is configured and wants this outcome; never fails the run."""
        section = doc.maintenance.notify
        try:
            if notify.wanted(section, body["status"]):
                self.out(f"telling the webhook the run {body['status']}")
                notify.send(section, body, self.stop, log)
        except Exception as exc:  # a webhook must not turn a finished run into a crash
            log.error("the maintenance webhook failed: %s", first_line(exc))

    @staticmethod
    def _result(name, status, duration, rows, error=None, reason=None, limit=None, timed_out=False) -> dict:
        return {"name": name, "status": status, "duration_s": round(duration, 3), "rows": rows,
                "error": error, "reason": reason, "time_limit_s": limit, "timed_out": timed_out,
                "tables": [], "bytes_before": None, "bytes_after": None}

    def _progress(self, number: int, total: int, name: str) -> Callable[[str], None]:
        if not self.tty:
            return lambda message: None

        def show(message: str) -> None:
            sys.stdout.write(f"\r\033[K[{number}/{total}] {name}: {message}")
            sys.stdout.flush()

        return show

    def _execute(self, task: registry.Task, ctx: registry.Context, lock_conn, limit: float) -> dict:
        """Run one task in a worker thread under its time limit, so its query can be cancelled; never raises.

        `ctx.stop` is the task's own flag: set when the run is asked to stop or the
        task passes its limit, so the task also stops at its next safe point.
        """
        outcome: dict = {}

        def target() -> None:
            try:
                outcome["rows"] = task.run(ctx)
            except BaseException as exc:  # isolated: recorded in the summary, the next task still runs
                outcome["error"] = exc

        started = time.monotonic()
        worker = threading.Thread(target=target, name=f"task-{task.name}", daemon=True)
        worker.start()
        stop_seen = over_since = cancelled_at = None
        abandoned = False
        while worker.is_alive():
            worker.join(0.1)
            if not worker.is_alive():
                break
            now = time.monotonic()
            if self.stop.is_set():
                ctx.stop.set()
                stop_seen = stop_seen or now
                if cancelled_at is None and now - stop_seen > CANCEL_AFTER:
                    cancelled_at = now
                    self._cancel_queries(lock_conn)
                if now - stop_seen > ABANDON_AFTER:
                    break  # the daemon thread dies with the process
            elif now - started >= limit:
                ctx.stop.set()
                over_since = over_since or now
                if cancelled_at is None or now - cancelled_at >= RECANCEL_EVERY:
                    cancelled_at = now
                    self._cancel_queries(lock_conn)
                if now - over_since > GIVE_UP_AFTER:
                    abandoned = True
                    log.error("task %s did not stop %d s after its time limit; the run goes on without it",
                              task.name, GIVE_UP_AFTER)
                    break
        if self.tty:
            sys.stdout.write("\r\033[K")
        duration = time.monotonic() - started
        error = outcome.get("error")
        rows = outcome.get("rows")
        rows = rows if isinstance(rows, int) else None
        if self.stop.is_set() and (error is not None or worker.is_alive()):
            result = self._result(task.name, "failed", duration, rows, error=SHUTDOWN, limit=limit)
        elif over_since is not None:
            result = self._result(task.name, "failed", duration, rows, error=time_limit_error(limit), limit=limit,
                                  timed_out=True)
        elif error is not None:
            result = self._result(task.name, "failed", duration, rows, error=first_line(error), limit=limit)
        else:
            result = self._result(task.name, "finished", duration, rows or 0, limit=limit)
        result["abandoned"] = abandoned or worker.is_alive()
        return result

    def _cancel_queries(self, lock_conn) -> bool:
        try:
            with lock_conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (self.app_name,),
                )
        except (psycopg2.Error, *BROKEN):
            pass
        return True


def _size(cur, measure, *args) -> int | None:
    """A size for the summary; a size that cannot be read leaves a gap, never fails the run."""
    try:
        return measure(cur, *args)
    except (psycopg2.Error, *BROKEN) as exc:
        log.warning("could not measure a size: %s", first_line(exc))
        return None
