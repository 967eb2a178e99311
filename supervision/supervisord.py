"""supervisord, run in this process so its exit code can say why it stopped.

supervision/handover.py (`python -m procs.entrypoint`) execs this with the
settings in an inherited in-memory file (it holds them out of
/proc/PID/environ); they are taken back into this process's memory, checked
and turned into the supervisord config (supervision/prepare.py), and the
secret ones are dropped before supervisord starts anything: supervisord
passes its own environment to every program, and the generated config hands
each program only those it needs (supervision/lifeline.py decodes them). Run
directly, this hands its own settings over the same way first.

supervisord itself always exits 0; the watchdog (supervision/watchdog.py,
which this process's supervisord is) says why it stopped the instance when a
program could not start or setup failed, and then this exits with 1.

Every program's command goes through supervision.lifeline, which ties its
life to this process's; the Python programs are forked from this process with
their modules' imports loaded once (supervision/preload.py), which does the
lifeline's steps itself. What this changes in supervisord is all in
supervision/patches.py.
"""

import os
import sys

from server.core import layout
from server.core.errors import run_main
from supervision import handover, lifeline, patches, prepare, watchdog


def main() -> int:
    if not prepare.take_settings(sys.argv[1:]):
        handover.hand_over()
    conf, data_dir = prepare.prepare()
    from supervision import preload

    patches.shorten_polls()
    # Each program's lifeline checks it still has this parent once it holds.
    os.environ[lifeline.PARENT_VAR] = str(os.getpid())
    first_then_preload = preload.install(conf)
    for stale in [layout.setup_done(data_dir), *layout.error_files(data_dir)]:
        stale.unlink(missing_ok=True)
    reasons: list[str] = []
    patches.run_watched(watchdog.supervisor_class(data_dir, reasons, first_then_preload), ["-c", conf])
    if reasons:
        # The first is the cause; what went wrong while stopping follows from it.
        print(f"Error: {reasons[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, "supervisord")
