"""Checksummed, append-only SQL migrations under one advisory lock, each declaring its kind.

An *expand* migration leaves a schema the previous release still works on (new tables, nullable
columns, indexes built CONCURRENTLY); a *contract* one needs every instance on the new release
(drops, renames, NOT NULL on existing data). Setup applies expand migrations and stops before the
first contract one, which the contract step applies once no older release runs (`contract=True`).
Each applied migration's kind is kept in `schema_migrations`, so an older release can tell a
newer schema it may serve on (only expand migrations it does not know) from one it may not.
"""

import functools
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg2
import psycopg2.errors

from server.core import db, retry
from server.core.errors import AyonError, DatabaseUnavailable, SchemaError, first_line

log = logging.getLogger("ayon.migrations")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
KIND_LINE = re.compile(r"-- kind: *(\S*)[ \t]*(?:\n|$)")
KINDS = ("expand", "contract")
LOCK = "ayon.migrate"
CONTRACT_COMMAND = "python -m procs.setup --contract"
LOCK_TIMEOUT = 5.0  # seconds; setup passes AYON_MIGRATION_LOCK_TIMEOUT
ATTEMPTS = 3  # a migration that met lock_timeout is tried again this many times in all

TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
# Statements that cannot run in a transaction block; a file with one holds only such statements
# (each is then idempotent, and an index a failed build left invalid is dropped before it is retried).
_CONCURRENT = re.compile(r"\bCONCURRENTLY\b")
_CREATE_CONCURRENTLY = re.compile(r"^CREATE (?:UNIQUE )?INDEX CONCURRENTLY IF NOT EXISTS (\S+) ON ")
_DROP_CONCURRENTLY = re.compile(r"^DROP INDEX CONCURRENTLY IF EXISTS (\S+)$")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


class MigrationLocked(AyonError):
    """A migration waited past lock_timeout for a table lock every time it was tried: run it again later."""


@dataclass(frozen=True)
class Statement:
    text: str  # as written
    bare: str  # upper case, comments out, literals as '?', blanks folded: what checks match on


def statements(sql: str) -> list[Statement]:
    """The file's statements, split on top-level semicolons (quotes, dollar quotes and comments respected)."""
    found, text, bare, i, n = [], [], [], 0, len(sql)

    def flush():
        written, plain = "".join(text).strip(), " ".join("".join(bare).split()).upper()
        if plain:
            found.append(Statement(written, plain))
        text.clear()
        bare.clear()

    while i < n:
        char = sql[i]
        if sql.startswith("--", i) or sql.startswith("/*", i):
            end = sql.find("\n", i) if char == "-" else sql.find("*/", i + 2)
            end = n if end < 0 else end if char == "-" else end + 2
            text.append(sql[i:end])
            bare.append(" ")
            i = end
            continue
        if char in "'\"":
            end = i + 1
            while end < n and not (sql[end] == char and sql[end + 1:end + 2] != char):
                end += 2 if sql[end] == char else 1
            end = min(end + 1, n)
            text.append(sql[i:end])
            bare.append(" '?' " if char == "'" else sql[i:end])
            i = end
            continue
        dollar = _DOLLAR.match(sql, i) if char == "$" else None
        if dollar:
            close = sql.find(dollar[0], dollar.end())
            end = n if close < 0 else close + len(dollar[0])
            text.append(sql[i:end])
            bare.append(" $$?$$ ")
            i = end
            continue
        if char == ";":
            flush()
        else:
            text.append(char)
            bare.append(char)
        i += 1
    flush()
    return found


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str  # the file without its kind line: what the checksum covers
    kind: str = "expand"
    steps: tuple[Statement, ...] = field(default=(), compare=False)  # for a file run outside a transaction

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def concurrent(self) -> bool:
        return bool(self.steps)


