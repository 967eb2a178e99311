"""A program for tests/test_preload.py: `python -m tests.preload_probe WHAT [ARG ...]`.

It reports what it sees as one JSON line on stdout, then ends the way WHAT says:
`exit CODE`, `text` (SystemExit with a message), `raise`, `interrupt`,
`thread` (a non-daemon thread outlives the main module), `atexit`, `collect`
(opens a descriptor, runs the collector, checks the descriptor is still open).
"""

import atexit
import gc
import json
import os
import signal
import sys
import threading

NAME = __name__


def report() -> dict:
    return {
        "name": NAME,
        "main_is_me": sys.modules["__main__"].__dict__ is globals(),
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PROBE_", "AYON_"))},
        "proc_environ_has_secret": b"probe-secret" in open("/proc/self/environ", "rb").read(),
        "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\0").decode(),
        "signals": {s.name: str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD,
                                                                 signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2)},
    }


what = sys.argv[1] if len(sys.argv) > 1 else "exit"
print(json.dumps(report()), flush=True)
if what == "exit":
    sys.exit(int(sys.argv[2]))
if what == "text":
    sys.exit("probe: stopped with a message")
if what == "raise":
    raise RuntimeError("probe: a bug")
if what == "interrupt":
    raise KeyboardInterrupt
if what == "thread":
    main, waiting = threading.main_thread(), threading.Event()

    def late() -> None:
        # Until the main module has ended and the interpreter is on its way out: it must wait for us.
        while main.is_alive():
            waiting.wait(0.01)
        print("thread finished", flush=True)

    threading.Thread(target=late).start()
if what == "atexit":
    atexit.register(lambda: print("atexit ran", flush=True))
if what == "collect":
    fd = os.open(os.devnull, os.O_RDONLY)
    gc.collect()
    os.fstat(fd)  # OSError (bad file descriptor) if a stray finalizer closed it
    print(f"descriptor {fd} kept", flush=True)
