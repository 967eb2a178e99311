"""The supervisord config generator: roles in, program sections out.

`python -m procs.supervisor` prints the config the current environment would
produce (credentials masked); `--programs` lists the program names.
"""

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import lifeline
from server import settings as settings_mod
from server.errors import ConfigError, run_main

ROOT = Path(__file__).resolve().parent.parent
# gunicorn's graceful_timeout is 20 s (server/gunicorn_conf.py); supervisord must wait longer.
SERVER_STOPWAIT = 30
# gunicorn retries a busy address for 5 s before exiting: a server up longer than that has bound.
GUNICORN_BIND_RETRY = 5
# Each program's output file (for `supervisorctl tail`): capped and rotated once.
LOG_MAX_BYTES = "5MB"
LOG_BACKUPS = 1
# The secrets a program may be given, by setting name; each program names those it needs.
DATABASE = ("AYON_POSTGRES_URL",)
DATABASE_AND_TOKEN = ("AYON_POSTGRES_URL", "AYON_ADMIN_TOKEN")
# supervisord's event listeners, beside the programs.
LISTENERS = ("watchdog", "console")


@dataclass(frozen=True)
class Program:
    name: str
    module: str  # run as `python -m <module> <args>`
    args: tuple[str, ...] = ()
    priority: int = 100
    oneshot: bool = False
    startsecs: int = 2
    stopsignal: str = "TERM"
    stopwaitsecs: int = 15
    # Sent by the kernel when supervisord dies: a quick end, well within 5 s.
    deathsignal: str = "TERM"
    secrets: tuple[str, ...] = DATABASE


def programs(values: settings_mod.Settings) -> list[Program]:
    """The programs for these settings, in start order (the DESIGN table)."""
    found = []
    long_running = values.run_server or values.run_maintenance
    if values.embedded_postgres:
        # SIGQUIT is PostgreSQL's immediate shutdown: backends end at once, the next start recovers.
        found.append(Program("postgres", "procs.postgres", priority=10, startsecs=3, stopsignal="INT", stopwaitsecs=30,
                             deathsignal="QUIT", secrets=()))
    if values.run_setup and long_running:
        found.append(Program("setup", "procs.setup", priority=20, oneshot=True, startsecs=0, stopwaitsecs=10,
                             secrets=DATABASE_AND_TOKEN))
    if values.run_server:
        # SIGINT is gunicorn's quick shutdown: its workers get SIGQUIT instead of a 20 s grace.
        found.append(Program("server", "gunicorn", ("-c", str(ROOT / "server" / "gunicorn_conf.py")),
                             priority=30, startsecs=GUNICORN_BIND_RETRY + 1, stopwaitsecs=SERVER_STOPWAIT,
                             deathsignal="INT", secrets=DATABASE_AND_TOKEN))
        found.append(Program("webactions", "procs.webactions", priority=40))
        found.append(Program("installer", "procs.installer", priority=40))
    if long_running:
        found.append(Program("logcollector", "procs.logcollector", priority=25))
    if values.run_maintenance:
        found.append(Program("maintenance", "maintenance", ("--daemon",), priority=50))
    return sorted(found, key=lambda p: p.priority)


def check_roles(values: settings_mod.Settings) -> None:
    """Refuse settings that can start nothing useful."""
    if not values.roles:
        raise ConfigError(
            "no role enabled: set at least one of AYON_RUN_SERVER, AYON_RUN_SETUP, AYON_RUN_MAINTENANCE to true"
        )
    if values.roles == ["setup"] and values.embedded_postgres:
        raise ConfigError(
            "AYON_RUN_SETUP alone needs AYON_POSTGRES_URL: the embedded PostgreSQL runs only beside a long-running role"
        )


def run_dir(values: settings_mod.Settings) -> Path:
    return Path(values.data_dir) / "run"


def log_dir(values: settings_mod.Settings) -> Path:
    return Path(values.data_dir) / "logs"


def secret_names() -> list[str]:
    """The settings supervisord must not pass to every program (from the declaration)."""
    return [s.name for s in settings_mod.SETTINGS if s.secret]


def secret_values(values: settings_mod.Settings, names: tuple[str, ...]) -> dict[str, str]:
    """The set ones among `names`, as the program's environment would carry them."""
    found = {}
    for name in names:
        key = settings_mod.key_of(name)
        value = values.get(key + "_raw", values.get(key))  # AYON_POSTGRES_URL: the URL as set, not the embedded one
        if value:
            found[name] = str(value)
    return found