def parse(filename: str, text: str) -> Migration:
    """One migration file; a file name, kind line or CONCURRENTLY file this code cannot run is a SchemaError."""
    match = FILE_PATTERN.match(filename)
    if not match:
        raise SchemaError(f"migration file {filename}: expected NNNN_short_name.sql")
    kind_line = KIND_LINE.match(text)
    if not kind_line:
        raise SchemaError(f"migration file {filename}: its first line must declare its kind, "
                          "`-- kind: expand` or `-- kind: contract` (docs/architecture.md, Migrations)")
    if kind_line[1] not in KINDS:
        raise SchemaError(f"migration file {filename}: unknown kind {kind_line[1]!r} in its first line "
                          "(expected expand or contract)")
    # The kind line is not checksummed: files applied before kinds existed keep their sha256.
    sql = text[kind_line.end():]
    steps = statements(sql)
    concurrent = any(_CONCURRENT.search(s.bare) for s in steps)
    if concurrent and not all(_CREATE_CONCURRENTLY.match(s.bare) or _DROP_CONCURRENTLY.match(s.bare) for s in steps):
        raise SchemaError(
            f"migration file {filename}: CONCURRENTLY runs outside a transaction, so the file may hold only "
            "`CREATE INDEX CONCURRENTLY IF NOT EXISTS` and `DROP INDEX CONCURRENTLY IF EXISTS` statements; "
            "put the others in a migration of their own")
    return Migration(int(match[1]), match[2], sql, kind_line[1], tuple(steps) if concurrent else ())


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations shipped with this code, in order."""
    found = [parse(path.name, path.read_text()) for path in sorted(directory.glob("*.sql"))]
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaError("two migration files share a version number")
    return found


@functools.lru_cache(maxsize=None)
def code_schema(directory: Path = MIGRATIONS_DIR) -> int:
    """The highest migration this code knows (what its heartbeat says it knows)."""
    known = load(directory)
    return known[-1].version if known else 0


@dataclass(frozen=True)
class Applied:
    name: str
    sha256: str
    kind: str


def _has_column(cur, table: str, column: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                "AND NOT attisdropped)", (table, column))
    return cur.fetchone()[0]


def _applied(cur) -> dict[int, Applied]:
    cur.execute("SELECT to_regclass('schema_migrations')")
    if cur.fetchone()[0] is None:
        return {}
    # Before 0006 there was no kind column: every migration then was an expand one.
    kind = "kind" if _has_column(cur, "schema_migrations", "kind") else "'expand'"
    cur.execute(f"SELECT version, name, sha256, {kind} FROM schema_migrations ORDER BY version")
    return {v: Applied(n, s, k) for v, n, s, k in cur.fetchall()}


@dataclass(frozen=True)
class Assessment:
    pending: list[Migration]  # this code's migrations not applied yet, in order
    newer: list[str]  # applied expand migrations this code does not know (a compatible newer schema)


def _assess(applied: dict[int, Applied], known: list[Migration]) -> Assessment:
    """Refuse edited applied migrations and newer contract ones (SchemaError); return what is pending."""
    by_version = {m.version: m for m in known}
    newer: list[int] = []
    for version, row in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            if row.kind != "expand":
                raise SchemaError(
                    f"the database has migration {version:04d}_{row.name} that this code does not know "
                    f"(a newer schema, and a {row.kind} migration: this release cannot work on it); "
                    "run a server version that includes it")
            newer.append(version)
            continue
        if migration.sha256 != row.sha256:
            raise SchemaError(
                f"migration {migration.filename} was edited after it was applied "
                f"(sha256 {migration.sha256[:12]} in code, {row.sha256[:12]} in the database); "
                "restore the file and put the change in a new migration"
            )
        if migration.kind != row.kind:
            raise SchemaError(
                f"migration {migration.filename} changed its kind after it was applied ({row.kind} in the "
                f"database, {migration.kind} in code); restore its first line")
    pending = [m for m in known if m.version not in applied]
    if pending and newer and newer[0] < pending[-1].version:
        raise SchemaError(
            f"migration {pending[0].filename} is not applied, but the database has {newer[0]:04d}_"
            f"{applied[newer[0]].name}, which this code does not know; run a server version that includes both")
    return Assessment(pending, [f"{v:04d}_{applied[v].name}" for v in newer])


def _record(cur, migration: Migration) -> None:
    if _has_column(cur, "schema_migrations", "kind"):  # from 0006 on (also within 0006's own transaction)
        cur.execute("INSERT INTO schema_migrations (version, name, sha256, kind) VALUES (%s, %s, %s, %s)",
                    (migration.version, migration.name, migration.sha256, migration.kind))
    else:
        cur.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.sha256))


def _lock_timeout(seconds: float) -> str:
    return f"{max(1, int(seconds * 1000))}ms"


def _apply_in_transaction(conn, migration: Migration, lock_timeout: float) -> None:
    with conn, conn.cursor() as cur:
        # Every statement of the file: one waiting behind a long query gives up instead of queueing
        # every request on its table behind itself.
        cur.execute(f"SET LOCAL lock_timeout = '{_lock_timeout(lock_timeout)}'")
        cur.execute(migration.sql)
        _record(cur, migration)


def _drop_invalid_indexes(conn, migration: Migration) -> None:
    """An index a failed or killed CREATE INDEX CONCURRENTLY left behind, unusable: dropped, so the build can run again."""
    for step in migration.steps:
        created = _CREATE_CONCURRENTLY.match(step.bare)
        if created:
            with conn.cursor() as cur:
                cur.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (created[1],))
                row = cur.fetchone()
                if row and row[0]:
                    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {created[1]}")


def _apply_outside_transaction(url: str, migration: Migration, lock_timeout: float) -> None:
    # A session of its own (direct or session-pooled): the session's lock_timeout must hold for the next statement.
    conn = db.connect(url, "ayon-migrate-concurrently")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = '{_lock_timeout(lock_timeout)}'")
        _drop_invalid_indexes(conn, migration)
        try:
            for step in migration.steps:
                with conn.cursor() as cur:
                    cur.execute(step.text)
        except psycopg2.Error:
            try:  # at once when it can; the drop waits for the same sessions, so else the next run does it
                if not conn.closed:
                    _drop_invalid_indexes(conn, migration)
            except psycopg2.Error:
                pass
            raise
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            _record(cur, migration)
    finally:
        conn.close()


def _apply(url: str, session_url: str, conn, migration: Migration, lock_timeout: float, attempts: int,
           say: Callable[[str], None]) -> None:
    for attempt in range(1, attempts + 1):
        try:
            if migration.concurrent:
                _apply_outside_transaction(session_url, migration, lock_timeout)
            else:
                _apply_in_transaction(conn, migration, lock_timeout)
            return
        except psycopg2.errors.LockNotAvailable as exc:
            waited = f"waited {lock_timeout:g} s for a lock (lock_timeout)"
            if attempt == attempts:
                raise MigrationLocked(
                    f"migration {migration.filename} {waited} {attempts} times, nothing of it applied: "
                    f"{first_line(exc)}; a long transaction holds its table (see pg_stat_activity): "
                    "run setup again once it ends") from None
            say(f"migration {migration.filename} {waited}, nothing of it applied; trying again ({attempt}/{attempts})")
            time.sleep(attempt)
        except psycopg2.Error as exc:
            raise SchemaError(f"migration {migration.filename} failed, nothing of it applied: "
                              f"{first_line(exc)}") from exc


def migrate(url: str, say: Callable[[str], None] = log.info, directory: Path = MIGRATIONS_DIR, *,
            contract: bool = False, lock_timeout: float = LOCK_TIMEOUT, attempts: int = ATTEMPTS,
            session_url: str | None = None) -> int:
    """Apply pending migrations under the advisory lock, in order; returns how many were applied.

    Without `contract`, stops before the first contract migration (saying so), except on a database
    with no migration applied yet, where no older release can run. `session_url` is where files
    that run outside a transaction (CONCURRENTLY) go: a direct or session-pooled URL (default `url`).
    """
    known = load(directory)
    conn = db.connect(url, "ayon-migrate")
    try:
        # A transaction-level lock on a connection of its own: it never outlives this process, also
        # through a transaction pooler (db.held_lock), while each file commits on `conn`.
        with db.held_lock(url, LOCK, "ayon-migrate-lock", wait=True):
            with conn, conn.cursor() as cur:
                cur.execute(TRACKING_TABLE)
                applied = _applied(cur)
                found = _assess(applied, known)
            if found.newer:
                say(f"the database has {len(found.newer)} newer expand migration(s) this code does not know "
                    f"({', '.join(found.newer)}): it works on them")
            done = 0
            for migration in found.pending:
                if migration.kind == "contract" and not contract and applied:
                    left = found.pending[done:]
                    say(f"stopping before contract migration {migration.filename} ({len(left)} migration(s) left): "
                        f"run `{CONTRACT_COMMAND}` once every instance runs this release")
                    break
                started = time.monotonic()
                _apply(url, session_url or url, conn, migration, lock_timeout, attempts, say)
                done += 1
                say(f"applied migration {migration.filename} "
                    f"({migration.kind}, {(time.monotonic() - started) * 1000:.0f} ms)")
            return done
    finally:
        conn.close()


@dataclass(frozen=True)
class SchemaStatus:
    current: bool  # this code can serve on it: nothing it needs is missing, nothing newer it cannot use
    version: int  # highest applied, 0 for none
    expected: int  # highest this code knows
    reason: str
    fatal: bool = False  # waiting cannot help: an edited migration, a newer contract one
    newer: tuple[str, ...] = ()  # applied expand migrations this code does not know
    contract_pending: tuple[str, ...] = ()  # this code's contract migrations (and what follows) not applied yet


def status(database: "db.Database", directory: Path = MIGRATIONS_DIR) -> SchemaStatus:
    """Whether this code can work on the schema (IsSchemaUpToDate, allowing a compatible newer one)."""
    known = load(directory)
    expected = known[-1].version if known else 0
    with database.transaction() as cur:
        applied = _applied(cur)
    version = max(applied, default=0)
    try:
        found = _assess(applied, known)
    except SchemaError as exc:
        return SchemaStatus(False, version, expected, str(exc), fatal=True)
    newer = tuple(found.newer)
    if found.pending and found.pending[0].kind == "contract" and applied:
        left = tuple(m.filename for m in found.pending)
        return SchemaStatus(True, version, expected, f"current; contract migration(s) not applied yet: "
                            f"{', '.join(left)} (`{CONTRACT_COMMAND}`)", newer=newer, contract_pending=left)
    if found.pending:
        return SchemaStatus(False, version, expected, f"{len(found.pending)} migration(s) not applied yet",
                            newer=newer)
    if newer:
        return SchemaStatus(True, version, expected, f"current; the database also has newer expand "
                            f"migration(s) {', '.join(newer)}, which this code works on", newer=newer)
    return SchemaStatus(True, version, expected, "current")


def wait_until_current(
    database: "db.Database", timeout: float, say: Callable[[str], None],
    stop: threading.Event | Callable[[], bool] | None = None,
) -> SchemaStatus:
    """Block until setup has brought the schema up to date (or time runs out)."""

    def current() -> SchemaStatus:
        found = status(database)
        if not found.current:
            if found.fatal:
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
