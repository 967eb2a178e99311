"""What every program does at start: settings, logging, a database pool."""

import logging
import sys

from server import settings as settings_mod
from server.db import Database
from server.errors import ConfigError
from server.logs import setup_logging


def start(program: str, spool: bool = True) -> tuple[settings_mod.Settings, logging.Logger]:
    """Load settings (a bad one exits 2 with one line) and set up logging."""
    try:
        values = settings_mod.load()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    return values, setup_logging(program, values, spool=spool)


def open_database(values: settings_mod.Settings, program: str) -> Database:
    return Database(values.postgres_url, size=values.db_pool_size, application_name=f"ayon-{program}")
