"""The expected errors of every program: one type each, one exit code each."""

import argparse
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


class UsageError(ConfigError):
    """A bad command line: exit 2 like a bad setting, restarting cannot help."""


class Parser(argparse.ArgumentParser):
    """argparse for every command: a bad command line is one `Error:` line naming the help, exit 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


class DatabaseUnavailable(AyonError):
    """PostgreSQL did not answer in time."""


class SchemaError(AyonError):
    """The schema is not one this code can use (edited, newer, or not current)."""

    exit_code = EXIT_CONFIG


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, for a log line or an error message; never raises."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def run_main(main: Callable[[], int | None], program: str | None = None) -> None:
    """The one error exit of every command and daemon: expected errors become one line and their exit code,
    a bug its traceback and exit 1."""
    try:
        code = main()
    except AyonError as exc:
        logging.getLogger("ayon").debug("exiting on error", exc_info=True)
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        logging.getLogger(f"ayon.{program or 'main'}").exception("%s crashed", program or "the command")
        sys.exit(EXIT_FAILURE)
    sys.exit(code or 0)

