"""The log collector's engine: the local log spool into PostgreSQL, each record exactly once.

Spool lines are already COPY text (server/core/logspool.py), so a batch is COPYed as
read, without parsing a record. A file's new position is stored in
`log_spool_positions` in the same transaction as its rows: after a crash or a
lost commit the database says exactly where to resume. Consumed files whose
writer has let go are deleted. While PostgreSQL is down the spool grows up to
AYON_LOG_SPOOL_MAX, above which the oldest files are dropped and counted.

Two users stand on it: the logcollector program (procs/logcollector.py, a
`Daemon` that calls `tick` in its loop) and a one-shot program with no
collector beside it (`python -m maintenance` from cron or a Kubernetes
CronJob), which calls `deliver_now` before it exits: under the same spool lock
(`layout.collector_lock`) it runs the collector's passes itself, so its
records reach the table too, and never twice.
"""

import datetime
import fcntl
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psycopg2
import psycopg2.extras

from server.core import layout, logspool
from server.core.db import BROKEN, PROGRAM_LIMITS, Database
from server.core.errors import first_line

PROGRAM = "logcollector"
BATCH_BYTES = 4 * 1024 * 1024  # per transaction
DRAIN = 3.0  # seconds a stop (or a one-shot delivery) may spend ingesting what is left
DROP_REPORT = 10.0  # seconds between two reports of dropped records
STALE_HIDDEN = 60.0  # a hidden half-created file older than this belongs to a dead writer


@dataclass
class SpoolFile:
    name: str
    size: int
    mtime: float


