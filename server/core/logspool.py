"""The durable local hand-off of log records to the log collector.

Every process appends its records to its own files under AYON_DATA_DIR/spool/,
one writer per file. Each record is one line already encoded in PostgreSQL's
COPY text format for the `logs` table, written with a single os.write on an
O_APPEND descriptor, so a line is whole or absent and the collector can COPY
the bytes as they are. A writer holds a shared flock on its current file: a
file nobody holds is finished (its writer rotated away or died), which is how
the collector knows it may delete it once consumed.

Logging never blocks or crashes a producer: every spool error is swallowed and
counted (`SpoolHandler.errors`); the record still reaches stdout.
"""

import datetime
import fcntl
import functools
import json
import logging
import os
import secrets
import sys
import time
import traceback

from server.core import layout

# Attributes every LogRecord has; anything else on a record is a structured extra.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def extras_of(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


SUFFIX = ".copy"
COLUMNS = ("ts", "level", "instance", "program", "pid", "logger", "message", "extras", "exc")
COPY_SQL = f"COPY logs ({', '.join(COLUMNS)}) FROM STDIN"
MAX_TEXT = 64 * 1024  # characters of a message or traceback kept; bounds a line's size
RETRY_OPEN = 5.0  # seconds between attempts to open a file after a failure

# COPY text format: backslash, newline, carriage return and tab are escaped; NUL cannot be stored.
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": ""})
_UTC = datetime.timezone.utc


def spool_dir(data_dir: str) -> str:
    return str(layout.spool_dir(data_dir))


def file_size_for(cap: int) -> int:
    """Rotation threshold: small against the cap, so the cap drops whole old files."""
    return max(64 * 1024, min(16 * 1024 * 1024, cap // 16))


def field(value) -> str:
    """One COPY text field; None is NULL."""
    if value is None:
        return "\\N"
    return str(value).translate(_ESCAPES)


# Level, instance, program and logger names repeat endlessly: escape each once.
_name = functools.lru_cache(maxsize=4096)(field)


def _extras_json(extras: dict) -> str:
    try:
        text = json.dumps(extras, default=str, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps({"unserializable": repr(extras)[:MAX_TEXT]}, ensure_ascii=False)
    # jsonb refuses the NUL escape.
    return text.replace("\\u0000", "\\ufffd")


def encode(ts: float, level: str, instance: str, program: str, pid: int | None, logger: str | None,
           message: str, extras: dict | None = None, exc: str | None = None) -> bytes:
    """One record as one COPY text line of the `logs` table, newline included."""
    stamp = datetime.datetime.fromtimestamp(ts, _UTC).isoformat()
    line = "\t".join((
        stamp, _name(level), _name(instance), _name(program), "\\N" if pid is None else str(int(pid)),
        "\\N" if logger is None else _name(logger),
        field(message[:MAX_TEXT]), field(_extras_json(extras)) if extras else "\\N",
        field(exc[:MAX_TEXT]) if exc else "\\N",
    ))
    # Lone surrogates (undecodable bytes smuggled into str) become '?', never an error.
    return (line + "\n").encode("utf-8", "replace")


def record_line(record: logging.LogRecord, instance: str, program: str) -> bytes:
    """A LogRecord as one spool line."""
    try:
        message = record.getMessage()
    except Exception:
        message = f"{record.msg!r} % {record.args!r}"
    exc = None
    if record.exc_info:
        exc = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    elif record.exc_text:
        exc = record.exc_text
    if record.stack_info:
        exc = (exc + "\n" if exc else "") + record.stack_info
    return encode(record.created, record.levelname, instance, program, record.process, record.name,
                  message, extras_of(record) or None, exc)


def is_free(path: str) -> bool:
    """True when no writer holds the file (it rotated away or died); False if held or gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops our lock too


class SpoolHandler(logging.Handler):
    """Appends every record to this process's current spool file; never raises."""

    def __init__(self, directory: str, instance: str, program: str, max_file: int):
        super().__init__()
        self.directory, self.instance, self.program, self.max_file = directory, instance, program, max_file
        self.errors = 0
        self.fd: int | None = None
        self.pid = os.getpid()
        self.token = secrets.token_hex(3)
        self.seq = 0
        self.retry_at = 0.0

    def _open(self) -> None:
        # Created under a hidden name, locked, then linked into view: the collector never
        # sees a file of ours before we hold it, and the link fails rather than reuse a name.
        os.makedirs(self.directory, exist_ok=True)
        while True:
            self.seq += 1
            name = f"{self.program}-{self.pid}-{self.token}-{self.seq:06d}{SUFFIX}"
            hidden = os.path.join(self.directory, f".{name}.new")
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                os.link(hidden, os.path.join(self.directory, name))
            except FileExistsError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            finally:
                os.unlink(hidden)
            self.fd = fd
            return

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record_line(record, self.instance, self.program)
            if os.getpid() != self.pid:
                # A forked child (a gunicorn worker): the inherited file is the parent's.
                self.pid, self.token, self.seq = os.getpid(), secrets.token_hex(3), 0
                self._close()
            if self.fd is not None:
                stat = os.fstat(self.fd)
                # Deleted under us (the cap dropped it) or full: move on to a new file.
                if stat.st_nlink == 0 or stat.st_size >= self.max_file:
                    self._close()
            if self.fd is None:
                if time.monotonic() < self.retry_at:
                    self.errors += 1
                    return
                self._open()
            os.write(self.fd, line)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1:
                print(f"log spool unavailable, records only go to stdout: {exc}", file=sys.stderr, flush=True)
            self.retry_at = time.monotonic() + RETRY_OPEN
            try:
                self._close()
            except OSError:
                pass

    def close(self) -> None:
        with self.lock:
            self._close()
        super().close()


def attach_spool(root: logging.Logger, settings, program: str) -> SpoolHandler:
    """Add this process's spool writer to `root`."""
    handler = SpoolHandler(spool_dir(settings.data_dir), settings.instance_id, program,
                           file_size_for(settings.log_spool_max))
    root.addHandler(handler)
    return handler
