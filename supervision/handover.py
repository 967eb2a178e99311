"""The image's entrypoint, the instance's first process: hand the settings to supervisord out of sight.

This process imports nothing of ours: it moves every `AYON_*` variable out of
the environment into an anonymous in-memory file (`hand_over`) and execs
`python -m supervision.supervisord`, which reads them back into its memory
and checks them (supervision/prepare.py). Neither that process's
/proc/PID/environ nor that of any program forked from it shows a secret, and
the one interpreter that imports the code (which every program then shares,
supervision/preload.py) starts at once. With arguments (`python -m
maintenance`), it execs them instead, as images usually do.

Run as `python -m procs.entrypoint` (the documented command) or `ayon-entrypoint`.
"""

import os
import sys

# Every setting is an AYON_* variable (server/core/settings.py): the secret ones among them.
PREFIX = b"AYON_"
FD_OPTION = "--settings-fd"
SUPERVISORD = "supervision.supervisord"


def hand_over(module: str = SUPERVISORD) -> None:
    """Exec `python -m module` with the settings in an inherited in-memory file, not in its environment."""
    settings = b"\0".join(k + b"=" + v for k, v in os.environb.items() if k.startswith(PREFIX))
    fd = os.memfd_create("ayon-settings", 0)
    os.set_inheritable(fd, True)
    view = memoryview(settings)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    env = {k: v for k, v in os.environb.items() if not k.startswith(PREFIX)}
    os.execve(sys.executable, [sys.executable, "-m", module, FD_OPTION, str(fd)], env)


def main() -> None:
    args = sys.argv[1:]
    try:
        if args:
            os.execvp(args[0], args)
        hand_over()
    except OSError as exc:
        what = f"cannot run {args[0]!r}" if args else f"cannot hand the settings over to {SUPERVISORD}"
        print(f"Error: {what}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


def run() -> None:
    """Entry point of `python -m procs.entrypoint` and its console script."""
    main()


if __name__ == "__main__":
    run()