class SpoolCollector:
    """One instance's spool folder, ingested into the logs table by `tick()`."""

    def __init__(self, db: Database, data_dir: str, instance: str, cap: int, log: logging.Logger,
                 program: str = PROGRAM):
        self.db, self.log, self.program = db, log, program
        self.data_dir = data_dir
        self.dir = logspool.spool_dir(data_dir)
        self.instance = instance
        self.cap = cap
        self.positions: dict[str, int] | None = None  # None: reload from the database first
        self.known: dict[str, int] = {}  # last positions seen, still usable while the database is down
        self.forgotten: set[str] = set()  # dropped files whose position rows are left to delete
        self.files: list[SpoolFile] = []
        self.more = False
        self.down = False
        self.partition_days: tuple = ()
        self.ingested_total = self.dropped_total = 0
        self.unreported = [0, 0, 0]  # records, bytes, files dropped since the last report
        self.reported_at = float("-inf")
        self.error_said_at = -60.0
        self.lock_fd: int | None = None

    # --- the spool on disk ---

    def scan(self) -> list[SpoolFile]:
        files = []
        now = time.time()
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if name.endswith(logspool.SUFFIX) and not name.startswith("."):
                files.append(SpoolFile(name, st.st_size, st.st_mtime))
            elif name.endswith(".new") and now - st.st_mtime > STALE_HIDDEN and logspool.is_free(path):
                os.unlink(path)
        files.sort(key=lambda f: (f.mtime, f.name))
        return files

    def count_lines(self, name: str, start: int) -> int:
        count = 0
        try:
            with open(os.path.join(self.dir, name), "rb") as fh:
                fh.seek(start)
                while chunk := fh.read(1024 * 1024):
                    count += chunk.count(b"\n")
        except FileNotFoundError:
            pass
        return count

    def enforce_cap(self) -> None:
        """Above the cap, delete the oldest files (finished ones first) and count their unread records."""
        total = sum(f.size for f in self.files)
        if total <= self.cap:
            return
        target = self.cap * 0.9  # some room, so the next tick does not drop again at once
        free = [f for f in self.files if logspool.is_free(os.path.join(self.dir, f.name))]
        busy = [f for f in self.files if f not in free]
        for victim in free + busy:
            if total <= target:
                break
            start = self.known.get(victim.name, 0)
            lines = self.count_lines(victim.name, start)
            try:
                os.unlink(os.path.join(self.dir, victim.name))
            except FileNotFoundError:
                pass
            total -= victim.size
            self.files.remove(victim)
            self.forgotten.add(victim.name)
            self.dropped_total += lines
            for i, n in enumerate((lines, victim.size - start, 1)):
                self.unreported[i] += n
        self.report_drops()

    def report_drops(self, force: bool = False) -> None:
        records, size, files = self.unreported
        if not files or (not force and time.monotonic() - self.reported_at < DROP_REPORT):
            return
        self.log.warning(
            "log spool over its cap of %d bytes: dropped the %d oldest records (%d bytes, %d files); "
            "%d dropped since start", self.cap, records, size, files, self.dropped_total,
            extra={"dropped": records, "dropped_total": self.dropped_total},
        )
        self.unreported = [0, 0, 0]
        self.reported_at = time.monotonic()

    def read_batch(self) -> list[tuple[str, bytes, int]]:
        """Complete lines after each file's position, up to BATCH_BYTES: (name, data, new position)."""
        batch, budget = [], BATCH_BYTES
        for f in self.files:
            start = self.positions.get(f.name, 0)
            if f.size <= start or budget <= 0:
                continue
            path = os.path.join(self.dir, f.name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                data = os.pread(fd, min(f.size - start, budget), start)
                if b"\n" not in data and not batch:
                    # One line longer than a batch: take it whole.
                    data = os.pread(fd, f.size - start, start)
            finally:
                os.close(fd)
            end = data.rfind(b"\n") + 1
            chunk = data[:end]
            if end < len(data) == f.size - start and time.time() - f.mtime > 5 and logspool.is_free(path):
                # The torn last line of a writer that is gone: stored as an unreadable record.
                chunk, end = data + b"\n", len(data)
            if chunk:
                batch.append((f.name, chunk, start + end))
                budget -= len(chunk)
        return batch

    def remove_consumed(self) -> None:
        """Delete fully ingested files nobody writes any more, then their position rows."""
        removed = []
        for f in self.files:
            if self.positions.get(f.name, 0) < f.size:
                continue
            path = os.path.join(self.dir, f.name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                removed.append(f.name)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Held exclusively: no writer can append any more, so this size is final.
                if os.fstat(fd).st_size <= self.positions.get(f.name, 0):
                    os.unlink(path)
                    removed.append(f.name)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        gone = set(removed) | self.forgotten
        if gone:
            # The file goes before its row: a crash in between leaves a harmless orphan row, never a re-read.
            self.db.execute("DELETE FROM log_spool_positions WHERE instance_id = %s AND file = ANY(%s)",
                            (self.instance, list(gone)))
            for name in gone:
                self.positions.pop(name, None)
                self.known.pop(name, None)
            self.forgotten.clear()

    # --- the database ---

    def load_positions(self) -> None:
        rows = self.db.fetchall("SELECT file, position FROM log_spool_positions WHERE instance_id = %s",
                                (self.instance,))
        on_disk = {f.name for f in self.files}
        self.positions = {name: pos for name, pos in rows if name in on_disk}
        # Rows of files no longer on disk (removed, or dropped by the cap) are deleted with the next removal.
        self.forgotten |= {name for name, _ in rows if name not in on_disk}
        self.known = dict(self.positions)

    def ensure_partitions(self) -> None:
        today = datetime.datetime.now(datetime.timezone.utc).date()
        days = tuple(today + datetime.timedelta(days=d) for d in (-1, 0, 1))
        if days != self.partition_days:
            with self.db.transaction() as cur:
                for day in days:
                    cur.execute("SELECT ayon_ensure_log_partition(%s)", (day,))
            self.partition_days = days

    def copy_lines(self, cur, lines: list[bytes], bad: list) -> None:
        """COPY lines; a failing group is split in halves under savepoints until the bad lines are alone."""
        cur.execute("SAVEPOINT spool_copy")
        try:
            cur.copy_expert(logspool.COPY_SQL, io.BytesIO(b"".join(lines)))
            cur.execute("RELEASE SAVEPOINT spool_copy")
        except BROKEN:
            raise
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT spool_copy")
            if len(lines) == 1:
                bad.append((lines[0], exc))
                return
            half = len(lines) // 2
            self.copy_lines(cur, lines[:half], bad)
            self.copy_lines(cur, lines[half:], bad)

    def store_unreadable(self, cur, name: str, bad: list) -> None:
        for line, exc in bad:
            raw = line.decode("utf-8", "replace").rstrip("\n")[:4096]
            message = f"unreadable spool record in {name}: {first_line(exc)}"
            cur.execute("INSERT INTO logs (ts, level, instance, program, pid, logger, message, extras) "
                        "VALUES (now(), 'ERROR', %s, %s, %s, %s, %s, %s)",
                        (self.instance, self.program, os.getpid(), self.log.name, message,
                         json.dumps({"raw": raw})))

    def commit(self, batch: list[tuple[str, bytes, int]]) -> None:
        """COPY the batch and store the files' new positions in one transaction."""
        with self.db.transaction() as cur:
            try:
                cur.execute("SAVEPOINT batch")
                cur.copy_expert(logspool.COPY_SQL, io.BytesIO(b"".join(data for _, data, _ in batch)),
                                size=1024 * 1024)
            except BROKEN:
                raise
            except psycopg2.Error:
                # Rare: a malformed line. Find it, keep the others, store it as an unreadable record.
                cur.execute("ROLLBACK TO SAVEPOINT batch")
                for name, data, _ in batch:
                    bad = []
                    self.copy_lines(cur, [line + b"\n" for line in data.split(b"\n")[:-1]], bad)
                    self.store_unreadable(cur, name, bad)
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO log_spool_positions (instance_id, file, position) VALUES %s "
                "ON CONFLICT (instance_id, file) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
                [(self.instance, name, pos) for name, _, pos in batch],
            )
        for name, data, pos in batch:
            self.positions[name] = self.known[name] = pos
            self.ingested_total += data.count(b"\n")

    # --- one pass ---

    def tick(self) -> None:
        self.more = False
        self.files = self.scan()
        self.enforce_cap()
        self.report_drops()
        try:
            if self.positions is None:
                self.load_positions()
            self.ensure_partitions()
            batch = self.read_batch()
            if batch:
                self.commit(batch)
                self.more = sum(len(data) for _, data, _ in batch) >= BATCH_BYTES * 0.9
            self.remove_consumed()
        except BROKEN as exc:
            # After a lost connection (maybe mid-commit) only the database knows the true positions.
            self.positions = None
            if not self.down:
                self.log.warning("PostgreSQL unavailable, records wait in the spool: %s", first_line(exc))
            self.down = True
            return
        except Exception:
            # Not a lost connection: a bug or a refused statement. Retry slowly and say so rarely,
            # as these lines land in the spool themselves.
            self.positions = None
            self.down = True
            if time.monotonic() >= self.error_said_at + 60:
                self.log.exception("ingesting the spool failed, will retry")
                self.error_said_at = time.monotonic()
            return
        if self.down:
            self.log.info("PostgreSQL reachable again, ingesting the spool")
            self.down = False

    def pending(self) -> bool:
        return any(self.known.get(f.name, 0) < f.size for f in self.files)

    def info(self) -> dict:
        """What the collector reports in its heartbeat."""
        files, known = list(self.files), dict(self.known)
        unread = [self.first_unread_time(f, known.get(f.name, 0)) for f in files if f.size > known.get(f.name, 0)]
        return {
            "lag_seconds": round(max(0.0, time.time() - min(unread)), 3) if unread else 0.0,
            "spool_bytes": sum(f.size for f in files),
            "dropped_total": self.dropped_total,
            "ingested_total": self.ingested_total,
        }

    def first_unread_time(self, f: SpoolFile, start: int) -> float:
        """The time of a file's first unread record (its last write time if unreadable)."""
        try:
            with open(os.path.join(self.dir, f.name), "rb") as fh:
                fh.seek(start)
                stamp = fh.read(64).split(b"\t", 1)[0].decode()
            return datetime.datetime.fromisoformat(stamp).timestamp()
        except (OSError, ValueError):
            return f.mtime

    def open_lock(self) -> int:
        os.makedirs(self.dir, exist_ok=True)
        # Kept open for the life of the holder; the kernel drops the lock when it dies.
        self.lock_fd = os.open(layout.collector_lock(self.data_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return self.lock_fd

    def lock(self, stop: threading.Event, say: Callable[[], None]) -> bool:
        """Hold the spool alone, waiting for it: a second collector on the same folder would ingest twice."""
        return layout.wait_for_lock(self.open_lock(), stop, say)

    def try_lock(self) -> bool:
        """Hold the spool alone if it is free now."""
        try:
            fcntl.flock(self.open_lock(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            self.unlock()
            return False

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing it releases the lock
            self.lock_fd = None


def deliver_now(settings, log: logging.Logger, within: float = DRAIN) -> str:
    """Put this instance's spool into PostgreSQL now, unless a log collector runs beside us; says what happened.

    The collector's lock decides: held, the collector delivers (within its poll); free,
    this process takes it and ingests the spool itself for up to `within` seconds,
    its own records included. Records logged after this call wait for the next one.
    """
    db = Database(settings.postgres_url, size=settings.db_pool_size, application_name=f"ayon-{PROGRAM}",
                  idle=settings.db_idle_seconds, **PROGRAM_LIMITS)
    collector = SpoolCollector(db, settings.data_dir, settings.instance_id, settings.log_spool_max, log)
    try:
        if not collector.try_lock():
            return "a log collector runs beside this process and stores its records"
        deadline = time.monotonic() + within
        while True:
            collector.tick()
            if collector.down:
                return "PostgreSQL is unreachable: the records wait in the spool for the next collector"
            if not collector.pending() or time.monotonic() >= deadline:
                break
        left = "" if not collector.pending() else ", some left for the next collector"
        return f"stored {collector.ingested_total} log records{left}"
    finally:
        collector.unlock()
        db.close()
