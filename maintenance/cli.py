"""`python -m maintenance` (minimal until the maintenance issue lands)."""

import sys

from procs.daemon import Daemon


class MaintenanceDaemon(Daemon):
    program = "maintenance"

    def tick(self) -> None:
        pass


def main() -> None:
    if sys.argv[1:] == ["--daemon"]:
        MaintenanceDaemon.main()
    print("Error: not implemented yet", file=sys.stderr)
    sys.exit(2)
