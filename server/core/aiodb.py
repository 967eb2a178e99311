"""Read-only statements on the worker's event loop: psycopg2 in asynchronous mode, no thread in between.

The API's list and item pages are one read-only statement each whose single
text value is the answer (server/api/pages.py). Handing each to a thread and
back cost about a third of a worker's time per request; here the loop
itself waits on the connection's socket (add_reader/add_writer), as
psycopg2's asynchronous mode allows. Everything else (transactions, locks,
LISTEN) stays on the thread pool of server/core/db.py.

Statements are prepared once per connection (PREPARE/EXECUTE, like
db.execute_prepared), unless AYON_POSTGRES_URL may go through a transaction
pooler (`prepare=False`): there a name PREPAREd on one server connection
collides with, or is missing on, the next (docs/architecture.md). A statement whose plan does not depend on its
parameters' values can ask for PostgreSQL's generic plan: planning the
events page afresh on every call was more than half of PostgreSQL's time
for it. Connections run in UTC, so times in the JSON PostgreSQL renders are
the API's.
"""

import asyncio
import time

import psycopg2
import psycopg2.extensions as ext

from server.core.db import BROKEN, IDLE_SECONDS, WAIT_SECONDS, Budget, NoAnswer, host_port, positional

CONNECT_TIMEOUT = 5

# Sent before EXECUTE, in the same round trip, when a connection's plan mode must change.
_MODES = {True: "SET plan_cache_mode = force_generic_plan; ", False: "SET plan_cache_mode = auto; "}


async def wait(conn) -> None:
    """Drive an asynchronous psycopg2 connection until its current operation is done, on the running loop."""
    loop = asyncio.get_running_loop()
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        fd = conn.fileno()
        done = loop.create_future()
        if state == ext.POLL_READ:
            loop.add_reader(fd, done.set_result, None)
            remove = loop.remove_reader
        elif state == ext.POLL_WRITE:
            loop.add_writer(fd, done.set_result, None)
            remove = loop.remove_writer
        else:  # psycopg2 documents no other state
            raise psycopg2.InterfaceError(f"unexpected connection poll state {state}")
        try:
            await done
        finally:
            remove(fd)


class _Conn:
    """One asynchronous connection and what this pool knows about its session."""

    __slots__ = ("raw", "prepared", "generic", "idle_since")

    def __init__(self, raw):
        self.raw = raw
        self.idle_since = 0.0
        # Per statement text: its EXECUTE with %s placeholders, the parameters' names in order,
        # and the PREPARE to send before its first execution (None once sent).
        self.prepared: dict[str, tuple[str, tuple[str, ...], str | None]] = {}
        self.generic = False  # the session's plan_cache_mode is `auto` until told otherwise


