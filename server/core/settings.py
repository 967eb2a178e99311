"""Every AYON_* setting, declared once: name, type, default and help.

Everything else derives from SETTINGS: environment parsing, the supervisord
generator's inputs, `python -m server.core.settings` and the README table.
"""

import errno
import ipaddress
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from server.core.errors import ConfigError, Parser, run_main

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
TOKEN_MIN = 8  # the admin token guards everything; a few characters can be guessed
TOKEN_MAX = 1024
RESOLVE_TIMEOUT = 1.0  # the entrypoint answers within 2 s, also when DNS does not


# --- validators: take the raw string, return the value or raise ValueError ---


def to_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def whole_number(low: int, high: int) -> Callable[[str], int]:
    def validate(raw: str) -> int:
        text = raw.strip()
        if not re.fullmatch(r"-?[0-9]+", text):
            raise ValueError("expected a whole number")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return validate


to_port = whole_number(1, 65535)


def to_token(raw: str) -> str:
    token = raw.strip()
    if not token:
        return ""  # unset: setup generates one
    if not all("!" <= c <= "~" for c in token):
        # The token travels in an HTTP header: anything else could never be sent back.
        raise ValueError("expected visible ASCII characters without spaces")
    if not TOKEN_MIN <= len(token) <= TOKEN_MAX:
        raise ValueError(f"expected {TOKEN_MIN} to {TOKEN_MAX} characters")
    return token


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
URL_NUMBERS = ("connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")


def to_postgres_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    try:
        parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("the URL names no host")
    if not parts.path.strip("/"):
        raise ValueError("the URL names no database")
    from psycopg2.extensions import parse_dsn

    try:
        options = parse_dsn(url)
    except Exception as exc:  # psycopg2.ProgrammingError; its text may quote the password
        detail = str(exc).strip().removeprefix("invalid dsn: ")
        raise ValueError("libpq cannot read it" + (f": {detail}" if "query parameter" in detail else "")) from None
    return _check_url_options(url, options)


def _check_url_options(url: str, options: dict) -> str:
    if "?" in url and re.search(r"[?&]dbname=", url):
        raise ValueError("name the database in the path, not as ?dbname=")
    for name, allowed in URL_CHOICES.items():
        if name in options and options[name] not in allowed:
            raise ValueError(f"{name}={options[name]!r}: expected one of {'/'.join(allowed)}")
    for name in URL_NUMBERS:
        if name in options and not re.fullmatch(r"[0-9]{1,9}", options[name]):
            raise ValueError(f"{name}={options[name]!r}: expected a whole number of seconds or counts")
    for port in options.get("port", "").split(","):
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"port={port!r}: expected a number from 1 to 65535")
    return url


HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def split_bind(value: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT as (host, port); the host as gunicorn will read it."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if ":" in host:
        raise ValueError("expected HOST:PORT (an IPv6 address goes in brackets: [::]:5000)")
    labels = host.split(".")
    if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return host, int(port)


def to_bind(raw: str) -> str:
    value = raw.strip()
    split_bind(value)
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def validate(raw: str) -> str:
        word = raw.strip().lower()
        if word not in choices:
            raise ValueError("expected one of " + "/".join(choices))
        return word

    return validate


def to_path(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("expected a path")
    if not value.isprintable():
        raise ValueError("expected a path without control characters")
    return os.path.abspath(value)


def to_optional_path(raw: str) -> str:
    return to_path(raw) if raw.strip() else ""


def to_data_path(raw: str) -> str:
    value = to_path(raw)
    # The folder goes into the supervisord config, whose parser expands '%', ends a value
    # at ' ;' and splits commands at spaces and quotes.
    if re.search(r"[\s%;'\"\\]", value):
        raise ValueError("expected a path without spaces, quotes, backslashes, '%' or ';'")
    return value


def to_slug(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value):
        raise ValueError("expected 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit")
    return value


SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def bytes_size(low: str, high: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        text = text.strip().upper()
        factor = 1
        if text[-1:] in SIZE_UNITS:
            factor, text = SIZE_UNITS[text[-1]], text[:-1]
        if not re.fullmatch(r"[0-9]{1,15}", text) or int(text) < 1:
            raise ValueError("expected a size such as 512M, 2G or a number of bytes")
        return int(text) * factor

    def validate(raw: str) -> int:
        value = parse(raw)
        if not parse(low) <= value <= parse(high):
            raise ValueError(f"expected a size from {low} to {high}")
        return value

    return validate


# --- checks against this machine: run once, by the entrypoint, before anything starts ---


def _writable_folder(path: str) -> None:
    """The folder exists or can be created, and files can be written in it; leaves no trace."""
    made = []
    probe = None
    try:
        missing = path
        while not os.path.exists(missing):
            made.append(missing)
            missing = os.path.dirname(missing)
        if not os.path.isdir(missing):
            raise ValueError(f"{missing} is not a folder")
        for folder in reversed(made):
            os.mkdir(folder)
        probe = os.path.join(path, f".ayon-write-check-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        made = [m for m in made if os.path.isdir(m)]
        raise ValueError(f"cannot {'create' if made or not os.path.isdir(path) else 'write in'} "
                         f"this folder ({exc.strerror or exc})") from None
    finally:
        if probe:
            try:
                os.unlink(probe)
            except OSError:
                pass
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:
                pass


def check_data_dir(path: str) -> None:
    _writable_folder(path)


def check_conf_file(path: str) -> None:
    if os.path.isdir(path):
        raise ValueError("is a folder; expected the path of a file to write")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError("exists and is not a regular file")
    try:
        _writable_folder(os.path.dirname(path))
    except ValueError as exc:
        raise ValueError(f"its folder: {exc}") from None


def _resolve(host: str, port: int, family: int) -> list:
    """getaddrinfo with a deadline: a lookup that hangs must not hold the entrypoint."""
    found: list = []

    def look() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE))
        except (OSError, UnicodeError) as exc:
            found.append(exc)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT)
    if not found:
        raise ValueError(f"{host} did not resolve within {RESOLVE_TIMEOUT:g} s")
    if isinstance(found[0], Exception):
        raise ValueError(f"{host} does not resolve to an address") from None
    return found[0]


def check_bind(value: str) -> None:
    host, port = split_bind(value)
    # gunicorn binds IPv6 literals as IPv6 and everything else as IPv4.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    failure = None
    for fam, kind, proto, _, address in _resolve(host, port, family):
        try:
            with socket.socket(fam, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
            return
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return  # taken right now: a state, not a bad value (gunicorn retries for a while)
            failure = exc
    if failure is not None and failure.errno == errno.EADDRNOTAVAIL:
        raise ValueError(f"{host} is not an address of this machine")
    raise ValueError(f"cannot listen there ({failure.strerror if failure else 'no address'})")


@dataclass(frozen=True)
class Setting:
    name: str
    validator: Callable[[str], Any]
    default: str  # as the user would write it; passes through the validator
    help: str
    secret: bool = False
    check: Callable[[Any], None] | None = None  # against this machine; the entrypoint runs it once
    checked_when: Callable[["Settings"], bool] | None = None  # only when these settings use it (None: always)

    def parse(self, raw: str | None) -> Any:
        """Convert one raw value; unset or blank means the default."""
        if raw is None or raw.strip() == "":
            raw = self.default() if callable(self.default) else self.default
        try:
            if not raw.strip().isprintable():
                raise ValueError("contains control characters or bytes that are not text")
            return self.validator(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name}={self.shown(raw)}: {exc}") from None

    def shown(self, raw: str) -> str:
        return "***" if self.secret else repr(raw)

    @property
    def default_text(self) -> str:
        return "(host name)" if callable(self.default) else self.default


def _hostname() -> str:
    return socket.gethostname() or "localhost"


SETTINGS = [
    Setting("AYON_RUN_SERVER", to_bool, "true", "Run the web server and the per-instance background processes."),
    Setting("AYON_RUN_SETUP", to_bool, "true", "Run setup: create the database, migrate, seed the configuration."),
    Setting("AYON_RUN_MAINTENANCE", to_bool, "true", "Run the maintenance daemon (the procedure daily at the configured time)."),
    Setting("AYON_POSTGRES_URL", to_postgres_url, "", "PostgreSQL URL; unset runs an embedded PostgreSQL (evaluation only).", secret=True),
    Setting("AYON_DATA_DIR", to_data_path, "/var/lib/ayon", "Local data: log spool, installed addons, embedded PostgreSQL; a folder that can be created and written.", check=check_data_dir),
    Setting("AYON_INSTANCE_ID", to_slug, _hostname, "This instance's name in heartbeats, logs and install states (up to 63 letters, digits, `-`, `_`, `.`)."),
    Setting("AYON_HTTP_BIND", to_bind, "0.0.0.0:5000", "Address the web server listens on: `HOST:PORT` or `[IPV6]:PORT`, an address of this machine.", check=check_bind, checked_when=lambda v: v.run_server),
    Setting("AYON_SERVER_WORKERS", whole_number(1, 64), "2", "Number of gunicorn worker processes (1–64)."),
    Setting("AYON_LOG_LEVEL", one_of("debug", "info", "warning", "error"), "info", "Lowest level of log records kept."),
    Setting("AYON_LOG_FORMAT", one_of("text", "json"), "text", "Format of log lines on stdout."),
    Setting("AYON_ADMIN_TOKEN", to_token, "", f"Admin API token ({TOKEN_MIN} or more visible ASCII characters); unset lets setup generate one on first run and print it once.", secret=True),
    Setting("AYON_CONFIG_FILE", to_optional_path, "", "YAML file applied to the server configuration when setup runs; the entrypoint checks it first."),
    Setting("AYON_DB_WAIT_TIMEOUT", whole_number(1, 3600), "60", "Seconds to wait for PostgreSQL and a current schema before giving up (1–3600)."),
    Setting("AYON_SCHEMA_WAIT_TIMEOUT", whole_number(1, 86400), "600", "Seconds a program waits for setup to bring the schema up to date (1–86400)."),
    Setting("AYON_DB_POOL_SIZE", whole_number(1, 100), "4", "Database connections per process (1–100; PostgreSQL allows 100 in all by default)."),
    Setting("AYON_LOG_SPOOL_MAX", bytes_size("64K", "1T"), "256M", "Size cap of the local log spool (64K–1T); the oldest records are dropped above it."),
    Setting("AYON_SUPERVISOR_CONF", to_path, "/etc/supervisord.conf", "Where the entrypoint writes the generated supervisord config: a file in a writable folder.", check=check_conf_file, checked_when=lambda v: v.roles != ["setup"]),
    Setting("AYON_EMBEDDED_PG_PORT", to_port, "5432", "Port of the embedded PostgreSQL (loopback only; 1–65535)."),
]

BY_NAME = {s.name: s for s in SETTINGS}


class Settings(dict):
    """Parsed settings, keyed by the variable name without the AYON_ prefix, lower case."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def roles(self) -> list[str]:
        return [r for r in ("server", "setup", "maintenance") if self[f"run_{r}"]]

    @property
    def postgres_url(self) -> str:
        url = self["postgres_url_raw"]
        if url:
            return url
        from server.core.embedded_pg import url  # the owner role, its password in a 0600 file

        return url(self.data_dir, self.embedded_pg_port)

    @property
    def embedded_postgres(self) -> bool:
        return not self["postgres_url_raw"]


def key_of(name: str) -> str:
    return name.removeprefix("AYON_").lower()


def load(environ: dict | None = None) -> Settings:
    """Parse every setting from the environment; the first bad one raises ConfigError."""
    env = os.environ if environ is None else environ
    values = Settings()
    for setting in SETTINGS:
        values[key_of(setting.name)] = setting.parse(env.get(setting.name))
    values["postgres_url_raw"] = values.pop("postgres_url")
    return values


def verify(values: Settings) -> None:
    """Check loaded settings against this machine and each other; the first problem raises ConfigError.

    Only the entrypoint runs this, once, before anything starts: the folders can be
    created and written, the bind address is one of this machine's.
    """
    for setting in SETTINGS:
        if setting.check is None or (setting.checked_when and not setting.checked_when(values)):
            continue  # e.g. setup alone writes no supervisord config and listens nowhere
        value = values[key_of(setting.name)]
        try:
            setting.check(value)
        except ValueError as exc:
            raise ConfigError(f"{setting.name}={setting.shown(str(value))}: {exc}") from None
    if values.embedded_postgres and values.run_server:
        host, port = split_bind(values.http_bind)
        if port == values.embedded_pg_port and host in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
            raise ConfigError(f"AYON_EMBEDDED_PG_PORT={str(port)!r}: the same port as AYON_HTTP_BIND "
                              f"{values.http_bind!r}; the embedded PostgreSQL and the server cannot share it")


def describe(values: Settings) -> list[tuple[str, str]]:
    """The effective settings as (name, shown value), secrets masked."""
    rows = []
    for setting in SETTINGS:
        key = key_of(setting.name)
        value = values["postgres_url_raw"] if key == "postgres_url" else values[key]
        if setting.secret and value:
            shown = mask_url(value) if key == "postgres_url" else "***"
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        rows.append((setting.name, shown))
    return rows


def mask_url(url: str) -> str:
    """A PostgreSQL URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def markdown_table() -> str:
    """The README's settings table."""
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default_text}`" if s.default_text else "(unset)"
        lines.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the effective settings (secrets masked), or the README table with --markdown."""
    parser = Parser(prog="python -m server.core.settings", description="The effective settings, secrets masked.")
    parser.add_argument("--markdown", action="store_true", help="print the README's settings table instead")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    values = load()
    width = max(len(s.name) for s in SETTINGS)
    for name, shown in describe(values):
        print(f"{name:<{width}}  {shown}")
    return 0


def run() -> None:
    """Entry point of `python -m server.core.settings` and `ayon-settings`."""
    run_main(main)


if __name__ == "__main__":
    run()
