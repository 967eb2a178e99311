"""The `postgres` program: the embedded PostgreSQL, for evaluation and `make run`.

Before it starts the server it clears what a crashed instance may have left:
a stale postmaster.pid (its pid gone, or now another process's) is removed, a
server still running on the data folder without its supervisord is stopped;
anything else holding the data folder or the port is named, in one line that
the watchdog repeats as the instance's last.
"""

import errno
import os
import pwd
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

import psutil

from server.core import embedded_pg, layout
from server.core.errors import AyonError, run_main
from server.core.lifetime import hold
from server.core.program import start


def main() -> int:
    values, log = start("postgres", spool=False)
    # The lifeline holds for this parent (supervisord); a change of user below drops it.
    parent = os.getppid()
    log.warning(
        "embedded PostgreSQL is meant for evaluation only: set AYON_POSTGRES_URL to use a managed PostgreSQL"
    )
    error = layout.error_file(values.data_dir, "postgres")
    error.unlink(missing_ok=True)
    try:
        argv = prepare(values, log)
    except AyonError as exc:
        if error.parent.is_dir():
            error.write_text(str(exc))
        raise
    user = embedded_pg.run_as()
    log.info("starting PostgreSQL on 127.0.0.1:%d", values.embedded_pg_port)
    sys.stdout.flush()
    if user:
        entry = pwd.getpwnam(user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    # SIGQUIT is PostgreSQL's immediate shutdown: its backends end with it.
    hold(signal.SIGQUIT, parent)
    os.execv(argv[0], argv)
    return 0  # not reached


def prepare(values, log) -> list[str]:
    """A closed cluster ready to start, nothing in its way; returns the server's command."""
    datadir = layout.postgres_dir(values.data_dir)
    datadir.parent.mkdir(parents=True, exist_ok=True)
    superuser_password = embedded_pg.password(values.data_dir, embedded_pg.SUPERUSER)
    make_way(datadir, values.embedded_pg_port, say=log.info)
    if embedded_pg.initdb(datadir, superuser_password, say=log.info):
        log.info("initialized a new cluster in %s", datadir)
    embedded_pg.close_access(datadir, superuser_password)
    return embedded_pg.server_command(
        datadir, values.embedded_pg_port,
        ("-c", f"log_line_prefix=%m [{values.instance_id}/postgres] ", "-c", "log_min_messages=warning"),
    )


def make_way(datadir: Path, port: int, say: Callable[[str], None]) -> None:
    """Clear what a crashed instance left (a stale postmaster.pid, an orphaned server), or say what holds the data or port."""
    datadir = Path(datadir)
    pidfile = datadir / "postmaster.pid"
    pid = _pid_in(pidfile)
    if pid:
        holder = _postmaster_on(datadir, pid)
        if holder is None:
            pidfile.unlink(missing_ok=True)
            say(f"removed the stale {pidfile} (pid {pid} is no PostgreSQL of this data folder)")
        elif _orphaned(holder):
            say(f"stopping PostgreSQL pid {pid}, left running on {datadir} by an instance that ended")
            _stop(holder)
            pidfile.unlink(missing_ok=True)
        else:
            raise AyonError(f"{datadir} is in use by PostgreSQL pid {pid} of a running instance "
                            f"(its parent: {_describe(holder.parent())}): stop that instance first")
    holder = _listener_on(port)
    if holder:
        raise AyonError(f"port 127.0.0.1:{port} (AYON_EMBEDDED_PG_PORT) is in use by {holder}: "
                        "stop it or choose another port")


def _pid_in(pidfile: Path) -> int | None:
    try:
        first = pidfile.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(first) if first.isdigit() else None


def _postmaster_on(datadir: Path, pid: int) -> psutil.Process | None:
    """The live PostgreSQL server whose data folder is `datadir`, if `pid` is one."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or Path(proc.exe()).name != "postgres":
            return None
        return proc if Path(proc.cwd()).resolve() == datadir.resolve() else None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        raise AyonError(f"{datadir}/postmaster.pid names pid {pid}, a process of another user: stop it if it is a "
                        "PostgreSQL on this data folder, or remove the file if it is not") from None


def _orphaned(proc: psutil.Process) -> bool:
    """No supervisord owns it any more: its instance crashed (or it was started by hand)."""
    try:
        parent = proc.parent()
        return parent is None or parent.pid == 1 or not is_supervisord(parent.cmdline())
    except psutil.Error:
        return True


def is_supervisord(cmdline: list[str]) -> bool:
    """`python -m procs.supervisord ...`, or a plain `supervisord`."""
    return any(arg == "procs.supervisord" or Path(arg).name == "supervisord" for arg in cmdline[:3])


def _stop(proc: psutil.Process) -> None:
    # Fast shutdown first; then immediate; then the end.
    for signum, wait in ((signal.SIGINT, 20), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
        try:
            proc.send_signal(signum)
            proc.wait(wait)
            return
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            continue
    raise AyonError(f"PostgreSQL pid {proc.pid} does not stop")


def _listener_on(port: int) -> str | None:
    """Who listens on the port PostgreSQL needs (as the kernel sees it), or None when it is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None  # PostgreSQL will say what is wrong
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return _describe(psutil.Process(conn.pid))
    except psutil.Error:
        pass
    return "a process this user cannot see"


def _describe(proc: psutil.Process | None) -> str:
    if proc is None:
        return "none"
    try:
        return f"pid {proc.pid} ({' '.join(proc.cmdline())[:160] or proc.name()})"
    except psutil.Error:
        return f"pid {proc.pid}"


if __name__ == "__main__":
    run_main(main)
