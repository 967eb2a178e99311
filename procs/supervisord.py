"""supervisord, run in this process so its exit code can say why it stopped.

supervisord itself always exits 0; the watchdog listener leaves an exit
status in the run folder when a program could not start or setup failed.
"""

import sys
from pathlib import Path

from supervisor import poller, supervisord

from procs.watchdog import EXIT_FILE


# supervisord notices a child's exit only when its 1 s poll times out (Python retries
# the poll after SIGCHLD), and it stops programs one after another: 8 programs took
# over 8 s to stop. A shorter poll makes a stop take about as long as the programs do.
POLL_SECONDS = 0.1
_poll = poller.Poller.poll
poller.Poller.poll = lambda self, timeout: _poll(self, min(timeout, POLL_SECONDS))


def main() -> int:
    conf, rundir = sys.argv[1], Path(sys.argv[2])
    status_file = rundir / EXIT_FILE
    status_file.unlink(missing_ok=True)
    supervisord.main(["-c", conf])
    if status_file.exists():
        code, _, reason = status_file.read_text().strip().partition(" ")
        print(f"Error: {reason}", file=sys.stderr, flush=True)
        return int(code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
