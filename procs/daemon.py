"""The shape of every long-running program: wait for the schema, loop, stop on a signal."""

import logging
import signal
import sys
import threading

from procs.common import open_database, start
from procs.heartbeat import Heartbeat
from server import config, events, migrations
from server.db import BROKEN
from server.errors import AyonError


_NOTHING = object()


class Daemon:
    """Subclasses set `program` and implement `tick()`; `interval()` is the pause between ticks."""

    program = "daemon"
    # Prefixes of the configuration keys this program uses: it reports only their problems.
    config_keys: tuple[str, ...] = ()

    def __init__(self):
        self.settings, self.log = start(self.program)
        self.db = open_database(self.settings, self.program)
        self.stop = threading.Event()
        self.stop_reason = ""
        self.good_config = config.defaults()  # the last configuration this program could use
        self.rejected: dict[str, object] = {}  # key -> the refused stored value, reported once

    def usable_config(self, cur) -> dict:
        """The stored configuration as this program can use it; a value it cannot use keeps its last good one.

        A stored value its validator refuses (written into the database around the
        API) must not stop the program: it is logged and recorded once as a
        `server.config_rejected` event, and the program goes on with what it had.
        """
        doc, problems = config.usable(config.stored(cur), self.good_config)
        mine = {p.key: p for p in problems if self._uses(p.key)}
        for key in [k for k in self.rejected if k not in mine]:
            self.log.info("configuration %s is usable again", key)
            del self.rejected[key]
        for key, problem in mine.items():
            if self.rejected.get(key, _NOTHING) != problem.value:
                self.rejected[key] = problem.value
                self._report_rejected(problem)
        self.good_config = doc
        return doc

    def _uses(self, key: str) -> bool:
        return key == "(top)" or any(key.startswith(p) or p.startswith(key + ".") for p in self.config_keys)

    def _report_rejected(self, problem) -> None:
        where = f"{self.settings.instance_id}/{self.program}"
        text = (f"{where} cannot use the stored {problem.key} = {config.shown(problem.value)} "
                f"({problem.error}); it keeps {config.shown(problem.kept)}")
        self.log.error("%s", text)
        try:
            events.dispatch(self.db, config.REJECTED_TOPIC, status="failed", description=text, summary={
                "key": problem.key, "value": problem.value, "error": problem.error, "kept": problem.kept,
                "instance": self.settings.instance_id, "program": self.program,
            })
        except BROKEN:
            del self.rejected[problem.key]  # recorded on the next read instead

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
