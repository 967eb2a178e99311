"""The data folder (AYON_DATA_DIR): every sub-path named once, and the one way to wait for a folder's lock."""

import fcntl
import threading
from pathlib import Path
from typing import Callable

from server.core.retry import GaveUp, NotYet, Retry

# Addons and dependency packages, installed by each instance's installer and served from there.
PACKAGE_FOLDERS = {"addon": "addons", "dependency_package": "dependency_packages"}


def lock_file(data_dir: str | Path) -> Path:
    """Locked by the running instance's supervisord (server/core/instancelock.py); its pid and instance id."""
    return Path(data_dir) / "instance.lock"


def supervisor_conf(data_dir: str | Path) -> Path:
    """`make run`'s supervisord config for a data folder other than its own (which keeps .run/supervisord.conf)."""
    return Path(data_dir) / "supervisord.conf"


def run_dir(data_dir: str | Path) -> Path:
    """supervisord's socket and pid file, programs' error lines, the metrics of the web workers (0700)."""
    return Path(data_dir) / "run"


def error_file(data_dir: str | Path, program: str) -> Path:
    """Where `program` leaves the one line saying why it cannot run; the watchdog repeats it."""
    return run_dir(data_dir) / f"{program}.error"


def error_files(data_dir: str | Path) -> list[Path]:
    """Every program's error line left in the run folder."""
    return sorted(run_dir(data_dir).glob("*.error"))


def setup_done(data_dir: str | Path) -> Path:
    """Touched by the watchdog when setup exited 0 (and left the process table); read by the health check."""
    return run_dir(data_dir) / "setup.done"


def metrics_dir(data_dir: str | Path) -> Path:
    return run_dir(data_dir) / "metrics"


def logs_dir(data_dir: str | Path) -> Path:
    """Each program's output, for `supervisorctl tail`."""
    return Path(data_dir) / "logs"


def spool_dir(data_dir: str | Path) -> Path:
    """Log records on their way to the log collector."""
    return Path(data_dir) / "spool"


def collector_lock(data_dir: str | Path) -> Path:
    """Held by the one log collector of a spool (or a one-shot run delivering its own records)."""
    return spool_dir(data_dir) / ".collector.lock"


def secrets_dir(data_dir: str | Path) -> Path:
    """The embedded PostgreSQL's password files (0700, files 0600)."""
    return Path(data_dir) / "secrets"


def postgres_dir(data_dir: str | Path) -> Path:
    """The embedded PostgreSQL's cluster."""
    return Path(data_dir) / "postgres"


def package_dir(data_dir: str | Path, kind: str, name: str = "", version: str = "") -> Path:
    """Where a package of this kind is installed (the kind's folder without name and version)."""
    folder = Path(data_dir) / PACKAGE_FOLDERS[kind]
    return folder / name / version if name else folder


def staging_dir(data_dir: str | Path) -> Path:
    """Where the installer unpacks before renaming into place."""
    return Path(data_dir) / ".installing"


def restore_staging_dir(data_dir: str | Path) -> Path:
    """Where `python -m backup --restore` unpacks and checks an archive before anything is put in place."""
    return Path(data_dir) / ".restoring"


def installer_lock(data_dir: str | Path) -> Path:
    """Held by the one installer of a data folder."""
    return Path(data_dir) / ".installer.lock"


def wait_for_lock(fd: int, stop: threading.Event, say: Callable[[], None], every: float = 0.5) -> bool:
    """Take an exclusive flock on `fd`, saying once that another process holds it; False when stopped first."""
    said = []

    def take() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                say()
                said.append(True)
            raise NotYet("another process holds the lock") from None

    try:  # a steady poll, however long the holder keeps it
        Retry("the lock", first=every, factor=1.0, cap=every, jitter=0.0, stop=stop).call(take)
    except GaveUp:
        return False
    return True
