"""The webactions program: fails webactions that outlived `webactions.timeout`.

Every `webactions.check_interval` seconds, both read from the server
configuration; a configuration change is picked up at once (the program
base re-reads it on NOTIFY). The check is one atomic UPDATE, so every
instance may run it.
"""

from server.core import webactions
from server.core.program import Daemon


class Webactions(Daemon):
    """Marks timed-out webactions as failed, on every instance at once."""

    program = "webactions"
    config_keys = ("webactions.",)

    def configure(self, cfg) -> None:
        self.timeout = cfg.webactions.timeout
        self.check_interval = cfg.webactions.check_interval

    def tick(self) -> None:
        expired = webactions.expire(self.db, self.timeout)
        if expired:
            self.log.info("marked %d timed-out webactions as failed (timeout %d s)", len(expired), self.timeout)
        else:
            self.log.debug("no timed-out webactions (timeout %d s)", self.timeout)

    def interval(self) -> float:
        return float(self.check_interval)


if __name__ == "__main__":
    Webactions.main()