def _section(title: str, entries: dict) -> str:
    lines = [f"[{title}]"] + [f"{key}={value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _env(extra: dict, program_secrets: dict | None = None, mask: bool = False) -> str:
    pairs = {"PYTHONUNBUFFERED": "1", **extra}
    if program_secrets:
        # Any character can be in a secret; the config carries it encoded, procs.lifeline decodes it.
        pairs[lifeline.SECRETS_VAR] = "***" if mask else lifeline.encode(program_secrets)
    return ",".join(f'{k}="{v}"' for k, v in pairs.items())


def _command(python: str, deathsignal: str, *argv: str) -> str:
    return " ".join([python, "-m", "procs.lifeline", deathsignal, python, *argv])


def render(values: settings_mod.Settings, password: str | None = None, python: str = sys.executable,
           mask: bool = False) -> str:
    """The whole supervisord config text for these settings (`mask`: secrets shown as ***)."""
    check_roles(values)
    rundir = run_dir(values)
    password = "***" if mask else password or secrets.token_urlsafe(24)
    sock = rundir / "supervisor.sock"
    main = {
        "nodaemon": "true",
        # With nodaemon, supervisord already echoes its own log to stdout.
        "logfile": "/dev/null",
        "logfile_maxbytes": 0,
        "loglevel": "info",
        "pidfile": rundir / "supervisord.pid",
        "identifier": f"ayon-{values.instance_id}",
    }
    if os.geteuid() == 0:
        main["user"] = "root"
    parts = [
        "; Generated by procs/supervisor.py from the AYON_* settings; do not edit.\n",
        _section("supervisord", main),
        _section("unix_http_server", {"file": sock, "chmod": "0700", "username": "ayon", "password": password}),
        _section("supervisorctl", {"serverurl": f"unix://{sock}", "username": "ayon", "password": password}),
        _section("rpcinterface:supervisor",
                 {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}),
    ]
    for program in programs(values):
        entries = _program_entries(program, python, log_dir(values))
        entries["environment"] = _env({"AYON_PROGRAM": program.name}, secret_values(values, program.secrets), mask)
        parts.append(_section(f"program:{program.name}", entries))
    parts.append(_section("eventlistener:watchdog", _listener({
        "command": _command(python, "TERM", "-m", "procs.watchdog", str(rundir)),
        "events": "PROCESS_STATE_FATAL,PROCESS_STATE_EXITED",
        "buffer_size": 64,
        # It removes the finished setup from the process table through the RPC socket.
        "environment": _env({}, {"SUPERVISOR_USERNAME": "ayon", "SUPERVISOR_PASSWORD": password}, mask),
    })))
    parts.append(_section("eventlistener:console", _listener({
        "command": _command(python, "TERM", "-m", "procs.console", values.instance_id, values.log_format),
        "events": "PROCESS_LOG,PROCESS_STATE,TICK_5",
        # Output waits here while the listener writes; a burst beyond it loses its oldest chunks.
        "buffer_size": 4096,
        "environment": _env({}),
    })))
    return "\n".join(parts)


def _listener(entries: dict) -> dict:
    # An event listener's stdout is the protocol channel: only its stderr is shown, on supervisord's stdout.
    entries.update(directory=ROOT, priority=1, autostart="true", autorestart="true",
                   stdout_logfile="NONE", stderr_logfile="/dev/stdout", stderr_logfile_maxbytes=0)
    return entries


def _program_entries(program: Program, python: str, logs: Path) -> dict:
    return {
        "command": _command(python, program.deathsignal, "-m", program.module, *program.args),
        "directory": ROOT,
        "priority": program.priority,
        "autostart": "true",
        # Exit 2 means restarting cannot help (bad configuration, newer schema): the
        # daemon is not restarted and the watchdog ends the instance.
        "autorestart": "false" if program.oneshot else "unexpected",
        "startsecs": program.startsecs,
        "startretries": 0 if program.oneshot else 3,
        "exitcodes": 0 if program.oneshot else "0,2",
        "stopsignal": program.stopsignal,
        "stopwaitsecs": program.stopwaitsecs,
        "stopasgroup": "true",
        "killasgroup": "true",
        # Its own file for `supervisorctl tail`, and events for the console listener.
        "redirect_stderr": "true",
        "stdout_logfile": logs / f"{program.name}.log",
        "stdout_logfile_maxbytes": LOG_MAX_BYTES,
        "stdout_logfile_backups": LOG_BACKUPS,
        "stdout_events_enabled": "true",
    }


def write(values: settings_mod.Settings, path: str | Path) -> Path:
    """Write the config (mode 0600) atomically; create the private run folder."""
    rundir = run_dir(values)
    rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(rundir, 0o700)
    log_dir(values).mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(render(values))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--programs"]):
        print("usage: python -m procs.supervisor [--programs]", file=sys.stderr)
        return 2
    values = settings_mod.load()
    if args == ["--programs"]:
        check_roles(values)
        if values.roles == ["setup"]:
            print("setup")  # runs alone in the foreground, no supervisord
        for program in programs(values):
            print(program.name)
        return 0
    sys.stdout.write(render(values, mask=True))
    return 0


if __name__ == "__main__":
    run_main(main)
