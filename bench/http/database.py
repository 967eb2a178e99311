"""The benchmark's database: a migrated PostgreSQL database holding N events."""

import datetime
import io
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import psutil

from server.core import db, migrations
from tests.pg import EmbeddedPostgres, free_port

TOPICS = ("server.maintenance", "action.launch", "entity.task.changed", "server.config_changed", "log.message")
STATUSES = ("finished", "finished", "finished", "failed", "pending")


class BenchDatabase:
    """An embedded PostgreSQL in a temporary folder (or the server at `server_url`) with one database."""

    def __init__(self, server_url: str = ""):
        self.embedded = None
        if not server_url:
            root = Path(tempfile.mkdtemp(prefix="ayon-bench-pg-"))
            root.chmod(0o755)
            self.embedded = EmbeddedPostgres(root / "data", free_port())
            self.embedded.start()
            server_url = self.embedded.url
        self.name = "ayon_bench_" + uuid.uuid4().hex[:8]
        self.admin_url = db.with_database(server_url, "postgres")
        self.url = db.with_database(server_url, self.name)
        self._admin("CREATE DATABASE " + self.name)
        migrations.migrate(self.url, say=lambda _: None)

    def _admin(self, statement: str) -> None:
        conn = db.connect(self.admin_url, "ayon-bench")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
        conn.close()

    def seed_events(self, count: int) -> None:
        """`count` events spread over the last 30 days, loaded with COPY."""
        now = datetime.datetime.now(datetime.timezone.utc)
        rows = io.StringIO()
        for i in range(count):
            created = (now - datetime.timedelta(minutes=(count - i) * 30 * 24 * 60 / count)).isoformat()
            summary = json.dumps({"n": i}) if i % 3 else "{}"
            payload = json.dumps({"user": f"user{i % 17}", "project": f"project{i % 5}", "n": i})
            rows.write("\t".join((TOPICS[i % len(TOPICS)], STATUSES[i % len(STATUSES)], f"event number {i}",
                                  summary, payload, "bench", created, created, "")) + "\n")
        rows.seek(0)
        conn = db.connect(self.url, "ayon-bench")
        try:
            with conn, conn.cursor() as cur:
                # Triggers would NOTIFY every row for nobody; the seed is plain data.
                cur.execute("SET session_replication_role = replica")
                cur.copy_expert("COPY events (topic, status, description, summary, payload, sender, created_at,"
                                " updated_at, doc) FROM STDIN", rows)
                # With the triggers off, each event's API document is rendered here.
                cur.execute("UPDATE events SET doc = ayon_event_doc(events)")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM ANALYZE events")
        finally:
            conn.close()

    def cpu_seconds(self) -> dict[int, float] | None:
        """CPU time used so far by PostgreSQL, per process: the whole embedded server, or this database's backends.

        For an outside server only the backends of the benchmark's database
        count, found by their titles (which name the database); None when
        they cannot be seen from here (another machine or pid namespace).
        """
        if self.embedded is not None:
            if self.embedded.proc is None:
                return None
            try:
                main = psutil.Process(self.embedded.proc.pid)
                processes = [main, *main.children(recursive=True)]
            except psutil.Error:
                return None
        else:
            processes = self._backends()
            if processes is None:
                return None
        found = {}
        for proc in processes:
            try:
                times = proc.cpu_times()
                found[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        return found

    def _backends(self) -> list[psutil.Process] | None:
        """The local processes of the backends on the benchmark's database; None when even ours is not local."""
        conn = db.connect(self.url, "ayon-bench")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid(), array_agg(pid) FILTER (WHERE pid <> pg_backend_pid())"
                            " FROM pg_stat_activity WHERE datname = current_database()")
                own, others = cur.fetchone()
            # Checked while this session is open: its backend ends with it.
            if self._is_backend(own) is None:
                return None
        finally:
            conn.close()
        return [p for p in map(self._is_backend, others or []) if p]

    def _is_backend(self, pid: int) -> psutil.Process | None:
        """The local process `pid` when it is a backend of this database."""
        try:
            proc = psutil.Process(pid)
            return proc if self.name in " ".join(proc.cmdline()) else None
        except psutil.Error:
            return None

    def close(self) -> None:
        try:
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        finally:
            if self.embedded:
                self.embedded.stop()
                shutil.rmtree(self.embedded.datadir.parent, ignore_errors=True)

