"""PostgreSQL access for every process: a small pool, transactions, advisory locks, the LISTEN check."""

import copy
import hashlib
import logging
import os
import re
import secrets
import select
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from server.core import retry
from server.core.errors import ConfigError, DatabaseUnavailable, first_line

log = logging.getLogger("ayon.db")

psycopg2.extras.register_uuid()

# Errors that mean the connection itself is gone, not that the statement failed.
BROKEN = (psycopg2.OperationalError, psycopg2.InterfaceError)

# The fleet-wide lock of a maintenance run (maintenance/runner.py), named here so the doctor can find its holder.
MAINTENANCE_LOCK = "ayon.maintenance"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class Connection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers the statements prepared on it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prepared: dict[str, tuple[str, list[str]]] = {}
        self.plain = False  # True: never PREPARE (a transaction pooler may be in the path, see Database)
        self.idle_since = 0.0  # monotonic time it went back to its pool
        self.budgeted: "Budget | None" = None  # the budget this open connection counts against


def connect(url: str, application_name: str = "ayon", timeout: int = 5):
    # No libpq `options` (`-c name=value` at startup): a pooler such as PgBouncer refuses the connection
    # ("unsupported startup parameter: options"). Session values are SET inside transactions instead.
    return psycopg2.connect(url, application_name=application_name, connect_timeout=timeout,
                            connection_factory=Connection)


Settings = Callable[[], dict[str, str]]  # PostgreSQL settings by name, computed when a transaction starts


def apply_settings(cur, settings: dict[str, str], local: bool = True) -> None:
    """Set PostgreSQL settings in one round trip: for the transaction (`SET LOCAL`), or for the session."""
    if settings:
        calls = ", ".join(["set_config(%s, %s, %s)"] * len(settings))
        cur.execute(f"SELECT {calls}", [x for name, value in settings.items() for x in (name, value, local)])


_NAMED = re.compile(r"%\((\w+)\)s")


def positional(sql: str) -> tuple[str, list[str]]:
    """`sql` with %(name)s parameters as PostgreSQL's $1, $2... (and %% as %), and the names in that order."""
    names = list(dict.fromkeys(_NAMED.findall(sql)))
    return _NAMED.sub(lambda m: f"${names.index(m[1]) + 1}", sql).replace("%%", "%"), names


def execute_prepared(conn, cur, sql: str, params: dict) -> None:
    """Run `sql` (with %(name)s parameters) as a server-side prepared statement.

    PostgreSQL then plans it once per connection instead of on every call: for
    the API's page queries planning was about 40 % of the statement's time.
    On a connection marked `plain` it is sent as a plain statement: a
    prepared statement's name lives in one server session, which a
    transaction pooler does not keep for us.
    """
    if conn.plain:
        cur.execute(sql, params)
        return
    found = conn.prepared.get(sql)
    if found is None:
        body, names = positional(sql)
        found = (f"ayon_{len(conn.prepared)}", names)
        cur.execute(f"PREPARE {found[0]} AS {body}")
        conn.prepared[sql] = found
    name, names = found
    if names:
        cur.execute(f"EXECUTE {name} ({', '.join(['%s'] * len(names))})", [params[n] for n in names])
    else:
        cur.execute(f"EXECUTE {name}")


# Seconds an unused pooled connection stays open (AYON_DB_IDLE_SECONDS); pools shrink to none.
IDLE_SECONDS = 30.0
WAIT_SECONDS = 30  # the longest a borrower waits for a free connection


class Budget:
    """How many connections one process's pools may hold open at once, together (AYON_DB_POOL_SIZE).

    A web worker's thread pool (Database) and its event loop's (aiodb.AsyncReader) share one: the worker
    holds at most `size`, whichever side uses them. A side that finds it full takes the slot of an idle
    connection of the other (`droppers`: each closes one of its idle connections, at once or soon), else
    waits until a connection is given back to a pool (`wake`) or closed (`give`), and looks again.
    """

    def __init__(self, size: int):
        self.size = size
        self.open = 0
        self.generation = 0  # counts gives and wakes: a waiter that saw an older one looks again at once
        self._cond = threading.Condition(threading.Lock())
        self._waiters: list = []  # (loop, future) of asynchronous borrowers
        self.droppers: list[Callable[[], bool]] = []

    def try_take(self) -> bool:
        """A slot for one new connection now, if one is free or an idle connection elsewhere gives one up."""
        with self._cond:
            if self.open < self.size:
                self.open += 1
                return True
        if any(drop() for drop in list(self.droppers)):
            with self._cond:
                if self.open < self.size:
                    self.open += 1
                    return True
        return False

    def wait(self, seen: int, timeout: float) -> None:
        """Block this thread until the generation moves on from `seen`, or `timeout` s."""
        with self._cond:
            if self.generation == seen:
                self._cond.wait(timeout)

    def add_waiter(self, loop, future, seen: int) -> None:
        """Resolve `future` (on `loop`) when the generation moves on from `seen`."""
        with self._cond:
            if self.generation == seen:
                self._waiters.append((loop, future))
                return
        future.set_result(None)

    def remove_waiter(self, loop, future) -> None:
        with self._cond:
            if (loop, future) in self._waiters:
                self._waiters.remove((loop, future))

    def give(self) -> None:
        """One connection closed: its slot is free."""
        with self._cond:
            self.open -= 1
        self.wake()

    def wake(self) -> None:
        """Something changed (a connection closed, or went back idle to a pool): waiters look again."""
        with self._cond:
            self.generation += 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(None))


