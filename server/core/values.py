"""One family of value kinds behind every declared value: settings, configuration keys, task options, API inputs.

A kind checks a decoded value (JSON or YAML: `kind(value)`), parses text (an
environment variable or a query parameter: `kind.from_text(raw)`), and
describes itself for the OpenAPI document (`kind.schema()`). Each returns the
converted value or raises ValueError quoting the bad value (a secret's kind
never quotes it); which variable, key or parameter it was is added once, at
the boundary.
"""

import datetime
import functools
import ipaddress
import os
import re
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from server.core import times, urls
from server.core.errors import shown

# A whole number as text: at most 19 digits, so int() never parses an enormous one.
_WHOLE = re.compile(r"-?[0-9]{1,19}").fullmatch

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


_UNQUOTED = object()


class Invalid(ValueError):
    """A refused value: what was expected (`reason`), and the value quoted after it.

    A boundary that shows the raw text itself (a setting, masked when secret)
    uses `reason` alone, so the value is quoted once and a secret never.
    """

    def __init__(self, reason: str, value: Any = _UNQUOTED):
        self.reason = reason
        super().__init__(reason if value is _UNQUOTED else f"{reason}, got {shown(value)}")


def reason(exc: ValueError) -> str:
    """What a refusal says without quoting the value (see Invalid)."""
    return exc.reason if isinstance(exc, Invalid) else str(exc)


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
            raise Invalid("expected a whole number", value)
        if not self.low <= value <= self.high:
            raise Invalid(f"expected a number from {self.low} to {self.high}", value)
        return value

    def from_text(self, raw: str) -> int:
        text = raw.strip()
        if not _WHOLE(text):
            raise Invalid("expected a whole number", raw)
        return self.check(int(text))

    def schema(self) -> dict:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class Number(Kind):
    """A finite number, whole or with decimals (minutes that a test may want as a few seconds)."""

    low: float
    high: float

    def check(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid("expected a number", value)
        if not self.low <= value <= self.high:  # NaN fails both comparisons
            raise Invalid(f"expected a number from {self.low:g} to {self.high:g}", value)
        return value

    def from_text(self, raw: str) -> int | float:
        text = raw.strip()
        if _WHOLE(text):
            return self.check(int(text))
        if not re.fullmatch(r"-?[0-9]{0,19}\.[0-9]{1,19}", text):
            raise Invalid("expected a number such as 5 or 0.5", raw)
        return self.check(float(text))

    def schema(self) -> dict:
        return {"type": "number", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class Choice(Kind):
    words: tuple[str, ...]

    def check(self, value: Any) -> str:
        word = value.strip().lower() if isinstance(value, str) else value
        if word not in self.words:
            raise Invalid(f"expected one of {'/'.join(self.words)}", value)
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


@dataclass(frozen=True)
class HttpUrl(Kind):
    """An http:// or https:// URL a request can be sent to (server/core/urls.py `Target`), or empty when `optional`.

    Quoted without credentials and query (`urls.shown`): a webhook's URL often carries its secret.
    """

    max_length: int = 2000
    optional: bool = False

    def check(self, value: Any) -> str:
        expected = "expected an http:// or https:// URL" + (", or empty" if self.optional else "")
        if not isinstance(value, str):
            raise Invalid(expected, value if value is None or isinstance(value, (bool, int, float)) else _UNQUOTED)
        if not value and self.optional:
            return ""
        if len(value) > self.max_length:
            raise Invalid(f"expected at most {self.max_length} characters, got {len(value)}")
        if not value.isprintable() or any(c.isspace() for c in value):
            raise Invalid("expected an http:// or https:// URL without spaces or control characters")
        try:
            urls.Target(value)
        except urls.Refused as exc:
            raise Invalid(f"{expected}: {exc.reason}, got {urls.shown(value)!r}") from None
        return value

    def from_text(self, raw: str) -> str:
        return self.check(raw.strip())

    def schema(self) -> dict:
        return {"type": "string", "maxLength": self.max_length, "pattern": "^(?:https?://[^\\s]+)" +
                ("?" if self.optional else "") + "$"}


# Headers that frame or route the request, or that HTTP/1.1 and proxies read (RFC 9110, 9112): a configured
# header of that name would change what the request is, or where and how it goes.
RESERVED_HEADERS = ("Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "TE", "Trailer",
                    "Keep-Alive", "Expect", "Content-Encoding", "Accept-Encoding")
RESERVED_PREFIXES = ("Proxy-",)
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,100}")


@dataclass(frozen=True)
class HeaderName(Kind):
    """The name of a header a request carries: letters, digits and '-', none the request sets itself.

    `sent` names the headers its sender sets on its own (Content-Type, Authorization...), refused too.
    """

    sent: tuple[str, ...] = ()

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
            raise Invalid("expected an HTTP header name (1 to 100 letters, digits or '-')", value)
        reserved = {name.lower(): name for name in RESERVED_HEADERS + self.sent}
        lower = value.lower()
        if lower in reserved or lower.startswith(tuple(p.lower() for p in RESERVED_PREFIXES)):
            every = ", ".join(RESERVED_HEADERS + self.sent + tuple(p + "*" for p in RESERVED_PREFIXES))
            raise Invalid(f"expected a header name of your own such as X-Ayon-Webhook-Secret, not one the request "
                          f"sets itself or proxies read ({every})", value)
        return value

    def schema(self) -> dict:
        return {"type": "string", "maxLength": 100, "pattern": "^[A-Za-z0-9-]{1,100}$"}


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



SLUG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"


class Slug(Kind):
    """A name that is safe in paths, URLs, log prefixes and the supervisord config."""

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(SLUG, value):
            raise Invalid("expected 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit", value)
        return value

    def schema(self) -> dict:
        return {"type": "string", "pattern": f"^{SLUG}$"}


@dataclass(frozen=True)
class Token(Kind):
    """A secret sent back in an HTTP header; never quoted in an error. `optional`: empty means unset."""

    min_length: int
    max_length: int
    optional: bool = False

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid("expected a token")
        if not value and self.optional:
            return ""
        if not all("!" <= c <= "~" for c in value):
            # The token travels in an HTTP header: anything else could never be sent back.
            raise Invalid("expected visible ASCII characters without spaces")
        if not self.min_length <= len(value) <= self.max_length:
            raise Invalid(f"expected {self.min_length} to {self.max_length} characters")
        return value

    def schema(self) -> dict:
        return {"type": "string", "minLength": self.min_length, "maxLength": self.max_length, "pattern": "^[!-~]*$"}


# libpq's own value checks happen only when it connects; these are refused at once.
URL_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "keepalives": ("0", "1"),
}
# Ranges libpq and the kernel take: TCP_KEEPIDLE and TCP_KEEPINTVL refuse 0 and more than 32767 s,
# TCP_KEEPCNT more than 127, and the refusal would only come at the first connect.
URL_NUMBERS = {"connect_timeout": (0, 999_999_999), "keepalives_idle": (1, 32767), "keepalives_interval": (1, 32767),
               "keepalives_count": (1, 127), "tcp_user_timeout": (0, 999_999_999)}


