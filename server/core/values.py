"""One family of value kinds behind every declared value: settings, configuration keys, task options, API inputs.

A kind checks a decoded value (JSON or YAML: `kind(value)`), parses text (an
environment variable or a query parameter: `kind.from_text(raw)`), and
describes itself for the OpenAPI document (`kind.schema()`). Each returns the
converted value or raises ValueError quoting the bad value; which variable,
key or parameter it was is added once, at the boundary.
"""

import datetime
import functools
import os
import re
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable

from server.core import times

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def shown(value: Any) -> str:
    """A value as an error line quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Kind:
    """What a value may be; subclasses implement `check` and, where text differs, `from_text`."""

    def __call__(self, value: Any) -> Any:
        return self.check(value)

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def from_text(self, raw: str) -> Any:
        return self.check(raw.strip())

    def schema(self) -> dict:
        return {"type": "string"}


class Boolean(Kind):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {shown(value)}")
        return value

    def from_text(self, raw: str) -> bool:
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError("expected one of true/false/1/0/yes/no/on/off")

    def schema(self) -> dict:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Integer(Kind):
    low: int
    high: int

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {shown(value)}")
        if not self.low <= value <= self.high:
            raise ValueError(f"expected a number from {self.low} to {self.high}, got {shown(value)}")
        return value

    def from_text(self, raw: str) -> int:
        text = raw.strip()
        if not re.fullmatch(r"-?[0-9]{1,19}", text):
            raise ValueError(f"expected a whole number, got {shown(raw)}")
        return self.check(int(text))

    def schema(self) -> dict:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class Choice(Kind):
    words: tuple[str, ...]

    def check(self, value: Any) -> str:
        word = value.strip().lower() if isinstance(value, str) else value
        if word not in self.words:
            raise ValueError(f"expected one of {'/'.join(self.words)}, got {shown(value)}")
        return word

    def schema(self) -> dict:
        return {"type": "string", "enum": list(self.words)}


@dataclass(frozen=True)
class Text(Kind):
    """Text of bounded length, optionally matching a pattern that `what` describes."""

    max_length: int = 1000
    pattern: str | None = None
    what: str = "text"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected {self.what}, got {shown(value)}")
        if len(value) > self.max_length:
            raise ValueError(f"expected at most {self.max_length} characters, got {len(value)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ValueError(f"expected {self.what}, got {shown(value)}")
        return value

    def from_text(self, raw: str) -> str:
        return self.check(raw)

    def schema(self) -> dict:
        found = {"type": "string", "maxLength": self.max_length}
        if self.pattern is not None:
            found["pattern"] = f"^(?:{self.pattern})$"
        return found


class ClockTime(Kind):
    def check(self, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted 03:00 as the number 180 (base 60).
            raise ValueError(f"expected HH:MM (24-hour) as text, got the number {value}; quote it in YAML: '03:00'")
        if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
            raise ValueError(f"expected HH:MM (24-hour), got {shown(value)}")
        return value.strip()

    def schema(self) -> dict:
        return {"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$"}


# Names zoneinfo loads but that are no place's time: the tz database's placeholder
# for "not set" and the machine's own zone, which differs between instances.
NOT_PLACES = frozenset({"Factory", "localtime", "posixrules"})


@functools.lru_cache(maxsize=1)
def time_zones() -> frozenset[str]:
    """The time zone names the scheduler accepts."""
    return frozenset(zoneinfo.available_timezones()) - NOT_PLACES


class TimeZone(Kind):
    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a time zone name such as UTC or Europe/Prague, got {shown(value)}")
        name = value.strip()
        if name not in time_zones():
            raise ValueError(f"unknown time zone {shown(value)}")
        times.next_run(datetime.datetime.now(datetime.timezone.utc), "00:00", name)  # the scheduler's own computation
        return name


SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: str) -> int:
    text = text.strip().upper()
    factor = 1
    if text[-1:] in SIZE_UNITS:
        factor, text = SIZE_UNITS[text[-1]], text[:-1]
    if not re.fullmatch(r"[0-9]{1,15}", text) or int(text) < 1:
        raise ValueError("expected a size such as 512M, 2G or a number of bytes")
    return int(text) * factor


@dataclass(frozen=True)
class Size(Kind):
    """A number of bytes, written as 512M, 2G or plain bytes."""

    low: str
    high: str

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected a size such as 512M, got {shown(value)}")
        size = value if isinstance(value, int) else _size(value)
        if not _size(self.low) <= size <= _size(self.high):
            raise ValueError(f"expected a size from {self.low} to {self.high}")
        return size


@dataclass(frozen=True)
class Path(Kind):
    """An absolute path (a relative one is taken from the current folder); `plain` refuses what configs cannot carry."""

    optional: bool = False
    plain: bool = False

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a path, got {shown(value)}")
        text = value.strip()
        if not text:
            if self.optional:
                return ""
            raise ValueError("expected a path")
        if not text.isprintable():
            raise ValueError("expected a path without control characters")
        path = os.path.abspath(text)
        # The supervisord config's parser expands '%', ends a value at ' ;' and splits at spaces and quotes.
        if self.plain and re.search(r"[\s%;'\"\\]", path):
            raise ValueError("expected a path without spaces, quotes, backslashes, '%' or ';'")
        return path


class Uuid(Kind):
    def check(self, value: Any) -> str:
        try:
            return str(uuid.UUID(value))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"expected a UUID, got {shown(value)}") from None

    def schema(self) -> dict:
        return {"type": "string", "format": "uuid"}


class Timestamp(Kind):
    """An ISO 8601 time; without a zone it is UTC."""

    def check(self, value: Any) -> datetime.datetime:
        try:
            found = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"expected an ISO 8601 time such as 2026-01-31T12:00:00Z, got {shown(value)}") from None
        return found if found.tzinfo is not None else found.replace(tzinfo=datetime.timezone.utc)

    def schema(self) -> dict:
        return {"type": "string", "format": "date-time"}


@dataclass(frozen=True)
class Value:
    """One declared value: a setting, a configuration key or a task option."""

    name: str
    kind: Kind | Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False
