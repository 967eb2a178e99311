"""The shape of every long-running program: wait for the schema, loop, stop on a signal."""

import logging
import signal
import sys
import threading

from procs.common import open_database, start
from procs.heartbeat import Heartbeat
from server import migrations
from server.errors import AyonError


class Daemon:
    """Subclasses set `program` and implement `tick()`; `interval()` is the pause between ticks."""

    program = "daemon"

    def __init__(self):
        self.settings, self.log = start(self.program)
        self.db = open_database(self.settings, self.program)
        self.stop = threading.Event()
        self.stop_reason = ""

    # Signal handlers only record the signal; the loop acts on it.
    def _on_signal(self, signum, frame) -> None:
        self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    def interval(self) -> float:
        return 5.0

    def prepare(self) -> None:
        """Called once the schema is current, before the first tick."""

    def tick(self) -> None:
        raise NotImplementedError

    def heartbeat_info(self) -> dict:
        return {}

    def wait(self, seconds: float) -> None:
        """Pause between ticks; subclasses may wake early (LISTEN/NOTIFY)."""
        self.stop.wait(seconds)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            migrations.wait_until_current(
                self.db, self.settings.schema_wait_timeout, self.log.info, stop=self.stop.is_set
            )
        except AyonError as exc:
            if self.stop.is_set():
                self.log.info("stopping on %s before the schema was current", self.stop_reason)
                return 0
            self.log.error("%s", exc)
            return exc.exit_code
        Heartbeat(self.db, self.settings.instance_id, self.program, self.stop, self.heartbeat_info).start()
        self.prepare()
        self.log.info("%s started", self.program)
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception:
                self.log.exception("%s: tick failed, will retry", self.program)
            if not self.stop.is_set():
                self.wait(self.interval())
        self.log.info("%s stopping on %s", self.program, self.stop_reason or "request")
        return 0

    @classmethod
    def main(cls) -> None:
        """Entry point of `python -m procs.<program>`."""
        try:
            daemon = cls()
            code = daemon.run()
        except Exception:
            logging.getLogger(f"ayon.{cls.program}").exception("%s crashed", cls.program)
            code = 1
        sys.exit(code)
