"""Start a program that dies with its parent: `python -m procs.lifeline SIGNAL COMMAND [ARG ...]`.

supervisord starts every program through this. It asks the kernel to send
SIGNAL to the program when supervisord dies, however it dies (kill -9
included), so no program outlives it with parent 1; then it execs COMMAND
in its own place (same pid). Variables meant for this program alone (its
secrets) arrive encoded in AYON_PROGRAM_SECRETS, as a supervisord config
value cannot carry every character, and are decoded into its environment.
"""

import base64
import ctypes
import json
import os
import signal
import sys

SECRETS_VAR = "AYON_PROGRAM_SECRETS"
# Set by procs.supervisord: the parent a program must still have once its lifeline holds.
PARENT_VAR = "AYON_SUPERVISORD_PID"
PR_SET_PDEATHSIG = 1


def encode(variables: dict[str, str]) -> str:
    """Variables as one config-safe word (base64url of their JSON)."""
    return base64.urlsafe_b64encode(json.dumps(variables).encode()).decode().rstrip("=")


def decode(word: str) -> dict[str, str]:
    if not word:
        return {}
    return json.loads(base64.urlsafe_b64decode(word + "=" * (-len(word) % 4)))


def hold(signum: int, parent: int | None = None) -> bool:
    """Have `signum` sent to this process when its parent dies; False where the kernel cannot.

    The setting survives exec but not fork (each child needs its own) nor a
    change of user. When the parent is no longer `parent`, it died before
    the lifeline held: the signal is raised at once, as the kernel would have.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:  # not Linux
        return False
    if prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if parent is not None and os.getppid() != parent:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to end the process
    return True


def signal_named(name: str) -> signal.Signals:
    try:
        return signal.Signals["SIG" + name.upper().removeprefix("SIG")]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m procs.lifeline SIGNAL COMMAND [ARG ...]", file=sys.stderr)
        sys.exit(2)
    try:
        signum = signal_named(args[0])
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    env = dict(os.environ)
    env.update(decode(env.pop(SECRETS_VAR, "")))
    parent = env.pop(PARENT_VAR, "")
    hold(signum, int(parent) if parent.isdigit() else None)
    os.execvpe(args[1], args[1:], env)


if __name__ == "__main__":
    main()
