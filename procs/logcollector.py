"""The logcollector program (minimal daemon; filled in by its issue)."""

from procs.daemon import Daemon


class Logcollector(Daemon):
    program = "logcollector"

    def tick(self) -> None:
        pass


if __name__ == "__main__":
    Logcollector.main()
