"""PostgreSQL access for every process: a small pool, transactions, advisory locks, the LISTEN check."""

import copy
import hashlib
import logging
import math
import os
import re
import secrets
import select
import socket
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
    """Where a URL points, for a message: `host:port`, or every `host:port` of a multi-host URL."""
    parts = urlsplit(url)
    if "," in parts.netloc:  # libpq's multi-host form: postgresql://u:p@a:1,b:2/db (urlsplit cannot parse its port)
        hosts = parts.netloc.rpartition("@")[2]
        return ",".join(h if ":" in h.strip("[]") else f"{h}:5432" for h in hosts.split(","))
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


CONNECT_TIMEOUT = 5


class NoAnswer(psycopg2.OperationalError):
    """PostgreSQL did not answer within a bound: stopped, overloaded, or failing over (a broken connection)."""


def connect(url: str, application_name: str = "ayon", timeout: int = CONNECT_TIMEOUT):
    # No libpq `options` (`-c name=value` at startup): a pooler such as PgBouncer refuses the connection
    # ("unsupported startup parameter: options"). Session values are SET inside transactions instead.
    # connect_timeout bounds the whole connection, each host of a multi-host URL in turn.
    return psycopg2.connect(url, application_name=application_name, connect_timeout=timeout,
                            connection_factory=Connection)


# What each kind of process may wait for (seconds): PostgreSQL ends a statement at statement_timeout and a
# wait for a lock at lock_timeout; a server that does not answer at all (stopped, a failing disk) ends
# neither, so `answer_timeout` bounds a whole borrowing of a connection from the client side (Watchdog).
API_LIMITS = {"statement_timeout": 10, "lock_timeout": 5, "answer_timeout": 15}
PROGRAM_LIMITS = {"statement_timeout": 30, "lock_timeout": 10, "answer_timeout": 45}
PROBE_TIMEOUT = 1.5  # readiness and the database figures of /metrics: answered within 2 s whatever PostgreSQL does


class Watchdog:
    """Ends connections borrowed for longer than their bound, by shutting their socket down.

    libpq then fails the blocked call at once ("server closed the connection
    unexpectedly") and the connection is dropped. A socket shutdown is safe
    from another thread, unlike closing a connection another thread uses, and
    works in blocking mode, which COPY needs (a psycopg2 wait callback would
    bound each wait, but forbids COPY).
    """

    def __init__(self):
        self._due: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket fd)
        self._fired: set[int] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._next = 0
        self._wake_at = math.inf  # when the thread looks next (inf: it waits to be told)
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._due, self._fired, self._thread, self._cond = {}, set(), None, threading.Condition()
        self._wake_at = math.inf

    def watch(self, conn, seconds: float) -> int:
        with self._cond:
            self._next += 1
            deadline = time.monotonic() + seconds
            self._due[self._next] = (deadline, conn.fileno())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self._thread.start()
            # Woken only when this bound ends before the one it waits for: one bound for every request
            # of a pool means one wake-up per bound, not a thread switch per borrowing.
            if deadline < self._wake_at:
                self._wake_at = deadline
                self._cond.notify()
            return self._next

    def done(self, token: int) -> bool:
        """Stop watching (before the connection is closed or lent again); True when the bound had passed."""
        with self._cond:
            self._due.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[token]
                        self._fired.add(token)
                        try:  # the fd is still the connection's: done() runs before any close, under this lock
                            socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                soonest = min((deadline for deadline, _ in self._due.values()), default=None)
                self._wake_at = math.inf if soonest is None else max(now + 0.01, soonest)
                self._cond.wait(None if soonest is None else self._wake_at - now)


WATCHDOG = Watchdog()

_storage_lock = threading.Lock()
_storage: tuple[float, str] | None = None  # (time.time(), message) of the last disk-full error this process saw
STORAGE_RECENT = 60.0  # seconds a disk-full error keeps readiness at "not ready" after it was last seen
storage_note: str | None = None  # a file where processes of one instance share that error (share_storage_errors)


def share_storage_errors(path: str | None) -> None:
    """Also write a disk-full error to `path` (in the instance's run folder), so every worker's readiness sees it."""
    global storage_note
    storage_note = path


def is_disk_full(exc: BaseException) -> bool:
    # SQLSTATE 53100 disk_full: "could not extend file ...: No space left on device", on any write that grows a file.
    return getattr(exc, "pgcode", None) == "53100"


