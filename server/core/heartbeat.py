"""Each long-running program records that it is alive, every few seconds.

Daemons built on the program base beat from a thread of their own
(`Heartbeat`). A program whose process must hold neither a thread nor a
database connection, gunicorn's master (it forks its workers, and a forked
copy of a connection or a lock is a hazard in every worker), has a child
beat for it instead (`fork_beside`): one process, one connection, under the
program's name and its parent's pid, ending with its parent.
"""

import json
import logging
import os
import signal
import socket
import threading
import time

import psycopg2.errors

from server.core import VERSION, lifetime
from server.core.db import BROKEN, Database
from server.core.errors import first_line

log = logging.getLogger("ayon.heartbeat")

INTERVAL = 5.0
# The name a beating child shows in `ps -o comm`, top and /proc/PID/comm (at most 15 bytes).
BESIDE_NAME = "ayon-heartbeat"
_PR_SET_NAME = 15


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
    or a callable returning one, called at each beat.
    """

    def __init__(self, db: Database, instance_id: str, program: str, stop: threading.Event, info=None,
                 pid: int | None = None):
        super().__init__(name=f"heartbeat-{program}", daemon=True)
        self.db, self.instance_id, self.program, self.stop, self.info = db, instance_id, program, stop, info
        self.pid = pid
        self.failing = False
        self.waiting_for_schema = False

    def beat_once(self) -> None:
        """One beat; failures are logged once per outage and never raised."""
        try:
            beat(self.db, self.instance_id, self.program, self.info() if callable(self.info) else self.info,
                 self.pid)
            if self.failing:
                log.info("heartbeat restored")
            self.failing = self.waiting_for_schema = False
        except psycopg2.errors.UndefinedTable:
            # A program that does not wait for setup (the web server) may start before the schema exists.
            if not self.waiting_for_schema:
                log.info("heartbeat waits for the schema (no instances table yet)")
            self.waiting_for_schema = True
        except BROKEN as exc:
            if not self.failing:
                log.warning("heartbeat failed, will retry: %s", first_line(exc))
            self.failing = True
        except Exception:
            log.exception("heartbeat failed")

    def run(self) -> None:
        while not self.stop.is_set():
            self.beat_once()
            self.stop.wait(INTERVAL)


def _name_process(name: str) -> None:
    if lifetime.prctl is not None:  # elsewhere the name is a convenience only
        lifetime.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def fork_beside(settings, program: str, info, close_fds=(), setup_logging=None) -> int:
    """Fork a child that heartbeats for this process (`program`, this pid) until this process ends.

    The child holds the only database connection (PostgreSQL being away only
    delays its beats) and calls `info()` for the figures at each beat. It
    ends on SIGTERM or SIGINT, when this process dies (the parent-death
    signal) or no longer is its parent, and always through os._exit: it never
    returns into its parent's code. Call it while this process has a single
    thread; `close_fds` are descriptors the child must not keep (listening
    sockets), `setup_logging(program, settings)` sets up the child's logging.
    Returns the child's pid.
    """
    parent = os.getpid()
    child = os.fork()
    if child:
        return child
    code = 0
    try:
        # The parent's signal handlers belong to its own loop: the defaults end this process.
        for signum in signal.valid_signals():
            try:
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        lifetime.hold(signal.SIGTERM, parent)
        _name_process(BESIDE_NAME)
        if setup_logging is not None:
            setup_logging(program, settings)
        db = Database(settings.postgres_url, size=1, application_name=f"ayon-{program}-heartbeat")
        heart = Heartbeat(db, settings.instance_id, program, threading.Event(), info, pid=parent)
        # The parent-death signal ends this loop; the check is for kernels without one.
        while os.getppid() == parent:
            heart.beat_once()
            time.sleep(INTERVAL)
    except BaseException:
        code = 1
        try:
            log.exception("heartbeat of %s stopped", program)
        except BaseException:
            pass
    finally:
        os._exit(code)
