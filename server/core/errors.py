"""The expected errors of every program: one type each, one exit code each."""

import argparse
import logging
import re
import reprlib
import sys
from typing import Callable
from urllib.parse import unquote_plus

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


# How a value from outside is quoted back: short, whatever it is. A string is cut before it is
# rendered, and a container shows its first few items, so quoting costs the same for any size.
QUOTE_MAX = 60
_quote = reprlib.Repr()
_quote.maxstring = _quote.maxother = _quote.maxlong = QUOTE_MAX
_quote.maxlevel, _quote.maxdict, _quote.maxlist, _quote.maxtuple, _quote.maxset = 2, 4, 4, 4, 4


def shown(value) -> str:
    """A value as an error message, an event or a log line quotes it: its repr, at most QUOTE_MAX characters."""
    if isinstance(value, (str, bytes)):
        text = repr(value[:QUOTE_MAX])
    elif isinstance(value, int) and value.bit_length() > 4 * QUOTE_MAX:
        return f"a number of {value.bit_length()} bits"  # repr() of a big enough one raises
    else:
        text = _quote.repr(value)
    return text if len(text) <= QUOTE_MAX else text[: QUOTE_MAX - 3] + "..."


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """Text as one log line shows it: every character that is not printable (newlines, escape
    sequences, NUL, bidirectional overrides, line separators) as a visible escape, so text a
    client sent can never start a line of its own or restyle a terminal."""
    if text.isprintable():  # the common case, in C
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


MASK = "***"

# Query parameter names that carry a credential, as a careless client sends one (`?token=`,
# `?api_key=`, `?X-Amz-Signature=`): matched on the decoded, lower-case name's end.
_CREDENTIAL = re.compile(r"(token|key|pass|passwd|password|secret|signature|sig|auth|authorization|"
                         r"credential|credentials|session|sessionid|jwt|code)$")
_MAYBE_CREDENTIAL = re.compile(r"(?i)(token|key|pass|secret|sig|auth|credential|session|jwt|code)[^&=]*=|%|\+")


def shown_query(query: str) -> str:
    """A raw query string as an access line shows it: credential-like parameters as ***, printable."""
    if not _MAYBE_CREDENTIAL.search(query):
        return printable(query)
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        if equals and _CREDENTIAL.search(unquote_plus(name).strip().lower()):
            pair = f"{name}={MASK}"
        pairs.append(pair)
    return printable("&".join(pairs))


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

