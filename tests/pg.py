"""The test suite's real PostgreSQL: embedded, or AYON_TEST_POSTGRES_URL."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2

from server.core import db, migrations
from server.core.embedded_pg import SUPERUSER, as_user, close_access, initdb, password, run_as, server_command
from server.core.lifetime import hold

# Per session: sessions side by side on one AYON_TEST_POSTGRES_URL (make test-alone) must not drop each other's.
TEMPLATE = f"ayon_test_template_{os.getpid()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(server_url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll until the server takes a connection; raise when it exited or the deadline passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.connect(server_url, "ayon-wait", timeout=2).close()
            return
        except psycopg2.OperationalError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"embedded PostgreSQL exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class EmbeddedPostgres:
    """A throwaway server for tests: start, stop and start again on the same port.

    Tests connect as the superuser, with its password in the URL.
    """

    def __init__(self, datadir: Path, port: int, fast: bool = True):
        self.datadir, self.port = Path(datadir), port
        # Tests trade durability for speed; the data is thrown away anyway.
        self.extra = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off") if fast else ()
        self.proc: subprocess.Popen | None = None
        self.password = password(self.datadir.parent, SUPERUSER)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        initdb(self.datadir, self.password, say=lambda _: None)
        close_access(self.datadir, self.password)
        parent = os.getpid()
        # Started from the main thread it dies with this process (the signal follows the creating thread).
        on_main = threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(
            server_command(self.datadir, self.port, self.extra), **as_user(run_as()),
            stdout=subprocess.DEVNULL, stderr=open(self.datadir / "server.log", "ab"),
            preexec_fn=(lambda: hold(signal.SIGQUIT, parent)) if on_main else None,
        )
        wait_ready(self.url, proc=self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class TestServer:
    """One PostgreSQL server for the session; each test gets a database cloned from a migrated template."""

    def __init__(self):
        self.embedded = None
        self.root = None
        url = os.environ.get("AYON_TEST_POSTGRES_URL", "").strip()
        if not url:
            self.root = root = Path(tempfile.mkdtemp(prefix="ayon-test-pg-"))
            os.chmod(root, 0o755)
            self.embedded = EmbeddedPostgres(root / "data", free_port())
            self.embedded.start()
            url = self.embedded.url
        self.server_url = url
        self._make_template()

    def admin(self):
        conn = db.connect(db.with_database(self.server_url, "postgres"))
        conn.autocommit = True
        return conn

    def _make_template(self) -> None:
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {TEMPLATE}")
        conn.close()
        migrations.migrate(db.with_database(self.server_url, TEMPLATE), say=lambda _: None)

    def new_database(self, migrated: bool = True) -> str:
        """A fresh database's URL: a clone of the migrated template, or empty."""
        name = "t_" + uuid.uuid4().hex[:12]
        conn = self.admin()
        with conn.cursor() as cur:
            if migrated:
                cur.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
            else:
                cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        return db.with_database(self.server_url, name)

    def drop_database(self, url: str) -> None:
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db.database_name(url)} WITH (FORCE)")
        conn.close()

    def url_for(self, name: str) -> str:
        return db.with_database(self.server_url, name)

    def close(self) -> None:
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.close()
        if self.embedded:
            self.embedded.stop()
        if self.root:
            # A data folder per session adds up (about 80 MB each) on a machine that runs the suite often.
            shutil.rmtree(self.root, ignore_errors=True)
