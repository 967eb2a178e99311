"""Every AYON_* setting, declared once: name, type, default and help.

Everything else derives from SETTINGS: environment parsing, the supervisord
generator's inputs, `python -m server.settings` and the README table.
"""

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from server.errors import ConfigError

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


# --- validators: take the raw string, return the value or raise ValueError ---


def to_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def to_positive_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def to_text(raw: str) -> str:
    return raw.strip()


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
    return url


def to_bind(raw: str) -> str:
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
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
    return os.path.abspath(value)


def to_slug(raw: str) -> str:
    value = raw.strip()
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError("expected letters, digits, '-', '_' or '.'")
    return value


def to_bytes_size(raw: str) -> int:
    text = raw.strip().upper()
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    factor = 1
    if text[-1:] in units:
        factor, text = units[text[-1]], text[:-1]
    if not text.isdigit() or int(text) < 1:
        raise ValueError("expected a size such as 512M, 2G or a number of bytes")
    return int(text) * factor


@dataclass(frozen=True)
class Setting:
    name: str
    validator: Callable[[str], Any]
    default: str  # as the user would write it; passes through the validator
    help: str
    secret: bool = False

    def parse(self, raw: str | None) -> Any:
        """Convert one raw value; unset or blank means the default."""
        if raw is None or raw.strip() == "":
            raw = self.default() if callable(self.default) else self.default
        try:
            return self.validator(raw)
        except ValueError as exc:
            shown = "***" if self.secret else repr(raw)
            raise ConfigError(f"{self.name}={shown}: {exc}") from None

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
    Setting("AYON_DATA_DIR", to_path, "/var/lib/ayon", "Local data: log spool, installed addons, embedded PostgreSQL."),
    Setting("AYON_INSTANCE_ID", to_slug, _hostname, "This instance's name in heartbeats, logs and install states."),
    Setting("AYON_HTTP_BIND", to_bind, "0.0.0.0:5000", "Address the web server listens on."),
    Setting("AYON_SERVER_WORKERS", to_positive_int, "2", "Number of gunicorn worker processes."),
    Setting("AYON_LOG_LEVEL", one_of("debug", "info", "warning", "error"), "info", "Lowest level of log records kept."),
    Setting("AYON_LOG_FORMAT", one_of("text", "json"), "text", "Format of log lines on stdout."),
    Setting("AYON_ADMIN_TOKEN", to_text, "", "Admin API token; unset lets setup generate one on first run and print it once.", secret=True),
    Setting("AYON_CONFIG_FILE", to_text, "", "YAML file applied to the server configuration when setup runs."),
    Setting("AYON_DB_WAIT_TIMEOUT", to_positive_int, "60", "Seconds to wait for PostgreSQL and a current schema before giving up."),
    Setting("AYON_SCHEMA_WAIT_TIMEOUT", to_positive_int, "600", "Seconds a program waits for setup to bring the schema up to date."),
    Setting("AYON_DB_POOL_SIZE", to_positive_int, "4", "Database connections per process."),
    Setting("AYON_LOG_SPOOL_MAX", to_bytes_size, "256M", "Size cap of the local log spool; the oldest records are dropped above it."),
    Setting("AYON_SUPERVISOR_CONF", to_path, "/etc/supervisord.conf", "Where the entrypoint writes the generated supervisord config."),
    Setting("AYON_EMBEDDED_PG_PORT", to_positive_int, "5432", "Port of the embedded PostgreSQL (loopback only)."),
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
        return f"postgresql://postgres@127.0.0.1:{self.embedded_pg_port}/ayon"

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
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    if args:
        print("usage: python -m server.settings [--markdown]", file=sys.stderr)
        return 2
    try:
        values = load()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    width = max(len(s.name) for s in SETTINGS)
    for name, shown in describe(values):
        print(f"{name:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
