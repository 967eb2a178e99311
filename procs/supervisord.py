"""supervisord, run in this process so its exit code can say why it stopped.

procs.entrypoint execs this with the settings in an inherited in-memory file
(it holds them out of /proc/PID/environ); they are taken back into this
process's memory, checked and turned into the supervisord config
(`entrypoint.prepare`), and the secret ones are dropped before supervisord
starts anything: supervisord passes its own environment to every program,
and the generated config hands each program only those it needs
(procs.lifeline decodes them). Run directly, this hands its own settings over
the same way first.

supervisord itself always exits 0; the watchdog (procs/watchdog.py, which
this process's supervisord is) says why it stopped the instance when a
program could not start or setup failed, and then this exits with 1.

Every program's command goes through procs.lifeline, which ties its life to
this process's; the Python programs are forked from this process with their
modules' imports loaded once (procs/preload.py), which does the lifeline's
steps itself.
"""

import os
import sys

from procs import entrypoint, lifeline, watchdog
from server.core.errors import run_main

# supervisord notices a child's exit only when its 1 s poll times out (Python retries
# the poll after SIGCHLD), and it stops programs one after another: 8 programs took
# over 8 s to stop. A shorter poll makes a stop take about as long as the programs do.
POLL_SECONDS = 0.1


def short_polls(poll):
    """supervisord's poll, waiting at most POLL_SECONDS, and not at all the first time.

    supervisord starts its programs after its first poll, which nothing ends early: waiting
    it out would delay the whole start by POLL_SECONDS.
    """
    polled = False

    def shortened(self, timeout):
        nonlocal polled
        timeout, polled = (min(timeout, POLL_SECONDS) if polled else 0), True
        return poll(self, timeout)

    return shortened


def main() -> int:
    if not entrypoint.take_settings(sys.argv[1:]):
        entrypoint.hand_over()
    conf, rundir = entrypoint.prepare()
    from supervisor import poller, supervisord

    from procs import preload

    poller.Poller.poll = short_polls(poller.Poller.poll)
    # Each program's lifeline checks it still has this parent once it holds.
    os.environ[lifeline.PARENT_VAR] = str(os.getpid())
    preload.install(conf)
    for stale in [rundir / watchdog.SETUP_DONE, *rundir.glob("*.error")]:
        stale.unlink(missing_ok=True)
    reasons: list[str] = []
    supervisord.Supervisor = watchdog.supervisor_class(rundir, reasons)
    supervisord.main(["-c", conf])
    if reasons:
        # The first is the cause; what went wrong while stopping follows from it.
        print(f"Error: {reasons[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, "supervisord")