def discard(conn) -> None:
    """Close a pooled connection and give its slot back to the budget it counted against."""
    budget, conn.budgeted = conn.budgeted, None
    try:
        conn.close()
    finally:
        if budget is not None:
            budget.give()


class Database:
    """A thread-safe pool that connects lazily, drops broken connections and closes idle ones.

    At most `size` connections are borrowed at once; `budget` (its own by default, a web worker's shared
    one otherwise) bounds how many are open. A connection unused for `idle` seconds is closed (by the
    process's reaper thread; `idle=0`: as soon as it is given back), so an idle process holds none.
    """

    def __init__(self, url: str, size: int = 4, application_name: str = "ayon", prepare: bool = True,
                 idle: float | None = None, budget: Budget | None = None):
        self.url = url
        self.prepare = prepare  # False: plain statements only (AYON_POSTGRES_URL goes through a transaction pooler)
        self.settings: Settings | None = None  # see with_settings
        self.size = size
        self.application_name = application_name
        self.idle = IDLE_SECONDS if idle is None else idle
        self.budget = budget or Budget(size)
        self.budget.droppers.append(self.drop_one)
        self._idle: list = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._pid = os.getpid()
        if self.idle > 0:
            _reaper.watch(self)

    def _checkout(self, deadline: float | None = None):
        deadline = time.monotonic() + WAIT_SECONDS if deadline is None else deadline
        while True:
            seen = self.budget.generation
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None:
                if self._alive(conn):
                    return conn
                discard(conn)
                continue
            if self.budget.try_take():
                try:
                    conn = connect(self.url, self.application_name)
                except BaseException:
                    self.budget.give()
                    raise
                conn.budgeted = self.budget
                conn.plain = not self.prepare
                return conn
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(f"no free database connection within {WAIT_SECONDS} s")
            self.budget.wait(seen, min(left, 0.5))

    @staticmethod
    def _alive(conn) -> bool:
        # An idle pooled connection has nothing to read: if its socket is readable,
        # the server sent a termination notice or closed it (a PostgreSQL restart).
        if conn.closed:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError, *BROKEN):
            return False
        return not readable and conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Borrow a connection; it goes back rolled back, or is dropped if broken."""
        deadline = time.monotonic() + WAIT_SECONDS
        if not self._slots.acquire(timeout=WAIT_SECONDS):
            raise DatabaseUnavailable(f"no free database connection within {WAIT_SECONDS} s")
        conn = None
        try:
            conn = self._checkout(deadline)
            yield conn
        except BROKEN:
            if conn is not None:
                discard(conn)
            raise
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _give_back(self, conn) -> None:
        if conn.closed:
            discard(conn)
            return
        try:
            if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                conn.rollback()
            if conn.autocommit:
                conn.autocommit = False
        except BROKEN:
            discard(conn)
            return
        if self.idle <= 0:
            discard(conn)
            return
        conn.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(conn)
        self.budget.wake()

    def drop_one(self) -> bool:
        """Close one idle connection, giving its slot to the budget; False when none is idle."""
        with self._lock:
            conn = self._idle.pop(0) if self._idle else None
        if conn is None:
            return False
        discard(conn)
        return True

    def shrink(self, now: float | None = None) -> int:
        """Close the connections unused for `idle` seconds; how many were closed."""
        if os.getpid() != self._pid:
            return 0  # a forked child's copy: the sessions are the parent's
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [c for c in self._idle if now - c.idle_since >= self.idle]
            self._idle[:] = [c for c in self._idle if c not in old]  # in place: with_settings twins share it
        for conn in old:
            discard(conn)
        return len(old)

    def with_settings(self, settings: Settings) -> "Database":
        """The same pool (its connections, its limit) whose transactions each start with `settings()` SET LOCAL.

        SET LOCAL lasts until the transaction ends, so it holds behind a transaction pooler (a session SET
        could land on another server connection) and never leaks to the next borrower of a connection.
        """
        twin = copy.copy(self)  # shares _idle, _lock and _slots
        twin.settings = settings
        return twin

    def session_settings(self) -> dict[str, str]:
        """What `with_settings` would SET now, for a statement that cannot run in a transaction (VACUUM)."""
        return self.settings() if self.settings else {}

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        with self.connection() as conn:
            with conn:
                with conn.cursor() as cur:
                    if self.settings:
                        apply_settings(cur, self.settings(), local=True)
                    yield cur

    def fetchall(self, sql: str, params: Any = None) -> list[tuple]:
        with self.transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def fetchone(self, sql: str, params: Any = None) -> tuple | None:
        with self.transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    def execute(self, sql: str, params: Any = None) -> int:
        with self.transaction() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
        for conn in idle:
            discard(conn)


class _Reaper:
    """One daemon thread per process that closes the idle connections of every pool in it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pools: weakref.WeakSet = weakref.WeakSet()
        self._pid = None  # the process whose thread runs: a fork starts its own on its first pool
        self._watched = threading.Event()  # a new pool may idle out sooner than the current pause

    def watch(self, pool: Database) -> None:
        with self._lock:
            self._pools.add(pool)
            self._watched.set()
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="db-reaper", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                pools = list(self._pools)
            # A quarter of the shortest idle time: a connection closes at most 25 % late.
            pause = min([p.idle for p in pools] or [IDLE_SECONDS]) / 4
            del pools
            self._watched.wait(max(0.2, min(pause, 5.0)))
            self._watched.clear()
            with self._lock:
                pools = list(self._pools)
            for pool in pools:
                try:
                    pool.shrink()
                except Exception:  # a reaper that dies would leave every pool to grow: log, go on
                    log.exception("closing idle database connections failed")
            del pools


