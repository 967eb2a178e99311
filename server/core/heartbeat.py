"""Each long-running program records that it is alive, every few seconds."""

import json
import logging
import os
import socket
import threading

from server.core import VERSION
from server.core.db import BROKEN, Database
from server.core.errors import first_line

log = logging.getLogger("ayon.heartbeat")

INTERVAL = 5.0


def beat(db: Database, instance_id: str, program: str, info: dict | None = None) -> None:
    db.execute(
        "INSERT INTO instances (instance_id, program, pid, hostname, version, info) "
        "VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (instance_id, program) DO UPDATE SET pid = EXCLUDED.pid, "
        "hostname = EXCLUDED.hostname, version = EXCLUDED.version, last_seen = now(), "
        "info = EXCLUDED.info, started_at = CASE WHEN instances.pid = EXCLUDED.pid "
        "THEN instances.started_at ELSE now() END",
        (instance_id, program, os.getpid(), socket.gethostname(), VERSION, json.dumps(info or {})),
    )


class Heartbeat(threading.Thread):
    """A daemon thread that beats until `stop` is set; a database outage only delays it."""

    def __init__(self, db: Database, instance_id: str, program: str, stop: threading.Event, info=None):
        super().__init__(name=f"heartbeat-{program}", daemon=True)
        self.db, self.instance_id, self.program, self.stop, self.info = db, instance_id, program, stop, info
        self.failing = False

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                beat(self.db, self.instance_id, self.program, self.info() if callable(self.info) else self.info)
                if self.failing:
                    log.info("heartbeat restored")
                self.failing = False
            except BROKEN as exc:
                if not self.failing:
                    log.warning("heartbeat failed, will retry: %s", first_line(exc))
                self.failing = True
            except Exception:
                log.exception("heartbeat failed")
            self.stop.wait(INTERVAL)