def note_failure(exc: BaseException) -> None:
    """Remember a disk-full error, for readiness."""
    global _storage
    if not is_disk_full(exc):
        return
    message = first_line(exc)
    with _storage_lock:
        _storage = (time.time(), message)
    if storage_note:
        try:
            with open(storage_note, "w") as out:
                out.write(message[:500])
        except OSError:
            pass


def storage_full(now: float | None = None) -> str | None:
    """The disk-full error seen in the last STORAGE_RECENT seconds, by this process or one that shares it."""
    now = time.time() if now is None else now
    seen = _storage
    if storage_note:
        try:
            stamp = os.stat(storage_note).st_mtime
            if seen is None or stamp > seen[0]:
                with open(storage_note) as text:
                    seen = (stamp, text.read())
        except OSError:
            pass
    if seen is not None and now - seen[0] < STORAGE_RECENT:
        return seen[1]
    return None


def failure(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, title, description) for a database failure; what to do next is in the description."""
    code = getattr(exc, "pgcode", None) or ""
    if isinstance(exc, NoAnswer):
        return 503, "Database not answering", f"{first_line(exc)}; retry shortly"
    if is_disk_full(exc):
        return 507, "Database storage full", (
            "the database's disk is full (PostgreSQL: " + first_line(exc).removeprefix("ERROR:").strip()
            + "); free space on the database server's disk or grow its volume, then retry")
    if code == "53300":
        return 503, "Database connections exhausted", (
            "PostgreSQL refuses new connections (max_connections reached); retry shortly, "
            "or lower AYON_DB_POOL_SIZE or raise max_connections")
    if code.startswith("53"):
        return 503, "Database out of resources", f"PostgreSQL: {first_line(exc)}; retry shortly"
    if code == "25006":
        return 503, "Database read-only", ("PostgreSQL accepts no writes here (a standby, or a failover in "
                                           "progress); retry shortly")
    if code.startswith("57P"):
        return 503, "Database restarting", f"PostgreSQL is shutting down or starting ({first_line(exc)}); " \
                                          "retry shortly"
    if isinstance(exc, DatabaseUnavailable):
        return 503, "Database unavailable", f"{exc}; retry shortly"
    return 503, "Database unavailable", "PostgreSQL is not reachable; retry shortly"


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
                 statement_timeout: float | None = None, lock_timeout: float | None = None,
                 answer_timeout: float | None = None, idle: float | None = None, budget: Budget | None = None):
        self.url = url
        # None: PostgreSQL's own (maintenance sets its per task). Seconds otherwise (API_LIMITS, PROGRAM_LIMITS).
        self.statement_timeout, self.lock_timeout, self.answer_timeout = statement_timeout, lock_timeout, answer_timeout
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
                bound = self.answer_timeout
                timeout = CONNECT_TIMEOUT if bound is None else max(1, min(CONNECT_TIMEOUT, int(bound)))
                try:
                    conn = connect(self.url, self.application_name, timeout)
                except psycopg2.OperationalError as exc:
                    self.budget.give()
                    if "timeout expired" in str(exc):  # it took the connection, then said nothing (stopped, hung)
                        raise NoAnswer(f"PostgreSQL at {host_port(self.url)} did not answer within {timeout} s "
                                       "(connecting)") from exc
                    raise
                except BaseException:
                    self.budget.give()
                    raise
                conn.budgeted = self.budget
                conn.plain = not self.prepare
                if self.prepare and self.timeouts():
                    # A direct connection keeps its session: SET once. Through a pooler, SET LOCAL per transaction.
                    try:
                        with conn.cursor() as cur:
                            apply_settings(cur, self.timeouts(), local=False)
                        conn.commit()
                    except BaseException:
                        discard(conn)
                        raise
                return conn
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer("no free database connection in time (every one is busy)")
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

    def timeouts(self) -> dict[str, str]:
        """The statement and lock timeouts PostgreSQL applies to this pool's statements."""
        found = {}
        if self.statement_timeout:
            found["statement_timeout"] = f"{int(self.statement_timeout * 1000)}ms"
        if self.lock_timeout:
            found["lock_timeout"] = f"{int(self.lock_timeout * 1000)}ms"
        return found

    def bounded(self, seconds: float) -> "Database":
        """The same pool, whose borrowings end after `seconds` whatever PostgreSQL does (readiness, /metrics)."""
        twin = copy.copy(self)  # shares _idle, _lock and _slots
        twin.answer_timeout = seconds
        return twin

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Borrow a connection; it goes back rolled back, or is dropped if broken.

        With an answer_timeout the whole borrowing (waiting for a free slot,
        connecting, every statement) ends within it: NoAnswer, a broken connection.
        """
        bound = self.answer_timeout
        wait = WAIT_SECONDS if bound is None else min(WAIT_SECONDS, bound)
        deadline = time.monotonic() + wait
        if not self._slots.acquire(timeout=wait):
            raise NoAnswer(f"no free database connection within {wait:g} s (every one is busy)")
        conn = None
        token = None
        try:
            conn = self._checkout(deadline)
            if bound is not None:
                token = WATCHDOG.watch(conn, bound)
            yield conn
        except BROKEN as exc:
            fired = token is not None and WATCHDOG.done(token)
            token = None
            if conn is not None:
                discard(conn)
            note_failure(exc)
            if fired and not isinstance(exc, NoAnswer):
                raise NoAnswer(f"PostgreSQL at {host_port(self.url)} did not answer within {bound:g} s") from exc
            raise
        except psycopg2.Error as exc:
            note_failure(exc)
            raise
        finally:
            if token is not None and WATCHDOG.done(token) and conn is not None:
                conn.close()  # its socket was shut down just as the borrowing ended
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
                    settings = self.timeouts() if conn.plain else {}
                    if self.settings:
                        settings = {**settings, **self.settings()}
                    apply_settings(cur, settings, local=True)
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


# The check's NOTIFY, on a channel of its own.
CHECK_NOTIFY = "SELECT pg_notify(%s, 'check')"


def notification_arrives(listener, send: Callable[[str], None], timeout: float = 5.0) -> bool:
    """Whether a NOTIFY that `send(channel)` makes on another connection reaches the autocommit `listener`.

    False through a transaction pooler: there LISTEN registers on whichever
    server connection ran it, which goes back to the pool, and nothing ever
    reaches the client. A random channel keeps concurrent checks apart; only
    the check's own notification is taken from `listener.notifies`, the rest
    stay for its owner.
    """
    channel = f"ayon_check_{secrets.token_hex(8)}"
    with listener.cursor() as cur:
        cur.execute(f"LISTEN {channel}")
    try:
        send(channel)
        deadline = time.monotonic() + timeout
        while True:
            listener.poll()
            for note in listener.notifies:
                if note.channel == channel:
                    listener.notifies.remove(note)
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([listener.fileno()], [], [], min(left, 0.5))
    finally:
        if not listener.closed:
            try:
                with listener.cursor() as cur:
                    cur.execute(f"UNLISTEN {channel}")
            except BROKEN:
                pass  # the caller sees the connection fail on its next use


def notifications_arrive(url: str, timeout: float = 5.0, sender_url: str | None = None) -> bool:
    """Whether a NOTIFY reaches a LISTEN on `url` within `timeout` s: False through a transaction pooler.

    The NOTIFY is sent on a second connection, to `sender_url` when given (an
    instance's AYON_POSTGRES_URL: through a pooler it borrows a server
    connection the pooler already holds) and closed at once.
    """
    listener = connect(url, "ayon-listen-check")
    try:
        listener.autocommit = True

        def send(channel: str) -> None:
            sender = connect(sender_url or url, "ayon-listen-check")
            try:
                sender.autocommit = True
                with sender.cursor() as cur:
                    cur.execute(CHECK_NOTIFY, (channel,))
            finally:
                sender.close()

        return notification_arrives(listener, send, timeout)
    finally:
        listener.close()


def listen_refused(url: str, setting: str, timeout: float) -> ConfigError:
    """The error of a URL on which LISTEN stays silent, naming the setting to fix."""
    return ConfigError(
        f"{setting}: LISTEN/NOTIFY does not work through {host_port(url)} (a notification did not arrive "
        f"within {timeout:g} s; a transaction pooler such as PgBouncer's pool_mode=transaction drops it, and a "
        "LISTEN on another database than AYON_POSTGRES_URL's never hears it); "
        "set AYON_POSTGRES_SESSION_URL to a direct or session-pooled URL of the same database"
    )


def check_listen(url: str, setting: str, timeout: float = 5.0, sender_url: str | None = None) -> None:
    """Refuse a URL on which LISTEN would stay silent (ConfigError, exit 2), naming the setting to fix."""
    if not notifications_arrive(url, timeout, sender_url):
        raise listen_refused(url, setting, timeout)


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
