"""The supervisord event listener that ends the instance when it cannot work.

A program going FATAL (it could not start) or setup exiting with an error
stops supervisord: the container exits non-zero and the orchestrator
restarts it. The exit code and the reason are left in the run folder for
`procs.supervisord`, which exits with them.
"""

import os
import signal
import sys
from pathlib import Path

EXIT_FILE = "exit-status"


def parse(header_line: str) -> dict:
    return dict(token.split(":", 1) for token in header_line.split())


def setup_error(rundir: Path) -> str:
    try:
        return (rundir / "setup.error").read_text().strip()
    except OSError:
        return "see its error above"


def verdict(event: str, payload: dict, rundir: Path) -> str | None:
    """Why this event must end the instance, or None."""
    name = payload.get("processname", "?")
    if event == "PROCESS_STATE_FATAL":
        return f"program {name} could not be started (FATAL)"
    if event == "PROCESS_STATE_EXITED" and name == "setup" and payload.get("expected") == "0":
        return f"setup failed: {setup_error(rundir)}"
    if event == "PROCESS_STATE_EXITED" and name != "setup" and payload.get("expected") == "1":
        # Long-running programs exit by themselves only with 2: restarting cannot help.
        return f"program {name} cannot run: it exited with status 2 (bad configuration or schema), see its error above"
    return None


def main() -> None:
    """Speak supervisord's listener protocol on stdin/stdout; report on stderr."""
    rundir = Path(sys.argv[1])
    # supervisord stops the listener last, with SIGTERM: that is a normal end.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    stdin, stdout = sys.stdin, sys.stdout
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = parse(stdin.readline())
        body = stdin.read(int(header.get("len", 0)))
        first, _, _ = body.partition("\n")
        reason = verdict(header.get("eventname", ""), parse(first), rundir)
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        if reason:
            print(f"watchdog: {reason}; stopping the instance", file=sys.stderr, flush=True)
            tmp = rundir / (EXIT_FILE + ".tmp")
            tmp.write_text(f"1 {reason}\n")
            os.replace(tmp, rundir / EXIT_FILE)
            os.kill(os.getppid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
