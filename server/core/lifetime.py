"""A process that dies with its parent: the kernel's parent-death signal."""

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1

try:
    # Looked up once: a process forked from this one (supervision/preload.py) shares it instead of building its own.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except AttributeError:  # not Linux
    _prctl = None


def hold(signum: int, parent: int | None = None) -> bool:
    """Have `signum` sent to this process when its parent dies; False where the kernel cannot.

    The setting survives exec but not fork (each child needs its own) nor a
    change of user. When the parent is no longer `parent`, it died before
    the lifeline held: the signal is raised at once, as the kernel would have.
    """
    if _prctl is None:
        return False
    if _prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if parent is not None and os.getppid() != parent:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to end the process
    return True