class AsyncReader:
    """Asynchronous connections of one worker, opened on demand, dropped when broken, closed when idle.

    `budget` bounds how many are open (its own of `size` by default; a web worker shares its thread
    pool's, server/api/common.py). A connection unused for `idle` seconds is closed. Create it on the
    loop that will use it (a gunicorn worker's, after the fork).
    """

    def __init__(self, url: str, size: int, application_name: str = "ayon", prepare: bool = True,
                 statement_timeout: float | None = None, answer_timeout: float | None = None,
                 idle: float | None = None, budget: Budget | None = None):
        self.url = url
        # PostgreSQL ends a statement after statement_timeout; answer_timeout ends the wait for it here,
        # when PostgreSQL does not answer at all (stopped, failing over): NoAnswer, the connection dropped.
        self.answer_timeout = answer_timeout
        self._timeout = f"SET statement_timeout = '{int(statement_timeout * 1000)}ms'; " if statement_timeout else ""
        self.application_name = application_name
        # False: plain statements, the time zone SET LOCAL in each (a transaction pooler keeps no session).
        self.prepare = prepare
        self.idle = IDLE_SECONDS if idle is None else idle
        self.budget = budget or Budget(size)
        self._idle: list[_Conn] = []  # most recently used last
        self._loop = None
        self._reaping = None  # the loop's timer that closes idle connections
        self.budget.droppers.append(self._drop_soon)

    def _drop_soon(self) -> bool:
        # Asked from a thread of the other pool: our connections belong to the loop, so it closes one
        # there; the slot then reaches the waiter through Budget.give.
        if self._loop is not None and self._idle:
            self._loop.call_soon_threadsafe(self._drop_one)
        return False

    def _drop_one(self) -> None:
        if self._idle:
            self._discard(self._idle.pop(0))

    def _discard(self, conn: _Conn) -> None:
        try:
            conn.raw.close()
        finally:
            self.budget.give()

    async def _borrow(self) -> _Conn:
        """An idle connection, else a new one in a free budget slot, waiting for either up to WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        loop = asyncio.get_running_loop()
        while True:
            seen = self.budget.generation
            if self._idle:
                return self._idle.pop()
            if self.budget.try_take():
                try:
                    return await self._open()
                except BaseException:
                    self.budget.give()
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise psycopg2.OperationalError(f"no free database connection within {WAIT_SECONDS} s")
            future = loop.create_future()
            self.budget.add_waiter(loop, future, seen)
            try:
                await asyncio.wait_for(future, min(left, 0.5))
            except TimeoutError:
                pass
            finally:
                self.budget.remove_waiter(loop, future)

    def _give_back(self, conn: _Conn) -> None:
        if self.idle <= 0:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self.budget.wake()
        if self._reaping is None:
            self._reaping = self._loop.call_later(self.idle / 4, self._reap)

    def _reap(self) -> None:
        now = time.monotonic()
        old = [c for c in self._idle if now - c.idle_since >= self.idle]
        self._idle = [c for c in self._idle if now - c.idle_since < self.idle]
        for conn in old:
            self._discard(conn)
        self._reaping = self._loop.call_later(self.idle / 4, self._reap) if self._idle else None

    async def _open(self) -> _Conn:
        raw = psycopg2.connect(self.url, async_=1, application_name=self.application_name)
        try:
            # libpq's connect_timeout does not apply to a non-blocking connect.
            await asyncio.wait_for(wait(raw), CONNECT_TIMEOUT)
            # Set here, not as a connection option, which would replace the URL's own `options`.
            cur = raw.cursor()  # held until done: psycopg2 needs the cursor of a pending statement
            # A session of its own (no transaction pooler): its statement_timeout is SET once, here.
            cur.execute((self._timeout if self.prepare else "") + "SET TimeZone = 'UTC'")
            await wait(raw)
        except TimeoutError:
            raw.close()
            raise NoAnswer(f"PostgreSQL at {host_port(self.url)} did not answer within {CONNECT_TIMEOUT} s "
                           "(connecting)") from None
        except BaseException:
            raw.close()
            raise
        return _Conn(raw)

    async def fetch_text(self, sql: str, params: dict | None = None, generic: bool = False) -> str | None:
        """The first column of the first row of one read-only statement with %(name)s parameters.

        `generic` asks for one plan for all parameter values, for statements
        whose best plan does not depend on them.
        """
        self._loop = asyncio.get_running_loop()
        conn = await self._borrow()  # a failure here holds no slot
        try:
            try:
                text = await self._run(conn, sql, params, generic)
            except BROKEN as exc:
                if not conn.raw.closed or isinstance(exc, NoAnswer):
                    raise
                # The session ended while idle (PostgreSQL restarted, or an administrator ended it):
                # the statement is read-only, so it runs once more on a fresh connection, in the same slot.
                conn = await self._open()
                text = await self._run(conn, sql, params, generic)
        except BaseException:
            # A failed or cancelled statement leaves the session in an unknown state: start afresh.
            self._discard(conn)
            raise
        self._give_back(conn)
        return text

    async def _run(self, conn: _Conn, sql: str, params: dict | None, generic: bool):
        work = self._execute(conn, sql, params, generic) if self.prepare else self._plain(conn, sql, params)
        if self.answer_timeout is None:
            return await work
        try:
            async with asyncio.timeout(self.answer_timeout):  # no task of its own, unlike wait_for
                return await work
        except TimeoutError:
            conn.raw.close()  # the statement's answer may still come: this session is done
            raise NoAnswer(f"PostgreSQL at {host_port(self.url)} did not answer within "
                           f"{self.answer_timeout:g} s") from None

    async def _plain(self, conn: _Conn, sql: str, params: dict | None) -> str | None:
        # One round trip, one implicit transaction: the pooler keeps it on one server connection.
        cur = conn.raw.cursor()
        first = self._timeout.replace("SET ", "SET LOCAL ") + "SET LOCAL TimeZone = 'UTC'; "
        if params:
            cur.execute(first + sql, params)
        else:
            cur.execute(first + sql.replace("%%", "%"))
        await wait(conn.raw)
        row = cur.fetchone()
        return row[0] if row else None

    @staticmethod
    async def _execute(conn: _Conn, sql: str, params: dict | None, generic: bool) -> str | None:
        found = conn.prepared.get(sql)
        if found is None:
            body, names = positional(sql)
            name = f"ayon_{len(conn.prepared)}"
            execute = f"EXECUTE {name} ({', '.join(['%s'] * len(names))})" if names else f"EXECUTE {name}"
            # psycopg2 reads `%` as a placeholder only when it has parameters to put in.
            found = (execute, tuple(names), f"PREPARE {name} AS {body.replace('%', '%%') if names else body}; ")
        execute, names, prepare = found
        # The PREPARE of a first execution and a change of plan mode go in the same round trip.
        if prepare is not None or generic != conn.generic:
            execute = (_MODES[generic] if generic != conn.generic else "") + (prepare or "") + execute
        cur = conn.raw.cursor()
        if names:
            cur.execute(execute, [params[n] for n in names])
        else:
            cur.execute(execute)
        await wait(conn.raw)
        if prepare is not None:
            conn.prepared[sql] = (found[0], names, None)
        conn.generic = generic
        row = cur.fetchone()
        return row[0] if row else None

    def close(self) -> None:
        if self._reaping is not None:
            self._reaping.cancel()
            self._reaping = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
