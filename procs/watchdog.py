"""The supervisord event listener that ends the instance when it cannot work.

A program going FATAL (it could not start) or setup exiting with an error
stops supervisord: the container exits non-zero and the orchestrator
restarts it. The exit code and the reason are left in the run folder for
`procs.supervisord`, which exits with them. A program that knows why it
cannot start leaves that in `<program>.error` in the run folder, and the
reason says it.

A setup that finished (exit 0) is removed from supervisord's process table,
so `supervisorctl status` shows only what runs and exits 0 when all of it
does; `setup.done` in the run folder tells the health check it finished.
"""

import os
import signal
import sys
from pathlib import Path

EXIT_FILE = "exit-status"
SETUP_DONE = "setup.done"


def error_file(rundir: Path, program: str) -> Path:
    """Where `program` leaves the one line saying why it cannot run."""
    return rundir / f"{program}.error"


def parse(header_line: str) -> dict:
    return dict(token.split(":", 1) for token in header_line.split())


def reason_of(rundir: Path, program: str) -> str | None:
    try:
        return error_file(rundir, program).read_text().strip() or None
    except OSError:
        return None


def verdict(event: str, payload: dict, rundir: Path) -> str | None:
    """Why this event must end the instance, or None."""
    name = payload.get("processname", "?")
    if event == "PROCESS_STATE_FATAL":
        reason = reason_of(rundir, name)
        return f"program {name} could not be started (FATAL)" + (f": {reason}" if reason else "")
    if event == "PROCESS_STATE_EXITED" and name == "setup" and payload.get("expected") == "0":
        return f"setup failed: {reason_of(rundir, name) or 'see its error above'}"
    if event == "PROCESS_STATE_EXITED" and name != "setup" and payload.get("expected") == "1":
        # Long-running programs exit by themselves only with 2: restarting cannot help.
        return f"program {name} cannot run: it exited with status 2 (bad configuration or schema), see its error above"
    return None


def finished_setup(payload: dict) -> bool:
    return payload.get("processname") == "setup" and payload.get("expected") == "1"


def remove_setup(rundir: Path) -> None:
    """Take the finished setup out of the process table, through supervisord's RPC.

    The RPC client (supervisor's xmlrpc and http modules) doubled this small
    process's memory for the rest of its life: a short-lived child makes the call.
    """
    (rundir / SETUP_DONE).touch()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            from supervisor import childutils

            # supervisord gives its children the socket's URL; the credentials come from our config.
            childutils.getRPCInterface(os.environ).supervisor.removeProcessGroup("setup")
        except Exception as exc:  # it stays listed as EXITED, which the health check accepts too
            print(f"watchdog: could not remove the finished setup from the process table: {exc}",
                  file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)


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
        if header.get("eventname") == "PROCESS_STATE_EXITED" and finished_setup(parse(first)):
            remove_setup(rundir)
        if reason:
            print(f"watchdog: {reason}; stopping the instance", file=sys.stderr, flush=True)
            tmp = rundir / (EXIT_FILE + ".tmp")
            tmp.write_text(f"1 {reason}\n")
            os.replace(tmp, rundir / EXIT_FILE)
            os.kill(os.getppid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
