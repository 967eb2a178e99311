"""One logging setup for every process: stdout lines carrying instance and program."""

import asyncio
import atexit
import json
import logging
import os
import sys
import time
import traceback
import weakref

from server.core import events
from server.core.errors import printable
from server.core.times import rfc3339_ms
from server.core.logspool import attach_spool, extras_of


def json_line(ts: str, level: str, instance: str, program: str, logger: str, message: str, pid: int | None = None,
              extras: dict | None = None, exc: str | None = None) -> str:
    """The one JSON log line (AYON_LOG_FORMAT=json) of every writer: records, access lines, programs' output."""
    doc = {"ts": ts, "level": level, "instance": instance, "program": program}
    if pid is not None:
        doc["pid"] = pid
    doc["logger"], doc["message"] = logger, message
    if extras:
        doc["extras"] = extras
    if exc:
        doc["exc"] = exc
    return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, instance: str, program: str):
        super().__init__()
        self.prefix = f"{instance}/{program}"

    def format(self, record: logging.LogRecord) -> str:
        # What a message quotes may come from a client: one record is one line, whatever it holds.
        line = (f"{rfc3339_ms(record.created)} {record.levelname:<7} [{self.prefix}] {record.name}: "
                f"{printable(record.getMessage())}")
        extras = extras_of(record)
        if extras:
            line += " " + " ".join(f"{printable(str(k))}={printable(str(v))}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str, program: str):
        super().__init__()
        self.instance, self.program = instance, program

    def format(self, record: logging.LogRecord) -> str:
        exc = "".join(traceback.format_exception(*record.exc_info)).rstrip() if record.exc_info else None
        return json_line(rfc3339_ms(record.created), record.levelname, self.instance, self.program, record.name,
                         printable(record.getMessage()), record.process, extras_of(record), exc)


# Flushed at exit: the last lines, when a worker ends before their flush is due.
_ACCESS_LOGS: "weakref.WeakSet[AccessLog]" = weakref.WeakSet()


def _flush_access_logs() -> None:
    for access in list(_ACCESS_LOGS):
        access.flush()


atexit.register(_flush_access_logs)


class AccessLog:
    """One stdout line per HTTP request, in the process's log format, never spooled.

    Written directly rather than through logging (and instead of gunicorn's
    access log, which cost 40% of the throughput of a constant route):
    access lines are for the container's log, not the logs table. On an event
    loop, lines are written together, FLUSH_SECONDS after the first of them
    or as soon as FLUSH_LINES wait (as nginx's `access_log ... buffer= flush=`):
    one write per request was a tenth of a cheap request's cost. A worker that
    ends normally writes what is left (atexit).
    """

    FLUSH_SECONDS = 0.1
    FLUSH_LINES = 256

    def __init__(self, settings, program: str = "server", stream=None):
        self.stream = stream or sys.stdout
        self._lines: list[tuple] = []  # (time, client, method, target, status, ms) per request
        _ACCESS_LOGS.add(self)
        self.json = settings.log_format == "json"
        self.instance, self.program = settings.instance_id, program
        self.prefix = f"INFO    [{settings.instance_id}/{program}] access: "
        self._second, self._stamp = -1, ""

    def _stamp_of(self, now: float) -> str:
        # The timestamp's text up to the second changes once a second: render it once.
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, rfc3339_ms(second)[:19]
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _json_line(self, now: float, client: str, method: str, target: str, status: int, ms: float) -> str:
        return json_line(self._stamp_of(now), "INFO", self.instance, self.program, "access",
                         f'{client} "{method} {target}" {status} {ms:.1f}ms', os.getpid()) + "\n"

    def _text(self, noted: list[tuple]) -> str:
        if self.json:
            return "".join([self._json_line(*request) for request in noted])
        stamp_of, prefix = self._stamp_of, self.prefix
        return "".join([f'{stamp_of(now)} {prefix}{client} "{method} {target}" {status} {ms:.1f}ms\n'
                        for now, client, method, target, status, ms in noted])

    def write(self, client: str, method: str, target: str, status: int, ms: float) -> None:
        # The request only notes its figures; the lines are rendered together when written.
        lines = self._lines
        lines.append((time.time(), client, method, target, status, ms))
        if len(lines) >= self.FLUSH_LINES:
            self.flush()
        elif len(lines) == 1:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
            except RuntimeError:  # not on a loop: at once
                self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            self.stream.write(self._text(lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must never fail a request


def setup_logging(program: str, settings, spool: bool = True) -> logging.Logger:
    """Route every record of this process to stdout (and the spool); returns the program's logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter_class = JsonFormatter if settings.log_format == "json" else TextFormatter
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(formatter_class(settings.instance_id, program))
    root.addHandler(stdout)
    if spool:
        # The durable hand-off to the log collector (see server/core/logspool.py).
        attach_spool(root, settings, program)
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "schemathesis", "hypothesis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    events.set_default_sender(f"{settings.instance_id}/{program}")
    return logging.getLogger(f"ayon.{program}")
