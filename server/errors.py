"""The expected errors of every program: one type each, one exit code each."""

import logging
import sys
from typing import Callable

EXIT_FAILURE = 1
EXIT_CONFIG = 2  # restarting cannot help: supervisord must not loop on it


class AyonError(Exception):
    """An expected error: printed as one `Error: ...` line, never a traceback."""

    exit_code = EXIT_FAILURE


class ConfigError(AyonError):
    """A bad setting, file or configuration value."""

    exit_code = EXIT_CONFIG


class DatabaseUnavailable(AyonError):
    """PostgreSQL did not answer in time."""


class SchemaError(AyonError):
    """The schema is not one this code can use (edited, newer, or not current)."""

    exit_code = EXIT_CONFIG


def run_main(main: Callable[[], int | None]) -> None:
    """Run a program's main; expected errors become one line and their exit code."""
    try:
        code = main()
    except AyonError as exc:
        logging.getLogger("ayon").debug("exiting on error", exc_info=True)
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)
