"""The logcollector program: moves the local log spool into PostgreSQL, each record exactly once.

The engine (spool reading, COPY, positions, partitions, the cap) is
server/core/collector.py `SpoolCollector`; this program holds the spool's lock,
guards the spool's size while it waits for PostgreSQL and a current schema,
runs the engine's pass in the program base's loop, and on stop ingests what is
left for at most `collector.DRAIN` seconds.
"""

import signal
import time

from server.core import collector, migrations
from server.core.db import BROKEN
from server.core.errors import first_line
from server.core.program import Daemon, setup_pending

POLL = 0.1  # seconds between looks at an idle spool: bounds the spool-to-table latency
RETRY = 1.0  # seconds between attempts while PostgreSQL is unreachable


class SetupPending(Exception):
    """This instance's setup has not finished: nothing to connect as yet."""


class Logcollector(Daemon):
    """Ingests AYON_DATA_DIR/spool into the logs table."""

    program = collector.PROGRAM

    def __init__(self):
        super().__init__()
        self.engine = collector.SpoolCollector(self.db, self.settings.data_dir, self.settings.instance_id,
                                               self.settings.log_spool_max, self.log, self.program)
        self.ready = False

    def tick(self) -> None:
        self.engine.tick()

    def interval(self) -> float:
        return RETRY if self.engine.down else POLL

    def wait(self) -> None:
        if not self.engine.more:
            self.stop.wait(self.interval())

    def heartbeat_info(self) -> dict:
        return self.engine.info()

    def wait_for_database(self) -> None:
        """Until PostgreSQL and a current schema are there (boot), keep the spool within its cap."""
        said_at = None
        while not self.stop.is_set():
            try:
                if setup_pending(self.settings):  # no connection before there is a role to connect as
                    raise SetupPending("setup has not finished")
                state = migrations.status(self.db)
                if state.current:
                    return
                reason = state.reason
            except (*BROKEN, SetupPending) as exc:
                reason = first_line(exc)
            if said_at is None or time.monotonic() - said_at >= 30:
                self.log.info("waiting for PostgreSQL and a current schema, spooling meanwhile: %s", reason)
                said_at = time.monotonic()
            self.engine.files = self.engine.scan()
            self.engine.enforce_cap()
            self.engine.report_drops()
            self.stop.wait(RETRY)

    def prepare(self) -> None:
        self.ready = True

    def run(self) -> int:
        # The base class installs these too, but only after our own waiting below.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        if not self.engine.lock(self.stop, lambda: self.log.warning(
                "another log collector holds %s; waiting for it to stop", self.engine.dir)):
            return 0
        self.wait_for_database()
        if self.stop.is_set():
            self.log.info("%s stopping on %s", self.program, self.stop_reason or "request")
            return 0
        code = super().run()
        if self.ready and code == 0:
            self.drain()
        self.engine.report_drops(force=True)
        return code

    def drain(self) -> None:
        """On stop: ingest what is left, within collector.DRAIN seconds."""
        deadline = time.monotonic() + collector.DRAIN
        while time.monotonic() < deadline:
            self.engine.tick()
            if self.engine.down or not self.engine.pending():
                return


if __name__ == "__main__":
    Logcollector.main()