def first_host(url: str) -> str:
    """libpq's multi-host URL (postgresql://u@a:1,b:2/db, a failover pair) as its first host alone, for urlsplit:
    it cannot read the port of `a:1,b:2`. libpq's own reading (parse_dsn) checks every port."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    user, at, hosts = netloc.rpartition("@")
    return f"{scheme}{sep}{user}{at}{hosts.split(',')[0]}{slash}{tail}" if "," in hosts else url


@dataclass(frozen=True)
class PostgresUrl(Kind):
    """A PostgreSQL URL libpq will accept; never quoted in an error (it may carry a password)."""

    optional: bool = False

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid("expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        if not value and self.optional:
            return ""
        parts = urlsplit(first_host(value))
        if parts.scheme not in ("postgres", "postgresql"):
            raise Invalid("expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        try:
            _ = parts.port
        except ValueError:
            raise Invalid("the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise Invalid("the URL names no host")
        if not parts.path.strip("/"):
            raise Invalid("the URL names no database")
        from psycopg2.extensions import parse_dsn

        try:
            options = parse_dsn(value)
        except Exception as exc:  # psycopg2.ProgrammingError; its text may quote the password
            detail = str(exc).strip().removeprefix("invalid dsn: ")
            raise Invalid("libpq cannot read it" + (f": {detail}" if "query parameter" in detail else "")) from None
        if "?" in value and re.search(r"[?&]dbname=", value):
            raise Invalid("name the database in the path, not as ?dbname=")
        for name, allowed in URL_CHOICES.items():
            if name in options and options[name] not in allowed:
                raise Invalid(f"{name}={options[name]!r}: expected one of {'/'.join(allowed)}")
        for name, (low, high) in URL_NUMBERS.items():
            if name in options and not (re.fullmatch(r"[0-9]{1,9}", options[name])
                                        and low <= int(options[name]) <= high):
                raise Invalid(f"{name}={options[name]!r}: expected a whole number from {low} to {high}")
        for port in options.get("port", "").split(","):
            if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
                raise Invalid(f"port={port!r}: expected a number from 1 to 65535")
        return value


HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def split_bind(value: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT as (host, port); the host as gunicorn will read it."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise Invalid("expected HOST:PORT")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise Invalid("expected HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid(f"{host} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if ":" in host:
        raise Invalid("expected HOST:PORT (an IPv6 address goes in brackets: [::]:5000)")
    labels = host.split(".")
    if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise Invalid(f"{host!r} is not a host name or IP address")
    return host, int(port)


class Bind(Kind):
    """An address to listen on, HOST:PORT or [IPV6]:PORT, kept as written."""

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid("expected HOST:PORT", value)
        split_bind(value)
        return value

class Uuid(Kind):
    def check(self, value: Any) -> str:
        try:
            return str(uuid.UUID(value))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"expected a UUID, got {shown(value)}") from None

    def schema(self) -> dict:
        return {"type": "string", "format": "uuid"}


class Timestamp(Kind):
    """An ISO 8601 time; without a zone it is UTC. Returned in UTC: PostgreSQL refuses offsets past 15:59:59."""

    def check(self, value: Any) -> datetime.datetime:
        try:
            found = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if found.tzinfo is None:
                return found.replace(tzinfo=datetime.timezone.utc)
            return found.astimezone(datetime.timezone.utc)
        except (ValueError, TypeError, AttributeError, OverflowError):  # OverflowError: before year 1 in UTC
            raise ValueError(f"expected an ISO 8601 time such as 2026-01-31T12:00:00Z, got {shown(value)}") from None

    def schema(self) -> dict:
        return {"type": "string", "format": "date-time"}


class AnyText(Kind):
    """Any text, passed on as it came: a cursor or a name to filter by, which its user decodes or looks up.

    For query parameters and path segments, which the request line already bounds.
    """

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid("expected text", value)
        return value

    def from_text(self, raw: str) -> str:
        return raw


class Object(Kind):
    """A JSON object, whose keys are someone else's to check."""

    def check(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise Invalid("expected an object", value)
        return value

    def schema(self) -> dict:
        return {"type": "object"}


@dataclass(frozen=True)
class ListOf(Kind):
    """Several values of one kind: a list, or as text the items separated by commas (empty items skipped)."""

    item: Kind
    min_items: int = 0
    max_items: int = 100

    def check(self, value: Any) -> list:
        if not isinstance(value, list):
            raise Invalid("expected a list", value)
        return [self.item(found) for found in self._sized(value)]

    def from_text(self, raw: str) -> list:
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        return [self.item.from_text(part) for part in self._sized(parts)]

    def _sized(self, items: list) -> list:
        if not self.min_items <= len(items) <= self.max_items:
            raise Invalid(f"expected a list of {self.min_items} to {self.max_items} items, got {len(items)}")
        return items

    def schema(self) -> dict:
        return {"type": "array", "items": self.item.schema(), "minItems": self.min_items, "maxItems": self.max_items}


@dataclass(frozen=True)
class Value:
    """One declared value: a setting, a configuration key or a task option."""

    name: str
    kind: Kind | Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False
