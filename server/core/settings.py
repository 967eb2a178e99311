"""Every AYON_* setting, declared once: name, kind (server/core/values.py), default and help.

Everything else derives from SETTINGS: environment parsing, the supervisord
generator's inputs, `python -m server.core.settings` and the README table.
"""

import errno
import os
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from server.core import urls
from server.core.errors import ConfigError, Parser, run_main
from server.core.values import (
    Bind,
    Boolean,
    Choice,
    Integer,
    Path,
    PostgresUrl,
    Size,
    Slug,
    Token,
    Value,
    reason,
    split_bind,
)

TOKEN_MIN = 8  # the admin token guards everything; a few characters can be guessed
TOKEN_MAX = 1024
RESOLVE_TIMEOUT = 1.0
# gunicorn's graceful timeout: after the drain, requests in flight get this long (server/gunicorn_conf.py).
SERVER_GRACE_SECONDS = 20  # the entrypoint answers within 2 s, also when DNS does not


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
class Setting(Value):
    """One AYON_* variable: its kind parses the text; `default` is text as the user would write it."""

    check: Callable[[Any], None] | None = None  # against this machine; the entrypoint runs it once
    checked_when: Callable[["Settings"], bool] | None = None  # only when these settings use it (None: always)

    def parse(self, raw: str | None) -> Any:
        """Convert one raw value; unset or blank means the default."""
        if raw is None or raw.strip() == "":
            raw = self.default() if callable(self.default) else self.default
        try:
            if not raw.strip().isprintable():
                raise ValueError("contains control characters or bytes that are not text")
            return self.kind.from_text(raw)
        except ValueError as exc:
            # The raw text is quoted here (masked when secret), so the kind's own quote is left out.
            raise ConfigError(f"{self.name}={self.shown(raw)}: {reason(exc)}") from None

    def shown(self, raw: str) -> str:
        return "***" if self.secret else repr(raw)

    @property
    def default_text(self) -> str:
        return "(host name)" if callable(self.default) else self.default


def _hostname() -> str:
    return socket.gethostname() or "localhost"


