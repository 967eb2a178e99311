"""One instance per data folder and per supervisord config: flocks that live as long as supervisord.

A start takes its data folder's lock before it writes anything, and its
config file's before it writes that (supervision/prepare.py `prepare`); a
second start on either refuses at once, naming the running instance, and
writes nothing. A flock belongs to the file, not to its path: a relative
spelling, a symlink or a bind mount of the same folder meets the same lock,
and removing the pid file or the socket does not release it. The kernel
drops it when supervisord ends however it ends (kill -9 included), so a
crash leaves nothing stale behind.

Only supervisord holds the locks, not its programs: os.open makes the
descriptors close-on-exec, and supervisord closes every descriptor above 2
in each child before the child execs or becomes a preloaded program. So the
next start is not kept waiting by a program that outlives a killed
supervisord for a moment (its lifeline ends it; an embedded PostgreSQL left
running is stopped by the next start), and `python -m maintenance` or setup
run alone beside an instance take no lock at all.
"""

import fcntl
import os
import re
from pathlib import Path
from typing import Callable

from server.core import layout
from server.core.errors import ConfigError

_HELD: list[int] = []  # never closed: the locks end with this process


def _lock(path: str | Path) -> int | None:
    """An exclusive flock on `path` (created 0600 when missing), kept open; None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            # A refused start removes the lock file it created: then the path names another file.
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _read(path: str | Path) -> str:
    try:
        with open(path, errors="replace") as held:
            return held.read(4096)
    except OSError:
        return ""


def holder(data_dir: str | Path) -> str | None:
    """The instance running on this data folder, as refusals name it; None when none is.

    Takes nothing and writes nothing: a shared lock for a moment, which only a start at the
    very same moment would notice (and refuse).
    """
    path = layout.lock_file(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _named(path)
    finally:
        os.close(fd)
    return None


def _named(path: Path) -> str:
    """'test' (supervisord pid 123), from what the running instance wrote into its lock file."""
    pid, _, instance = _read(path).strip().partition(" ")
    if pid.isdigit() and instance:
        return f"{instance!r} (supervisord pid {pid})"
    return f"(lock file {path})"


class DataFolderLock:
    """The data folder's lock, held; `give_up` when the start is refused after all removes what taking it made."""

    def __init__(self, data_dir: str, instance_id: str, check_folder: Callable[[str], None] | None = None):
        self.path = layout.lock_file(data_dir)
        self.made: list[str] = []
        missing = data_dir
        try:
            while not os.path.exists(missing):
                self.made.append(missing)
                missing = os.path.dirname(missing)
            for folder in reversed(self.made):
                os.mkdir(folder)
            self.created = not self.path.exists()
            self.fd = _lock(self.path)
        except OSError as exc:
            self._undo()
            raise self._unusable(data_dir, exc, check_folder) from None
        if self.fd is None:
            raise ConfigError(f"AYON_DATA_DIR={data_dir!r}: in use by the running instance {_named(self.path)}; "
                              "stop it first, or give this instance a data folder of its own")
        # Written only once locked: a refused start never touches the file.
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {instance_id}\n".encode(), 0)
        _HELD.append(self.fd)

    @staticmethod
    def _unusable(data_dir: str, exc: OSError, check_folder: Callable[[str], None] | None) -> ConfigError:
        try:
            if check_folder is not None:
                check_folder(data_dir)  # says what is wrong with the folder, as verify() would
        except ValueError as why:
            return ConfigError(f"AYON_DATA_DIR={data_dir!r}: {why}")
        return ConfigError(f"AYON_DATA_DIR={data_dir!r}: cannot lock {layout.lock_file(data_dir)} "
                           f"({exc.strerror or exc})")

    def give_up(self) -> None:
        """Release the lock; remove the lock file and folders only this start created."""
        if self.created:
            self.path.unlink(missing_ok=True)
        if self.fd in _HELD:
            _HELD.remove(self.fd)
            os.close(self.fd)
        self._undo()

    def _undo(self) -> None:
        for folder in self.made:
            try:
                os.rmdir(folder)
            except OSError:
                pass


def lock_conf(conf: str | Path) -> None:
    """Lock the supervisord config file this instance is about to write in place; ConfigError when another has it."""
    Path(conf).parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(conf)
    if fd is None:
        # The config names the pid file in its instance's data folder (layout.run_dir).
        found = re.search(r"^pidfile=(\S+)$", _read(conf), re.MULTILINE)
        data_dir = Path(found[1]).parent.parent if found else None
        name = f"instance {_named(layout.lock_file(data_dir))} on {data_dir}" if data_dir else "instance"
        raise ConfigError(f"AYON_SUPERVISOR_CONF={str(conf)!r}: the config file of the running {name}; "
                          "give each instance a file of its own")
    _HELD.append(fd)
