"""Real infrastructure for fleet tests: PgBouncer in front of the suite's server, a standby, HAProxy.

Each PostgreSQL part is started as the unprivileged user the embedded PostgreSQL
runs as (PgBouncer, like PostgreSQL, refuses to run as root); HAProxy as the
current user. Each listens on a free loopback port, is polled until it answers
with a deadline, and is stopped at the end.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from server.core import db
from server.core.embedded_pg import as_user, bin_path, run_as, server_command
from tests.pg import free_port, wait_ready

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
MODES = ("transaction", "session")


def _owned_folder(prefix: str) -> Path:
    """A fresh folder the unprivileged user can write in."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    user = run_as()
    if user:
        entry = as_user(user)
        os.chown(folder, entry["user"], entry["group"])
    os.chmod(folder, 0o700)
    return folder


def _stop(proc: subprocess.Popen | None, signum: int = signal.SIGINT) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def with_port(url: str, port: int) -> str:
    """The same URL on another loopback port (the pooler's, or a standby's)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"))


class PgBouncer:
    """A real PgBouncer (transaction or session pooling) in front of the server at `server_url`."""

    def __init__(self, server_url: str, mode: str = "transaction", pool_size: int = 20):
        if mode not in MODES:
            raise ValueError(f"pool mode {mode!r} is not one of {', '.join(MODES)}")
        self.server_url, self.mode, self.pool_size = server_url, mode, pool_size
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def url(self, database_url: str) -> str:
        """`database_url` (a database of the same server) through this pooler."""
        return with_port(database_url, self.port)

    def _write_config(self) -> Path:
        parts = urlsplit(self.server_url)
        user = parts.username or "postgres"
        # The password in auth_file also logs PgBouncer in to PostgreSQL (scram-sha-256 there).
        (self.dir / "users.txt").write_text(f'"{user}" "{parts.password or ""}"\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={parts.hostname} port={parts.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"  # tests only: the client side is loopback
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {self.mode}\n"
            "max_client_conn = 2000\n"
            f"default_pool_size = {self.pool_size}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        user_entry = as_user(run_as())
        for path in (ini, self.dir / "users.txt"):
            os.chmod(path, 0o600)
            if user_entry:
                os.chown(path, user_entry["user"], user_entry["group"])
        return ini

    def start(self, timeout: float = 30.0) -> "PgBouncer":
        self.dir = _owned_folder(f"ayon-pgbouncer-{self.mode}-")
        ini = self._write_config()
        self.proc = subprocess.Popen([PGBOUNCER, str(ini)], **as_user(run_as()),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(self.url(db.with_database(self.server_url, "postgres")), timeout, self.proc)
        except (RuntimeError, psycopg2.OperationalError) as exc:
            raise RuntimeError(f"PgBouncer did not start: {exc}; its log: {self.log()[-2000:]}") from None
        return self

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # SIGINT: PgBouncer's safe shutdown
        self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class Standby:
    """A streaming standby of the embedded primary (`pg_basebackup -R`), promotable with `pg_ctl promote`.

    The primary needs a replication entry in pg_hba.conf and wal_level=replica
    (PostgreSQL's default); `allow_replication` adds the entry and reloads.
    """

    def __init__(self, primary):
        self.primary = primary  # a tests.pg.EmbeddedPostgres
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return with_port(self.primary.url, self.port)

    def _allow_replication(self) -> None:
        hba = self.primary.datadir / "pg_hba.conf"
        line = "host replication all 127.0.0.1/32 scram-sha-256\n"
        if line not in hba.read_text():
            with hba.open("a") as out:
                out.write(line)
        conn = db.connect(self.primary.url, "ayon-test-standby")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        conn.close()

    def start(self, timeout: float = 60.0) -> "Standby":
        self._allow_replication()
        self.dir = _owned_folder("ayon-standby-")
        data = self.dir / "data"
        env = {**os.environ, "PGPASSWORD": self.primary.password}
        subprocess.run([bin_path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                        "-U", "postgres", "-D", str(data), "-R", "-X", "stream", "-c", "fast"],
                       **as_user(run_as()), env=env, check=True, capture_output=True, timeout=timeout)
        # The primary's own command line: a standby needs at least its max_connections.
        self.proc = subprocess.Popen(server_command(data, self.port, self.primary.extra), **as_user(run_as()),
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "ab"))
        try:
            wait_ready(db.with_database(self.url, "postgres"), timeout, self.proc)
        except (RuntimeError, psycopg2.OperationalError) as exc:
            log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the standby did not start: {exc}; its log: {log}") from None
        return self

    def promote(self, timeout: float = 30.0) -> None:
        """Make the standby a primary and wait until it accepts writes."""
        subprocess.run([bin_path("pg_ctl"), "promote", "-D", str(self.dir / "data")],
                       **as_user(run_as()), check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            conn = db.connect(db.with_database(self.url, "postgres"), "ayon-test-standby")
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    if not cur.fetchone()[0]:
                        return
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby was not promoted within {timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)
        self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class HAProxy:
    """A real HAProxy balancing HTTP over `servers` ({name: "host:port"}), checking each on `check_path`.

    Fast checks (every 200 ms, down after 2 failures, up after 2 passes), and a
    request that cannot reach a server is retried on another (`option redispatch`,
    `retries`): the set-up a rolling restart is measured behind.
    """

    def __init__(self, servers: dict[str, str], check_path: str = "/health/ready"):
        self.servers, self.check_path = dict(servers), check_path
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        cfg = self.dir / "haproxy.cfg"
        servers = "".join(f"    server {name} {address} check\n" for name, address in self.servers.items())
        cfg.write_text(
            "global\n"
            f"    stats socket {self.dir / 'admin.sock'} mode 600 level admin\n"
            "    maxconn 1000\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            "    retry-on conn-failure empty-response response-timeout\n"
            "frontend web\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    default_backend servers\n"
            "backend servers\n"
            "    balance roundrobin\n"
            f"    option httpchk GET {self.check_path}\n"
            "    http-check expect status 200\n"
            "    default-server inter 200ms fall 2 rise 2\n"
            f"{servers}"
        )
        return cfg

    def start(self, timeout: float = 30.0) -> "HAProxy":
        self.dir = Path(tempfile.mkdtemp(prefix="ayon-haproxy-"))
        cfg = self._write_config()
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config: {check.stdout}{check.stderr}")
        self.log = open(self.dir / "haproxy.log", "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                self.command("show info")
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not listen within {timeout:g} s: {self.output()[-2000:]}") from None
                time.sleep(0.05)

    def command(self, line: str) -> str:
        """One command on the admin socket, its whole answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.dir / "admin.sock"))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` by name: each server, and FRONTEND and BACKEND (req_tot, hrsp_5xx, status...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows}

    def states(self) -> dict[str, str]:
        """Each server's check state as HAProxy sees it: UP, DOWN, or a transition ("UP 1/2")."""
        return {name: row["status"] for name, row in self.stats().items() if name in self.servers}

    def output(self) -> str:
        try:
            return (self.dir / "haproxy.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self.proc = None
        if self.dir:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