_reaper = _Reaper()


def _after_fork() -> None:
    # The parent's reaper thread may have held the lock at the fork: the child starts with a fresh one.
    _reaper._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@contextmanager
def held_lock(url: str, name: str, application_name: str, wait: bool = False) -> Iterator[bool]:
    """A transaction-level advisory lock, held by an open transaction on a connection of its own for the block.

    Yields whether it was taken (always, with `wait`). The lock ends with that
    transaction: at the block's end, or when the process dies and its
    connection closes. Through a pooler too: a transaction pins its server
    connection, and PgBouncer closes a server connection whose client left
    mid-transaction. A session lock (pg_advisory_lock) instead stays with
    whichever pooled server connection took it, after its taker is gone.
    """
    conn = connect(url, application_name)
    try:
        with conn.cursor() as cur:
            # The transaction idles while the holder works: a server-wide idle timeout must not end it.
            cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            if wait:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))
                taken = True
            else:
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_key(name),))
                taken = cur.fetchone()[0]
        yield taken
    finally:
        conn.close()  # ends the transaction, and with it the lock


def try_advisory_lock(conn, name: str) -> bool:
    """Take a session-level advisory lock if free; True when taken.

    Only on a direct or session-pooled connection: through a transaction pooler it outlives its taker
    (use held_lock).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(name),))
        taken = cur.fetchone()[0]
    if not conn.autocommit:
        conn.commit()
    return taken


def notifications_arrive(url: str, timeout: float = 5.0) -> bool:
    """Whether a NOTIFY reaches a LISTEN on `url` within `timeout` s: False through a transaction pooler.

    There LISTEN registers on whichever server connection ran it, which goes
    back to the pool; nothing ever reaches the client. A random channel keeps
    concurrent checks apart.
    """
    channel = f"ayon_check_{secrets.token_hex(8)}"
    listener = connect(url, "ayon-listen-check")
    sender = None
    try:
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute(f"LISTEN {channel}")
        sender = connect(url, "ayon-listen-check")
        sender.autocommit = True
        with sender.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, 'check')", (channel,))
        deadline = time.monotonic() + timeout
        while True:
            listener.poll()
            if any(n.channel == channel for n in listener.notifies):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([listener.fileno()], [], [], min(left, 0.5))
    finally:
        listener.close()
        if sender is not None:
            sender.close()


def check_listen(url: str, setting: str, timeout: float = 5.0) -> None:
    """Refuse a URL on which LISTEN would stay silent (ConfigError, exit 2), naming the setting to fix."""
    if not notifications_arrive(url, timeout):
        raise ConfigError(
            f"{setting}: LISTEN/NOTIFY does not work through {host_port(url)} (a notification did not arrive "
            f"within {timeout:g} s; a transaction pooler such as PgBouncer's pool_mode=transaction drops it); "
            "set AYON_POSTGRES_SESSION_URL to a direct or session-pooled URL of the same database"
        )


_SERVER_PREFIX = re.compile(r"^connection to server (at|on) .*? failed: ")


def wait_for_postgres(url: str, timeout: float, say: Callable[[str], None], every: float = 3.0) -> None:
    """Poll until the server at `url` accepts connections; a progress line every few seconds."""
    where = host_port(url)
    server_url = with_database(url, "postgres")

    def answer() -> None:
        try:
            connect(server_url, "ayon-wait", timeout=max(1, min(3, int(timeout)))).close()
        except psycopg2.OperationalError as exc:
            # The line already names the server: what is left says why (Connection refused, FATAL: ...).
            raise retry.NotYet(_SERVER_PREFIX.sub("", first_line(exc))) from None

    try:
        retry.Retry(f"PostgreSQL at {where}", first=0.5, factor=1, jitter=0, timeout=timeout,
                    say=say, say_every=every).call(answer)
    except retry.GaveUp as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {where} did not answer within {int(timeout)} s ({exc.reason}); "
            "check AYON_POSTGRES_URL and that the server is running"
        ) from None


def create_database_if_missing(url: str) -> bool:
    """Create the database named in `url`; True when this call created it."""
    name = database_name(url)
    conn = connect(with_database(url, "postgres"), "ayon-setup")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                return False  # another setup won the race
            return True
    finally:
        conn.close()
