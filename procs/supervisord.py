"""supervisord, run in this process so its exit code can say why it stopped.

supervisord itself always exits 0; the watchdog (procs/watchdog.py, which
this process's supervisord is) says why it stopped the instance when a
program could not start or setup failed, and then this exits with 1.

supervisord passes its own environment to every program, so it runs without
the secret settings: the generated config hands each program only those it
needs (procs.lifeline decodes them). Every program's command goes through
procs.lifeline, which ties its life to this process's; the Python programs
are forked from this process with their modules' imports loaded once
(procs/preload.py), which does the lifeline's steps itself.
"""

import os
import sys
from pathlib import Path

from procs import lifeline
from procs import watchdog

# supervisord notices a child's exit only when its 1 s poll times out (Python retries
# the poll after SIGCHLD), and it stops programs one after another: 8 programs took
# over 8 s to stop. A shorter poll makes a stop take about as long as the programs do.
POLL_SECONDS = 0.1


# Set (to this process only) by whoever removed the secret settings from its environment already.
CLEANED = "_AYON_SUPERVISORD_NO_SECRETS"


def without_secrets(environ: dict) -> dict:
    """`environ` without the secret settings, marked so that procs.supervisord need not check it again."""
    from procs.supervisor import secret_names

    names = set(secret_names())
    return {**{k: v for k, v in environ.items() if k not in names}, CLEANED: "1"}


def command() -> list[str]:
    return [sys.executable, "-m", "procs.supervisord", *sys.argv[1:]]


def main() -> int:
    if os.environ.pop(CLEANED, None) is None:
        # Exec again without them, so not even this process's /proc/PID/environ shows them.
        os.execve(sys.executable, command(), without_secrets(os.environ))
    from supervisor import poller, supervisord

    from procs import preload

    _poll = poller.Poller.poll
    poller.Poller.poll = lambda self, timeout: _poll(self, min(timeout, POLL_SECONDS))

    conf, rundir = sys.argv[1], Path(sys.argv[2])
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
    sys.exit(main())
