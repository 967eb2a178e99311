"""The webactions program: fails webactions that outlived `webactions.timeout`.

Every `webactions.check_interval` seconds, both read from the server
configuration; a configuration change (NOTIFY `ayon_config`) is picked up
at once. The check is one atomic UPDATE, so every instance may run it.
"""

import time

from procs.daemon import Daemon
from server import config, webactions
from server.db import BROKEN
from server.events import Listener


class Webactions(Daemon):
    """Marks timed-out webactions as failed, on every instance at once."""

    program = "webactions"
    config_keys = ("webactions.",)

    def prepare(self) -> None:
        self.listener = None
        self.last_check = 0.0
        self.apply(config.defaults())  # until the first tick reads the stored configuration

    def read_config(self) -> None:
        with self.db.transaction() as cur:
            self.apply(self.usable_config(cur))

    def apply(self, doc: dict) -> None:
        self.timeout = config.lookup(doc, "webactions.timeout")
        self.check_interval = config.lookup(doc, "webactions.check_interval")

    def tick(self) -> None:
        self.last_check = time.monotonic()  # a failed check is retried after one interval, not at once
        self.read_config()
        expired = webactions.expire(self.db, self.timeout)
        if expired:
            self.log.info("marked %d timed-out webactions as failed (timeout %d s)", len(expired), self.timeout)
        else:
            self.log.debug("no timed-out webactions (timeout %d s)", self.timeout)

    def interval(self) -> float:
        return float(self.check_interval)

    def wait(self, seconds: float) -> None:
        """Sleep until the next check, re-reading the configuration whenever it changes."""
        while not self.stop.is_set():
            remaining = self.last_check + self.check_interval - time.monotonic()
            if remaining <= 0:
                return
            if not self._listen(min(remaining, 1.0)):
                continue
            try:
                self.read_config()
            except BROKEN:
                pass  # the next tick reports the outage

    def _listen(self, seconds: float) -> bool:
        """Wait up to `seconds` for a configuration change; True when one came."""
        try:
            if self.listener is None:
                self.listener = Listener(self.db.url, ("ayon_config",), "ayon-webactions-listen")
            return bool(self.listener.wait(seconds))
        except BROKEN:
            if self.listener is not None:
                self.listener.close()
            self.listener = None
            self.stop.wait(seconds)
            return True  # re-read: a change may have been missed while disconnected


if __name__ == "__main__":
    Webactions.main()
