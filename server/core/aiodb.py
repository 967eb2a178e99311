"""Read-only statements on the worker's event loop: psycopg2 in asynchronous mode, no thread in between.

The API's list and item pages are one read-only statement each whose single
text value is the answer (server/api/pages.py). Handing each to a thread and
back cost about a third of a worker's time per request; here the loop
itself waits on the connection's socket (add_reader/add_writer), as
psycopg2's asynchronous mode allows. Everything else (transactions, locks,
LISTEN) stays on the thread pool of server/core/db.py.

Statements are prepared once per connection (PREPARE/EXECUTE, like
db.execute_prepared). A statement whose plan does not depend on its
parameters' values can ask for PostgreSQL's generic plan: planning the
events page afresh on every call was more than half of PostgreSQL's time
for it. Connections run in UTC, so times in the JSON PostgreSQL renders are
the API's.
"""

import asyncio
import select

import psycopg2
import psycopg2.extensions as ext

from server.core.db import BROKEN, positional

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

    __slots__ = ("raw", "prepared", "generic")

    def __init__(self, raw):
        self.raw = raw
        self.prepared: dict[str, tuple[str, list[str]]] = {}
        self.generic = False  # the session's plan_cache_mode is `auto` until told otherwise

    def idle_and_open(self) -> bool:
        # An idle connection has nothing to read: a readable socket means PostgreSQL
        # sent a termination notice or closed it (a restart), so it is not reused.
        if self.raw.closed:
            return False
        try:
            readable, _, _ = select.select([self.raw.fileno()], [], [], 0)
        except (OSError, ValueError, *BROKEN):
            return False
        return not readable


class AsyncReader:
    """Up to `size` asynchronous connections of one worker, opened on demand and dropped when broken.

    Create it on the loop that will use it (a gunicorn worker's, after the fork).
    """

    def __init__(self, url: str, size: int, application_name: str = "ayon"):
        self.url = url
        self.application_name = application_name
        # None stands for a connection still to open: a failure puts one back, so no waiter starves.
        self._idle: asyncio.LifoQueue = asyncio.LifoQueue()
        for _ in range(size):
            self._idle.put_nowait(None)

    async def _open(self) -> _Conn:
        raw = psycopg2.connect(self.url, async_=1, application_name=self.application_name)
        try:
            # libpq's connect_timeout does not apply to a non-blocking connect.
            await asyncio.wait_for(wait(raw), CONNECT_TIMEOUT)
            # Set here, not as a connection option, which would replace the URL's own `options`.
            cur = raw.cursor()  # held until done: psycopg2 needs the cursor of a pending statement
            cur.execute("SET TimeZone = 'UTC'")
            await wait(raw)
        except TimeoutError:
            raw.close()
            raise psycopg2.OperationalError(f"no connection to PostgreSQL within {CONNECT_TIMEOUT} s") from None
        except BaseException:
            raw.close()
            raise
        return _Conn(raw)

    async def fetch_text(self, sql: str, params: dict | None = None, generic: bool = False) -> str | None:
        """The first column of the first row of one read-only statement with %(name)s parameters.

        `generic` asks for one plan for all parameter values, for statements
        whose best plan does not depend on them.
        """
        conn = await self._idle.get()
        try:
            if conn is not None and not conn.idle_and_open():
                conn.raw.close()
                conn = None
            if conn is None:
                conn = await self._open()
            text = await self._execute(conn, sql, params or {}, generic)
        except BaseException:
            # A failed or cancelled statement leaves the session in an unknown state: start afresh.
            if conn is not None:
                conn.raw.close()
            self._idle.put_nowait(None)
            raise
        self._idle.put_nowait(conn)
        return text

    @staticmethod
    async def _execute(conn: _Conn, sql: str, params: dict, generic: bool) -> str | None:
        found = conn.prepared.get(sql)
        prefix = _MODES[generic] if generic != conn.generic else ""
        cur = conn.raw.cursor()
        if found is None:
            body, names = positional(sql)
            found = (f"ayon_{len(conn.prepared)}", names)
            # Prepared in the round trip of its first execution; psycopg2 reads `%` as a
            # placeholder only when it has parameters to put in.
            prefix += f"PREPARE {found[0]} AS {body.replace('%', '%%') if names else body}; "
        name, names = found
        if names:
            cur.execute(f"{prefix}EXECUTE {name} ({', '.join(['%s'] * len(names))})", [params[n] for n in names])
        else:
            cur.execute(f"{prefix}EXECUTE {name}")
        await wait(conn.raw)
        conn.prepared[sql] = found
        conn.generic = generic
        row = cur.fetchone()
        return row[0] if row else None

    def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn.raw.close()
