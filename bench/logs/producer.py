"""A benchmark producer: `python -m bench.logs.producer NAME COUNT RATE` logs COUNT records (RATE 0: flat out)."""

import sys
import time

from server.core import settings
from server.core.logs import setup_logging


def main() -> None:
    name, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    log = setup_logging(name, settings.load())
    start = time.monotonic()
    for n in range(count):
        log.info("render job %d finished on node %s in %.2f s", n, "farm-042", 12.5,
                 extra={"n": n, "project": "demo", "job": "comp_v012"})
        if rate:
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing to the fixed rate


if __name__ == "__main__":
    main()
