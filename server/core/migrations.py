"""Checksummed, append-only SQL migrations under one advisory lock."""

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psycopg2

from server.core import db, retry
from server.core.errors import DatabaseUnavailable, SchemaError, first_line

log = logging.getLogger("ayon.migrations")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
LOCK = "ayon.migrate"

TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations shipped with this code, in order."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise SchemaError(f"migration file {path.name}: expected NNNN_short_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaError("two migration files share a version number")
    return found


def _applied(cur) -> dict[int, tuple[str, str]]:
    cur.execute("SELECT to_regclass('schema_migrations')")
    if cur.fetchone()[0] is None:
        return {}
    cur.execute("SELECT version, name, sha256 FROM schema_migrations ORDER BY version")
    return {v: (n, s) for v, n, s in cur.fetchall()}


def _check(applied: dict[int, tuple[str, str]], known: list[Migration]) -> list[Migration]:
    """Refuse edited or unknown applied migrations; return the pending ones."""
    by_version = {m.version: m for m in known}
    for version, (name, sha) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise SchemaError(
                f"the database has migration {version:04d}_{name} that this code does not know "
                "(a newer schema); run a server version that includes it"
            )
        if migration.sha256 != sha:
            raise SchemaError(
                f"migration {migration.filename} was edited after it was applied "
                f"(sha256 {migration.sha256[:12]} in code, {sha[:12]} in the database); "
                "restore the file and put the change in a new migration"
            )
    return [m for m in known if m.version not in applied]


def migrate(url: str, say: Callable[[str], None] = log.info, directory: Path = MIGRATIONS_DIR) -> int:
    """Apply pending migrations under the advisory lock; returns how many were applied."""
    known = load(directory)
    conn = db.connect(url, "ayon-migrate")
    try:
        # A transaction-level lock on a connection of its own: it never outlives this process, also
        # through a transaction pooler (db.held_lock), while each file commits on `conn`.
        with db.held_lock(url, LOCK, "ayon-migrate-lock", wait=True):
            with conn, conn.cursor() as cur:
                cur.execute(TRACKING_TABLE)
                pending = _check(_applied(cur), known)
            for migration in pending:
                started = time.monotonic()
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute(migration.sql)
                        cur.execute(
                            "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.sha256),
                        )
                except psycopg2.Error as exc:
                    raise SchemaError(f"migration {migration.filename} failed, nothing of it applied: "
                                      f"{first_line(exc)}") from exc
                say(f"applied migration {migration.filename} ({(time.monotonic() - started) * 1000:.0f} ms)")
            return len(pending)
    finally:
        conn.close()


@dataclass(frozen=True)
class SchemaStatus:
    current: bool
    version: int  # highest applied, 0 for none
    expected: int
    reason: str


def status(database: "db.Database", directory: Path = MIGRATIONS_DIR) -> SchemaStatus:
    """Whether the schema is exactly what this code expects (IsSchemaUpToDate)."""
    known = load(directory)
    expected = known[-1].version if known else 0
    with database.transaction() as cur:
        applied = _applied(cur)
    version = max(applied, default=0)
    try:
        pending = _check(applied, known)
    except SchemaError as exc:
        return SchemaStatus(False, version, expected, str(exc))
    if pending:
        return SchemaStatus(False, version, expected, f"{len(pending)} migration(s) not applied yet")
    return SchemaStatus(True, version, expected, "current")


def wait_until_current(
    database: "db.Database", timeout: float, say: Callable[[str], None],
    stop: threading.Event | Callable[[], bool] | None = None,
) -> SchemaStatus:
    """Block until setup has brought the schema up to date (or time runs out)."""

    def current() -> SchemaStatus:
        found = status(database)
        if not found.current:
            if "does not know" in found.reason or "was edited" in found.reason:
                raise SchemaError(found.reason)
            raise retry.NotYet(found.reason)
        return found

    try:
        return retry.Retry("setup to bring the schema up to date", first=0.5, factor=1, jitter=0, timeout=timeout,
                           stop=stop, say=say, say_every=5).call(current, retry_on=db.BROKEN)
    except retry.GaveUp as exc:
        if exc.stopped:
            raise DatabaseUnavailable("stopped while waiting for the schema") from None
        raise DatabaseUnavailable(
            f"the database schema is not current after {int(timeout)} s ({exc.reason}); is setup running?"
        ) from None
