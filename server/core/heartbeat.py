"""Each long-running program records that it is alive, every few seconds.

Programs beat from a thread of their own (`Heartbeat`). The web server's
beat comes from one of its workers (server/gunicorn_conf.py): gunicorn's
master forks them, and must hold neither a thread nor a database
connection that each fork would copy.
"""

import json
import logging
import os
import socket
import threading

import psycopg2.errors

from server.core import VERSION
from server.core.db import BROKEN, Database
from server.core.retry import Outage

log = logging.getLogger("ayon.heartbeat")

INTERVAL = 5.0


def beat(db: Database, instance_id: str, program: str, info: dict | None = None, pid: int | None = None) -> None:
    db.execute(
        "INSERT INTO instances (instance_id, program, pid, hostname, version, info) "
        "VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (instance_id, program) DO UPDATE SET pid = EXCLUDED.pid, "
        "hostname = EXCLUDED.hostname, version = EXCLUDED.version, last_seen = now(), "
        "info = EXCLUDED.info, started_at = CASE WHEN instances.pid = EXCLUDED.pid "
        "THEN instances.started_at ELSE now() END",
        (instance_id, program, pid or os.getpid(), socket.gethostname(), VERSION, json.dumps(info or {})),
    )


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

    def beat_once(self) -> None:
        """One beat; failures are logged once per outage and never raised."""
        try:
            beat(self.db, self.instance_id, self.program, self.info() if callable(self.info) else self.info,
                 self.pid)
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

    def run(self) -> None:
        while not self.stop.is_set():
            if self.when is None or self.when():
                self.beat_once()
            else:
                self.db.close()  # another beats: no connection held for nothing
            self.stop.wait(INTERVAL)
