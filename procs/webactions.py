"""The webactions program (minimal daemon; filled in by its issue)."""

from procs.daemon import Daemon


class Webactions(Daemon):
    program = "webactions"

    def tick(self) -> None:
        pass


if __name__ == "__main__":
    Webactions.main()
