"""The server's drain: on SIGTERM, out of the load balancer first, then gunicorn's graceful stop.

gunicorn's own SIGTERM closes the listening socket at once: a load balancer
that still sends requests there (it learns of the stop at its next health
check) gets refused connections. Here the arbiter's SIGTERM instead sets a
byte of memory every worker shares, so `/health/ready` answers 503 (and
every answer says `Connection: close`, so kept-alive clients reconnect
elsewhere) while everything else is still served, for AYON_DRAIN_SECONDS.
Then gunicorn stops as before: it closes the socket and gives the requests
in flight its graceful timeout. SIGINT and SIGQUIT still stop at once.

The arbiter's `handle_term` is replaced on the instance (gunicorn calls
`handle_<signal>` by name from its main loop); tests/test_pinned_internals.py
pins what this relies on.
"""

import mmap
import signal

REASON = ("this server is stopping: it serves the requests it is given for its drain period (AYON_DRAIN_SECONDS), "
          "then finishes those in flight and exits; send new requests to another instance")

_flag: mmap.mmap | None = None  # one shared byte: 1 while draining


def prepare() -> None:
    """In gunicorn's master, before it forks a worker: a fresh shared byte the workers inherit.

    Fresh on each start: a master forked from a process that had one (supervision/preload.py)
    must not inherit the previous server's drain.
    """
    global _flag
    _flag = mmap.mmap(-1, 1, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def draining() -> bool:
    """True once this server's master was told to stop (in the master and in every worker)."""
    return _flag is not None and _flag[0] == 1


def install(arbiter, seconds: int) -> None:
    """Make the arbiter's SIGTERM drain for `seconds` first (0: gunicorn's own stop at once)."""
    drained = False

    def alarm(signum, frame):
        # A signal handler only records and enqueues; the main loop acts (as gunicorn's own).
        nonlocal drained
        drained = True
        arbiter.SIG_QUEUE.put_nowait(signal.SIGTERM)

    def handle_term():
        if seconds <= 0 or drained:
            raise StopIteration  # gunicorn's handle_term: the main loop halts, a graceful stop
        if draining():
            return  # a further SIGTERM while draining: the drain goes on
        _flag[0] = 1
        arbiter.log.info("Draining for %s s: /health/ready answers 503, requests are still served", seconds)
        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    arbiter.handle_term = handle_term
