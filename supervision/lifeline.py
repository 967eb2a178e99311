"""Start a program that dies with its parent: `python -m supervision.lifeline SIGNAL COMMAND [ARG ...]`.

Every program's command in the supervisord config starts with this; for
the Python programs, supervisord does the same steps in a fork of itself
instead (supervision/preload.py). It asks the kernel to send
SIGNAL to the program when supervisord dies, however it dies (kill -9
included), so no program outlives it with parent 1; then it execs COMMAND
in its own place (same pid). Variables meant for this program alone (its
secrets) arrive encoded in AYON_PROGRAM_SECRETS, as a supervisord config
value cannot carry every character, and are decoded into its environment.
"""

import base64
import json
import os
import signal
import sys

from server.core.lifetime import hold

MODULE = "supervision.lifeline"
SECRETS_VAR = "AYON_PROGRAM_SECRETS"
# Set by supervision.supervisord: the parent a program must still have once its lifeline holds.
PARENT_VAR = "AYON_SUPERVISORD_PID"


def encode(variables: dict[str, str]) -> str:
    """Variables as one config-safe word (base64url of their JSON)."""
    return base64.urlsafe_b64encode(json.dumps(variables).encode()).decode().rstrip("=")


def decode(word: str) -> dict[str, str]:
    if not word:
        return {}
    return json.loads(base64.urlsafe_b64decode(word + "=" * (-len(word) % 4)))


def environment(environ) -> tuple[dict[str, str], int | None]:
    """The program's environment (its secrets decoded, this module's variables gone) and the parent it must have."""
    env = dict(environ)
    env.update(decode(env.pop(SECRETS_VAR, "")))
    parent = env.pop(PARENT_VAR, "")
    return env, int(parent) if parent.isdigit() else None


def signal_named(name: str) -> signal.Signals:
    try:
        return signal.Signals["SIG" + name.upper().removeprefix("SIG")]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(f"usage: python -m {MODULE} SIGNAL COMMAND [ARG ...]", file=sys.stderr)
        sys.exit(2)
    try:
        signum = signal_named(args[0])
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    env, parent = environment(os.environ)
    hold(signum, parent)
    os.execvpe(args[1], args[1:], env)


if __name__ == "__main__":
    main()
