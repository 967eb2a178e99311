"""Each long-running program records that it is alive, every few seconds.

Programs beat from a thread of their own (`Heartbeat`). The web server's
beat comes from one of its workers (server/gunicorn_conf.py): gunicorn's
master forks them, and must hold neither a thread nor a database
connection that each fork would copy.
"""

import atexit
import json
import logging
import os
import socket
import threading

import psycopg2.errors

from server.core import VERSION, migrations
from server.core.db import BROKEN, Database
from server.core.errors import first_line
from server.core.retry import Outage

log = logging.getLogger("ayon.heartbeat")

INTERVAL = 5.0
FAREWELL_SECONDS = 1.0  # the longest a clean stop waits to mark its row


_BEAT = (
    "INSERT INTO instances (instance_id, program, pid, hostname, version, info{extra}) "
    "VALUES (%s, %s, %s, %s, %s, %s{extra_values}) "
    "ON CONFLICT (instance_id, program) DO UPDATE SET pid = EXCLUDED.pid, "
    "hostname = EXCLUDED.hostname, version = EXCLUDED.version, last_seen = now(), "
    "info = EXCLUDED.info, started_at = CASE WHEN instances.pid = EXCLUDED.pid "
    "THEN instances.started_at ELSE now() END{extra_sets}"
)
BEAT = _BEAT.format(extra=", schema_known", extra_values=", %s",
                    extra_sets=", schema_known = EXCLUDED.schema_known, stopped_at = NULL")
# A database older than migration 0006 (before setup has run) has neither column: the beat goes without.
BEAT_BEFORE_0006 = _BEAT.format(extra="", extra_values="", extra_sets="")


def beat(db: Database, instance_id: str, program: str, info: dict | None = None, pid: int | None = None) -> None:
    values = (instance_id, program, pid or os.getpid(), socket.gethostname(), VERSION, json.dumps(info or {}))
    try:
        db.execute(BEAT, (*values, migrations.code_schema()))
    except psycopg2.errors.UndefinedColumn:
        db.execute(BEAT_BEFORE_0006, values)


def farewell(db: Database, instance_id: str, program: str, pid: int | None = None) -> None:
    """Mark the row of a program that stops cleanly, so it no longer counts as running (the contract step)."""
    db.execute("UPDATE instances SET stopped_at = now() WHERE instance_id = %s AND program = %s AND pid = %s",
               (instance_id, program, pid or os.getpid()))


def older_instances(cur, schema: int, stale_after: int) -> list[str]:
    """The instances still beating whose code does not know migration `schema`: an older release, each described.

    A row counts while it was seen within `stale_after` seconds (instances.stale_after) and was
    not marked stopped; a row of a release before 0006 knows no schema, so it counts as older.
    """
    cur.execute(
        "SELECT instance_id, string_agg(DISTINCT coalesce(version, '?'), ', '), min(coalesce(schema_known, 0)), "
        "extract(epoch FROM clock_timestamp() - max(last_seen)) FROM instances "
        "WHERE stopped_at IS NULL AND last_seen >= clock_timestamp() - make_interval(secs => %s) "
        "AND coalesce(schema_known, 0) < %s GROUP BY instance_id ORDER BY instance_id",
        (stale_after, schema),
    )
    return [f"{instance} (release {version}, schema {known or 'before 6'}, seen {seen:.0f} s ago)"
            for instance, version, known, seen in cur.fetchall()]


class Heartbeat(threading.Thread):
    """A daemon thread that beats until `stop` is set; a database outage only delays it.

    `pid` is the process the row names (this one by default); `info` a dict
    or a callable returning one, called at each beat; `when`, if given, is
    asked before each beat whether this thread is the one to beat (one of
    several processes beating for the same program).
    """

    def __init__(self, db: Database, instance_id: str, program: str, stop: threading.Event, info=None,
                 pid: int | None = None, when=None):
        super().__init__(name=f"heartbeat-{program}", daemon=True)
        self.db, self.instance_id, self.program, self.stop, self.info = db, instance_id, program, stop, info
        self.pid, self.when = pid, when
        self.outage = Outage(log, "heartbeat")
        self.waiting_for_schema = False
        self.lock = threading.Lock()  # a beat never lands after the farewell
        self.beating = False  # the last pass beat (and so the farewell is this thread's to say)
        self.gone = False

    def start(self) -> None:
        super().start()
        # A process that ends without joining this thread (a gunicorn worker: sys.exit) says it here.
        atexit.register(self.say_farewell)

    def beat_once(self) -> None:
        """One beat; failures are logged once per outage and never raised."""
        try:
            with self.lock:
                if self.gone:
                    return
                beat(self.db, self.instance_id, self.program,
                     self.info() if callable(self.info) else self.info, self.pid)
                self.beating = True
            self.outage.ok()
            self.waiting_for_schema = False
        except psycopg2.errors.UndefinedTable:
            # A program that does not wait for setup (the web server) may start before the schema exists.
            if not self.waiting_for_schema:
                log.info("heartbeat waits for the schema (no instances table yet)")
            self.waiting_for_schema = True
        except BROKEN as exc:
            self.outage.failed(exc)
        except Exception:
            log.exception("heartbeat failed")

    def say_farewell(self) -> None:
        """Once, at a clean stop: mark the row stopped if this thread was the one beating for it."""
        # Bounded: a stop never waits for a database that does not answer (a beat stuck in it holds the
        # lock); the row then goes stale instead.
        if not self.lock.acquire(timeout=FAREWELL_SECONDS):
            return
        try:
            if self.gone:
                return
            self.gone = True
            if not self.beating:
                return
            done = threading.Thread(target=self._farewell, name=f"farewell-{self.program}", daemon=True)
            done.start()
            done.join(FAREWELL_SECONDS)
        finally:
            self.lock.release()

    def _farewell(self) -> None:
        try:
            farewell(self.db, self.instance_id, self.program, self.pid)
        except Exception as exc:  # the row goes stale instead (instances.stale_after)
            log.info("could not mark the heartbeat stopped: %s", first_line(exc))

    def run(self) -> None:
        while not self.stop.is_set():
            if self.when is None or self.when():
                self.beat_once()
            else:
                self.beating = False
                self.db.close()  # another beats: no connection held for nothing
            self.stop.wait(INTERVAL)
