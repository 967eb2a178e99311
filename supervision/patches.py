"""Every change this runtime makes to supervisord's internals (supervisor==4.3.0), in one place.

supervisord has no public API for any of these, and each pays for itself:

- `supervisor.poller.Poller.poll`: shorter polls (`short_polls`). supervisord
  notices a child's exit only when its 1 s poll times out, and stops programs
  one after another: 8 programs took over 8 s to stop; now a stop takes about
  as long as the programs do, and the start does not wait out the first poll.
- `supervisor.options.ServerOptions.fork` and `.execve`: the Python programs
  are forked from supervisord with their imports loaded once instead of
  exec'd (supervision/preload.py): 15 to 19 MiB PSS less per program.
- `supervisor.supervisord.Supervisor`: supervisord itself is the watchdog
  (supervision/watchdog.py `Watched`, which overrides `runforever` and
  `reap` and calls `remove_process_group`): no event listener that could
  drop an event or die, and no RPC credentials to take setup out of the table.

`tests/test_patches.py` fails, naming the patch, when the installed or pinned
supervisor is not `PINNED` or a patched name is gone.
"""

import os
import sys

PINNED = "4.3.0"
# What each patch replaces or relies on, as "module:attribute.path".
PATCHED = {
    "short polls": ("supervisor.poller:Poller.poll",),
    "forked programs": ("supervisor.options:ServerOptions.fork", "supervisor.options:ServerOptions.execve"),
    "watchdog": ("supervisor.supervisord:Supervisor", "supervisor.supervisord:Supervisor.runforever",
                 "supervisor.supervisord:Supervisor.reap", "supervisor.supervisord:Supervisor.remove_process_group",
                 "supervisor.supervisord:main"),
}
# At most this long between two looks at the children; see `short_polls`.
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


def shorten_polls() -> None:
    from supervisor import poller

    poller.Poller.poll = short_polls(poller.Poller.poll)


def fork_programs(become) -> None:
    """supervisord's children: `become(filename, argv, env)` turns a fork into a program, or returns False to exec."""
    from supervisor.options import ServerOptions

    execve = ServerOptions.execve

    def fork(self):
        # Output still buffered here would otherwise be written once more by every child.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        return os.fork()

    def exec_or_become(self, filename, argv, env):
        if not become(filename, argv, env):
            return execve(self, filename, argv, env)

    ServerOptions.fork = fork
    ServerOptions.execve = exec_or_become


def run_watched(supervisor_class, argv: list[str]) -> None:
    """Run supervisord's main with `supervisor_class` (a subclass of its Supervisor) in its place."""
    from supervisor import supervisord

    supervisord.Supervisor = supervisor_class
    supervisord.main(argv)
