"""The roster: every program of an instance, declared once, one line each (the programs are in procs/).

The supervisord config generator, `--programs`, the health check, the
README's program table and the tests read this list. A new background
program is a module (a `server.core.program.Daemon` with three lines of
`__main__`) and one line here.
"""

from dataclasses import dataclass
from pathlib import Path

from server.core.settings import SERVER_GRACE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
# The server drains for AYON_DRAIN_SECONDS, then gives requests in flight gunicorn's graceful timeout
# (server/drain.py): supervisord waits for both, and this much more.
SERVER_STOPWAIT = SERVER_GRACE_SECONDS + 5
# gunicorn retries a busy address for 5 s before exiting: a server up longer than that has bound.
GUNICORN_BIND_RETRY = 5

# The secrets a program may be given, by setting name; each program names those it needs.
DATABASE = ("AYON_POSTGRES_URL", "AYON_POSTGRES_SESSION_URL")
DATABASE_AND_TOKEN = ("AYON_POSTGRES_URL", "AYON_POSTGRES_SESSION_URL", "AYON_ADMIN_TOKEN")

# When a program is part of an instance, by the settings' roles; the text is the README's.
WHEN = {
    "embedded": ("`AYON_POSTGRES_URL` is unset", lambda v: v.embedded_postgres),
    "setup beside": ("`AYON_RUN_SETUP` with another role", lambda v: v.run_setup and (v.run_server or v.run_maintenance)),
    "server": ("`AYON_RUN_SERVER`", lambda v: v.run_server),
    "long-running": ("any long-running role", lambda v: v.run_server or v.run_maintenance),
    "maintenance": ("`AYON_RUN_MAINTENANCE`", lambda v: v.run_maintenance),
}


@dataclass(frozen=True)
class Program:
    name: str
    module: str  # run as `python -m <module> <args>`
    when: str  # a key of WHEN
    help: str
    args: tuple[str, ...] = ()
    priority: int = 40
    oneshot: bool = False
    startsecs: int = 2
    stopsignal: str = "TERM"
    stopwaitsecs: int = 15
    # Added to stopwaitsecs: the program serves on for AYON_DRAIN_SECONDS after its stop signal.
    drains: bool = False
    # The stop signal goes to the whole process group, or to the program alone when it stops its
    # own children in its own time (gunicorn's workers must serve through the drain).
    stopasgroup: bool = True
    # Sent by the kernel when supervisord dies: a quick end, well within 5 s.
    deathsignal: str = "TERM"
    secrets: tuple[str, ...] = DATABASE

    def __post_init__(self):
        if self.when not in WHEN:
            raise ValueError(f"program {self.name}: when={self.when!r} is not one of {', '.join(WHEN)}")

    def stopwait(self, values) -> int:
        """supervisord's stopwaitsecs for these settings."""
        return self.stopwaitsecs + (values.drain_seconds if self.drains else 0)


PROGRAMS = [
    # SIGQUIT is PostgreSQL's immediate shutdown: backends end at once, the next start recovers.
    Program("postgres", "procs.postgres", "embedded", "embedded PostgreSQL for evaluation and `make run`; starts first",
            priority=10, startsecs=3, stopsignal="INT", stopwaitsecs=30, deathsignal="QUIT", secrets=()),
    Program("setup", "procs.setup", "setup beside", "one-shot: creates the database, migrates, seeds the configuration; "
            "once it exits 0 it leaves the process table (so `supervisorctl status` exits 0 on a healthy instance); "
            "its failure stops the instance with a non-zero code", priority=20, oneshot=True,
            startsecs=0, stopwaitsecs=10, secrets=DATABASE_AND_TOKEN),
    Program("logcollector", "procs.logcollector", "long-running",
            "moves every program's log records from the local spool into PostgreSQL", priority=25),
    # SIGINT is gunicorn's quick shutdown: its workers get SIGQUIT instead of a 20 s grace.
    Program("server", "gunicorn", "server", "gunicorn (asgi worker) + falcon: the API and the dashboard",
            args=("-c", str(ROOT / "server" / "gunicorn_conf.py")), priority=30, startsecs=GUNICORN_BIND_RETRY + 1,
            stopwaitsecs=SERVER_STOPWAIT, drains=True, stopasgroup=False, deathsignal="INT",
            secrets=DATABASE_AND_TOKEN),
    Program("webactions", "procs.webactions", "server",
            "marks timed-out webactions failed, every `webactions.check_interval` s"),
    Program("installer", "procs.installer", "server",
            "installs addons and dependency packages onto this instance's disk"),
    Program("maintenance", "maintenance", "maintenance", "`python -m maintenance --daemon`", args=("--daemon",),
            priority=50),
]


def programs(values) -> list[Program]:
    """The programs for these settings, in start order."""
    return sorted((p for p in PROGRAMS if WHEN[p.when][1](values)), key=lambda p: p.priority)


def markdown_table() -> str:
    """The README's program table."""
    lines = ["| program | present when | what it is |", "|---|---|---|"]
    lines += [f"| `{p.name}` | {WHEN[p.when][0]} | {p.help} |" for p in PROGRAMS]
    return "\n".join(lines) + "\n"