SETTINGS = [
    Setting("AYON_RUN_SERVER", Boolean(), "true", "Run the web server and the per-instance background processes."),
    Setting("AYON_RUN_SETUP", Boolean(), "true", "Run setup: create the database, migrate, seed the configuration."),
    Setting("AYON_RUN_MAINTENANCE", Boolean(), "true", "Run the maintenance daemon (the procedure daily at the configured time)."),
    Setting("AYON_POSTGRES_URL", PostgresUrl(optional=True), "", "PostgreSQL URL; unset runs an embedded PostgreSQL (evaluation only).", secret=True),
    Setting("AYON_POSTGRES_SESSION_URL", PostgresUrl(optional=True), "", "PostgreSQL URL for what needs a session of its own (LISTEN): direct or session-pooled; unset is AYON_POSTGRES_URL. Set it when AYON_POSTGRES_URL goes through a transaction pooler (PgBouncer `pool_mode = transaction`): the programs then send no prepared statements there, and refuse to start when LISTEN does not work on this one.", secret=True),
    Setting("AYON_DATA_DIR", Path(plain=True), "/var/lib/ayon", "Local data: log spool, installed addons, embedded PostgreSQL; a folder that can be created and written, one instance's at a time.", check=check_data_dir),
    Setting("AYON_INSTANCE_ID", Slug(), _hostname, "This instance's name in heartbeats, logs and install states (up to 63 letters, digits, `-`, `_`, `.`)."),
    Setting("AYON_HTTP_BIND", Bind(), "0.0.0.0:5000", "Address the web server listens on: `HOST:PORT` or `[IPV6]:PORT`, an address of this machine.", check=check_bind, checked_when=lambda v: v.run_server),
    Setting("AYON_SERVER_WORKERS", Integer(1, 64), "2", "Number of gunicorn worker processes (1–64)."),
    Setting("AYON_DRAIN_SECONDS", Integer(0, 300), "5", f"Seconds the server goes on serving after SIGTERM (a stop or `supervisorctl restart server`) while `/health/ready` answers 503, so load balancers take it out first (0–300; match the Kubernetes `preStop` delay); then it takes no new connections and gives those in flight up to {SERVER_GRACE_SECONDS} s."),
    Setting("AYON_STREAM_MAX_SUBSCRIBERS", Integer(1, 1000000), "10000", "Open event streams (`/api/events/stream`) one web worker holds at most (1–1000000); past it a new one is answered 503. Each takes a file descriptor: the server warns at start when its `nofile` limit is lower."),
    Setting("AYON_STREAM_SUBSCRIBER_BUFFER", Size("4K", "64M"), "64K", "Unsent bytes an event stream may hold in the worker (4K–64M); a client that reads too slowly for that is disconnected, and reconnects with Last-Event-ID to catch up from the table."),
    Setting("AYON_LOG_LEVEL", Choice(("debug", "info", "warning", "error")), "info", "Lowest level of log records kept."),
    Setting("AYON_LOG_FORMAT", Choice(("text", "json")), "text", "Format of log lines on stdout."),
    Setting("AYON_ADMIN_TOKEN", Token(TOKEN_MIN, TOKEN_MAX, optional=True), "", f"Admin API token ({TOKEN_MIN} or more visible ASCII characters); unset lets setup generate one on first run and print it once.", secret=True),
    Setting("AYON_CONFIG_FILE", Path(optional=True), "", "YAML file applied to the server configuration when setup runs; the entrypoint checks it first."),
    Setting("AYON_DB_WAIT_TIMEOUT", Integer(1, 3600), "60", "Seconds to wait for PostgreSQL and a current schema before giving up (1–3600)."),
    Setting("AYON_SCHEMA_WAIT_TIMEOUT", Integer(1, 86400), "600", "Seconds a program waits for setup to bring the schema up to date (1–86400)."),
    Setting("AYON_MIGRATION_LOCK_TIMEOUT", Integer(1, 600), "5", "Seconds a migration statement waits for a table lock before it gives up (PostgreSQL `lock_timeout`; 1–600): a migration never queues every request behind a long query; setup tries it 3 times, then exits 1 to be run again."),
    Setting("AYON_DB_POOL_SIZE", Integer(1, 100), "4", "Database connections per web worker, at most (1–100): its API threads and its event loop share them, so the web server holds up to `AYON_SERVER_WORKERS` × this under load. Each background program's pool (log collector, installer, webactions, maintenance daemon) is this size too, but uses one or two. PostgreSQL allows 100 in all by default: see the README's connection budget."),
    Setting("AYON_DB_IDLE_SECONDS", Integer(1, 86400), "30", "Seconds a pooled database connection may stay unused before it is closed (1–86400), in every pool of every process: an idle instance shrinks back to its LISTEN connections."),
    Setting("AYON_LOG_SPOOL_MAX", Size("64K", "1T"), "256M", "Size cap of the local log spool (64K–1T); the oldest records are dropped above it."),
    Setting("AYON_SUPERVISOR_CONF", Path(), "/etc/supervisord.conf", "Where the entrypoint writes the generated supervisord config: a file in a writable folder, one instance's at a time.", check=check_conf_file, checked_when=lambda v: v.roles != ["setup"]),
    Setting("AYON_EMBEDDED_PG_PORT", Integer(1, 65535), "5432", "Port of the embedded PostgreSQL (loopback only; 1–65535)."),
]

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
        """AYON_POSTGRES_URL, or the embedded PostgreSQL's of the instance running on AYON_DATA_DIR.

        Unset outside an instance (cron, a one-shot container, a shell) is a missing setting:
        refused at once, not a wait for a PostgreSQL at 127.0.0.1 that nothing will start.
        The instance's entrypoint starts supervisord holding the data folder's lock first, so
        its programs, and `docker exec` into it, find the instance.
        """
        url = self["postgres_url_raw"]
        if url:
            return url
        from server.core import instancelock
        from server.core.embedded_pg import (
            url,  # the owner role, its password in a 0600 file
        )

        if instancelock.holder(self.data_dir) is None:
            raise ConfigError(f"AYON_POSTGRES_URL is not set, and no instance with the embedded PostgreSQL runs on "
                              f"AYON_DATA_DIR {self.data_dir}: set AYON_POSTGRES_URL to the database's URL")
        return url(self.data_dir, self.embedded_pg_port)

    @property
    def session_url(self) -> str:
        """The URL for LISTEN: AYON_POSTGRES_SESSION_URL, or else AYON_POSTGRES_URL's."""
        return self["postgres_session_url"] or self.postgres_url

    @property
    def pooled(self) -> bool:
        """AYON_POSTGRES_URL may be behind a transaction pooler: a session URL of its own says so."""
        return self.session_url != self.postgres_url

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
            shown = urls.masked(value) if key in ("postgres_url", "postgres_session_url") else "***"
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        rows.append((setting.name, shown))
    return rows


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
