"""One logging setup for every process: stdout lines carrying instance and program."""

import datetime
import json
import logging
import os
import sys
import traceback

from server import events

# Attributes every LogRecord has; anything else on a record is a structured extra.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def extras_of(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def iso_time(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    def __init__(self, instance: str, program: str):
        super().__init__()
        self.prefix = f"{instance}/{program}"

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_time(record.created)} {record.levelname:<7} [{self.prefix}] {record.name}: {record.getMessage()}"
        extras = extras_of(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str, program: str):
        super().__init__()
        self.instance, self.program = instance, program

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": iso_time(record.created),
            "level": record.levelname,
            "instance": self.instance,
            "program": self.program,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = extras_of(record)
        if extras:
            doc["extras"] = extras
        if record.exc_info:
            doc["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(doc, default=str)


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
        # The durable hand-off to the log collector (see server/logspool.py).
        from server.logspool import attach_spool

        attach_spool(root, settings, program)
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "schemathesis", "hypothesis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    events.set_default_sender(f"{settings.instance_id}/{program}")
    os.environ.setdefault("AYON_PROGRAM", program)
    return logging.getLogger(f"ayon.{program}")
