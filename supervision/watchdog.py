"""The watchdog: inside supervisord, it ends the instance when it cannot work.

A program going FATAL (it could not start) or setup exiting with an error
stops supervisord: the container exits non-zero and the orchestrator
restarts it. The reason is handed to `supervision.supervisord`, which says it as
the instance's last line and exits with 1. A program that knows why it
cannot start leaves that in `run/<program>.error` (`layout.error_file`), and the
reason says it.

A setup that finished (exit 0) is removed from supervisord's process table,
so `supervisorctl status` shows only what runs and exits 0 when all of it
does; `run/setup.done` (`layout.setup_done`) tells the health check it finished.

It is supervisord itself (`Watched`), subscribed to its own process state
events: no event can be dropped on the way, no process of its own has to
stay alive, and taking setup out of the table needs no RPC credentials.
"""

import sys
from pathlib import Path

from supervisor.childutils import get_headers

from server.core import layout


def reason_of(data_dir: str | Path, program: str) -> str | None:
    try:
        return layout.error_file(data_dir, program).read_text().strip() or None
    except OSError:
        return None


def verdict(event: str, payload: dict, data_dir: str | Path) -> str | None:
    """Why this event must end the instance, or None."""
    name = payload.get("processname", "?")
    if event == "PROCESS_STATE_FATAL":
        reason = reason_of(data_dir, name)
        return f"program {name} could not be started (FATAL)" + (f": {reason}" if reason else "")
    if event == "PROCESS_STATE_EXITED" and name == "setup" and payload.get("expected") == "0":
        return f"setup failed: {reason_of(data_dir, name) or 'see its error above'}"
    if event == "PROCESS_STATE_EXITED" and name != "setup" and payload.get("expected") == "1":
        # Long-running programs exit by themselves only with 2: restarting cannot help.
        return f"program {name} cannot run: it exited with status 2 (bad configuration or schema), see its error above"
    return None


def finished_setup(payload: dict) -> bool:
    return payload.get("processname") == "setup" and payload.get("expected") == "1"


def supervisor_class(data_dir: str | Path, reasons: list[str], before_loop=None):
    """supervisord's Supervisor, watching its own programs' state changes; why it stopped goes to `reasons`.

    `before_loop(supervisor)`, when given, runs once its programs are known, before its loop starts any.
    """
    from supervisor import events
    from supervisor.states import SupervisorStates
    from supervisor.supervisord import Supervisor

    class Watched(Supervisor):
        def __init__(self, options):
            super().__init__(options)
            self.finished: list[str] = []  # finished groups to take out of the table

        def runforever(self):
            # supervisord clears every subscription when it (re)starts its run, before this.
            events.subscribe(events.ProcessStateFatalEvent, self.watch)
            events.subscribe(events.ProcessStateExitedEvent, self.watch)
            if before_loop is not None:
                before_loop(self)
            super().runforever()

        def watch(self, event) -> None:
            # Called from inside the process's state change: nothing here may raise into supervisord.
            try:
                name = events.getEventNameByType(type(event))
                payload = get_headers(event.payload())
                reason = verdict(name, payload, data_dir)
                if name == "PROCESS_STATE_EXITED" and finished_setup(payload):
                    layout.setup_done(data_dir).touch()
                    self.finished.append(payload.get("groupname") or payload["processname"])
            except Exception as exc:
                reason = f"the watchdog could not judge a {type(event).__name__}: {exc}"
            if reason:
                print(f"watchdog: {reason}; stopping the instance", file=sys.stdout, flush=True)
                reasons.append(reason)
                self.options.mood = SupervisorStates.SHUTDOWN

        def reap(self, once=False, recursionguard=0):
            super().reap(once, recursionguard)
            # Out of the table once its state change is over, which `finish` is still in when it tells us.
            while self.finished:
                group = self.finished.pop()
                if group in self.process_groups and not self.remove_process_group(group):
                    print(f"watchdog: {group} is still listed (not stopped yet)", file=sys.stdout, flush=True)

    return Watched
