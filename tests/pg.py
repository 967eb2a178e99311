"""The test suite's real PostgreSQL: embedded, or AYON_TEST_POSTGRES_URL."""

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path


from server.core import db, migrations
from server.core.embedded_pg import EmbeddedPostgres

TEMPLATE = "ayon_test_template"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        if self.embedded:
            self.embedded.stop()
        if self.root:
            # A data folder per session adds up (about 80 MB each) on a machine that runs the suite often.
            shutil.rmtree(self.root, ignore_errors=True)
