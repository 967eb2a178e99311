"""`ayon-doctor`: what an operator would otherwise ask about this instance, one line per check.

Each check says `ok`, `warn` or `fail`, what it found and, when not ok, what
to do next; `--json` prints the same as one document. Exit 0 when all are
ok, 1 when the worst is a warn, 2 when one failed. Every check is bounded
(short connect and statement timeouts, and a thread that is given up on),
so the doctor answers about a hung database too. Nothing it prints carries
a secret: URLs go through `urls.masked`, and every line is scrubbed of the
configured passwords and token before it is written.
"""

import datetime
import fcntl
import json
import os
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extensions

from server.core import VERSION, config, db, events, instancelock, layout, logspool, migrations, times, urls
from server.core import settings as settings_mod
from server.core.errors import MASK, Parser, first_line, run_main
from supervision import generator, healthcheck

OK, WARN, FAIL = "ok", "warn", "fail"
EXIT = {OK: 0, WARN: 1, FAIL: 2}
CONNECT_TIMEOUT = 3  # seconds, libpq's connect_timeout
STATEMENT_TIMEOUT = "3s"
LISTEN_WAIT = 2.0  # seconds a NOTIFY may take to arrive before LISTEN counts as broken
CHECK_BOUND = 12.0  # seconds a check may take in all before it is reported as hanging
SLOW_ROUND_TRIP_MS = 50.0
SKEW_WARN, SKEW_FAIL = 2.0, 60.0  # seconds
CONNECTIONS_WARN, CONNECTIONS_FAIL = 0.75, 0.9  # of max_connections less the superuser reserve
SPOOL_WARN, SPOOL_FAIL = 0.5, 0.9  # of AYON_LOG_SPOOL_MAX
SPOOL_LAG = 60.0  # seconds an undelivered record may wait
LOCK_STUCK = 5.0  # seconds the maintenance lock may be held with no run in progress
PENDING_INSTALL = 300.0  # seconds an install may stay pending
GiB = 1024 ** 3


@dataclass
class Result:
    check: str
    status: str
    said: str
    todo: str = ""
    facts: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:<4} {self.check:<12} {self.said}" + (f" — {self.todo}" if self.todo else "")


class Context:
    """What the checks share: the settings, this run's pool (None when unreachable) and what earlier checks saw."""

    def __init__(self, values):
        self.values = values
        self.url = values.postgres_url
        self.db: db.Database | None = None
        self.server: dict = {}
        self._cfg = None

    def cfg(self) -> config.View:
        if self._cfg is None:
            with self.db.transaction() as cur:
                self._cfg = config.get(cur)
        return self._cfg


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def needs_database(check):
    def run(ctx: Context) -> Result:
        if ctx.db is None:
            return Result(check.__name__.replace("_", "-"), WARN, "not checked: the database is unreachable",
                          "fix the database check first")
        return check(ctx)

    run.__name__ = check.__name__
    return run


# --- the checks, in the order they print ---


def database(ctx: Context) -> Result:
    shown = urls.masked(ctx.url)
    started = time.monotonic()
    try:
        conn = db.connect(ctx.url, "ayon-doctor", timeout=CONNECT_TIMEOUT)
    except psycopg2.Error as exc:
        return Result("database", FAIL, f"{shown} did not answer: {first_line(exc)}",
                      "check AYON_POSTGRES_URL, that PostgreSQL runs, and that it accepts this host")
    connect_ms = (time.monotonic() - started) * 1000
    try:
        conn.autocommit = True
        trips = []
        with conn.cursor() as cur:
            for _ in range(3):
                started = time.monotonic()
                cur.execute("SELECT 1")
                cur.fetchone()
                trips.append((time.monotonic() - started) * 1000)
            cur.execute("SELECT current_setting('server_version'), inet_server_port(), current_database()")
            version, server_port, name = cur.fetchone()
        ctx.server = {"version": version, "server_port": server_port, "host": conn.info.host, "port": conn.info.port,
                      "database": name}
    finally:
        conn.close()
    ctx.db = db.Database(ctx.url, size=2, application_name="ayon-doctor").with_settings(
        lambda: {"statement_timeout": STATEMENT_TIMEOUT, "lock_timeout": "1s"})
    rtt = statistics.median(trips)
    facts = {"round_trip_ms": round(rtt, 2), "connect_ms": round(connect_ms, 1), "server_version": version}
    said = f"{shown} answers: round trip {rtt:.1f} ms (connect {connect_ms:.0f} ms), PostgreSQL {version}"
    if rtt > SLOW_ROUND_TRIP_MS:
        return Result("database", WARN, said, f"over {SLOW_ROUND_TRIP_MS:.0f} ms: every request pays it several "
                      "times; put the database nearer this instance", facts)
    return Result("database", OK, said, facts=facts)


@needs_database
def schema(ctx: Context) -> Result:
    found = migrations.status(ctx.db)
    facts = {"version": found.version, "expected": found.expected}
    if found.current:
        return Result("schema", OK, f"current: migration {found.version:04d}, as this code ({VERSION}) expects",
                      facts=facts)
    if "does not know" in found.reason:
        todo = "run a server version that includes it, or restore the database this version made"
    elif "was edited" in found.reason:
        todo = "restore the migration file as it was applied"
    else:
        todo = "run setup (python -m procs.setup, or an instance with AYON_RUN_SETUP=true)"
    return Result("schema", FAIL, f"not current (migration {found.version:04d} applied, this code has "
                  f"{found.expected:04d}): {found.reason}", todo, facts)


@needs_database
def pooler(ctx: Context) -> Result:
    host, port, server_port = ctx.server["host"], ctx.server["port"], ctx.server["server_port"]
    direct = server_port is None or str(server_port) == str(port)
    path = "direct" if direct else f"through a pooler or proxy at {host}:{port} (PostgreSQL on port {server_port})"
    values = ctx.values
    listen = db.notifications_arrive(ctx.url, LISTEN_WAIT)
    facts = {"direct": direct, "listen_on_url": listen, "session_url": values.pooled}
    if not values.pooled:
        if listen:
            return Result("pooler", OK, f"{path}; a session per connection: LISTEN, prepared statements and "
                          "locks all work", facts=facts)
        return Result("pooler", FAIL, f"{path}, in transaction pooling: a NOTIFY did not arrive within "
                      f"{LISTEN_WAIT:g} s, so LISTEN (the event stream, every program's wake-up) and prepared "
                      "statements do not work through AYON_POSTGRES_URL", "set AYON_POSTGRES_SESSION_URL to a direct "
                      "or session-pooled URL of the same database", facts)
    session = db.notifications_arrive(values.session_url, LISTEN_WAIT)
    facts["listen_on_session_url"] = session
    mode = "transaction pooling" if not listen else "a session per connection"
    said = (f"AYON_POSTGRES_URL {path}, {mode}: queries and transaction locks work, the programs send no "
            "prepared statements there")
    if session:
        return Result("pooler", OK, f"{said}; LISTEN works on AYON_POSTGRES_SESSION_URL", facts=facts)
    return Result("pooler", FAIL, f"{said}; but LISTEN does not work on AYON_POSTGRES_SESSION_URL "
                  f"{urls.masked(values.session_url)} (no NOTIFY within {LISTEN_WAIT:g} s)",
                  "point AYON_POSTGRES_SESSION_URL at PostgreSQL directly or at a session-pooled port", facts)


@needs_database
def connections(ctx: Context) -> Result:
    row = ctx.db.fetchone(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
        "count(*), count(*) FILTER (WHERE datname = current_database() AND application_name LIKE 'ayon%%') "
        "FROM pg_stat_activity WHERE backend_type = 'client backend'")
    most, reserved, used, fleet = row
    usable = max(1, most - reserved)
    facts = {"in_use": used, "max_connections": most, "reserved": reserved, "fleet": fleet}
    said = (f"{used} of {most} in use ({reserved} reserved for superusers); this fleet's programs "
            f"(application_name ayon*, this database) hold {fleet}")
    todo = ("raise max_connections, lower AYON_DB_POOL_SIZE or AYON_SERVER_WORKERS, or put PgBouncer in front "
            "(README, PostgreSQL behind a pooler)")
    if used >= usable * CONNECTIONS_FAIL:
        return Result("connections", FAIL, said, f"new connections will soon be refused: {todo}", facts)
    if used >= usable * CONNECTIONS_WARN:
        return Result("connections", WARN, said, todo, facts)
    return Result("connections", OK, said, facts=facts)


@needs_database
def clock(ctx: Context) -> Result:
    with ctx.db.transaction() as cur:
        before = time.time()
        cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        theirs = cur.fetchone()[0]
        after = time.time()
    skew = theirs - (before + after) / 2
    bound = (after - before) / 2
    facts = {"skew_s": round(skew, 3), "uncertainty_s": round(bound, 3)}
    said = f"this machine is {abs(skew):.3f} s {'behind' if skew > 0 else 'ahead of'} the database (±{bound:.3f} s)"
    todo = "synchronise the clocks (NTP, chrony): heartbeats, due times and log times compare them"
    if abs(skew) >= SKEW_FAIL:
        return Result("clock", FAIL, said, todo, facts)
    if abs(skew) >= SKEW_WARN:
        return Result("clock", WARN, said, todo, facts)
    return Result("clock", OK, said, facts=facts)


def _space(path: str) -> tuple[str, str, dict]:
    usage = shutil.disk_usage(path)
    share = usage.free / usage.total if usage.total else 0.0
    status = FAIL if share < 0.02 or usage.free < 100 * 1024 ** 2 else WARN if share < 0.1 or usage.free < GiB else OK
    return status, f"{size(usage.free)} free of {size(usage.total)} ({share:.0%})", {
        "free": usage.free, "total": usage.total}


def data_disk(ctx: Context) -> Result:
    folder = ctx.values.data_dir
    if not os.path.isdir(folder):
        return Result("data-disk", FAIL, f"AYON_DATA_DIR {folder} does not exist",
                      "start the instance once, or create the folder writable by this user")
    status, said, facts = _space(folder)
    todo = "" if status == OK else "free space there: the spool, addons and the embedded PostgreSQL live there"
    return Result("data-disk", status, f"{folder}: {said}", todo, facts)


@needs_database
def db_disk(ctx: Context) -> Result:
    database_bytes = ctx.db.fetchone("SELECT pg_database_size(current_database())")[0]
    facts = {"database_bytes": database_bytes}
    where = f"database {ctx.server['database']} holds {size(database_bytes)}"
    if ctx.values.embedded_postgres:
        folder = str(layout.postgres_dir(ctx.values.data_dir))
    else:
        try:
            folder = ctx.db.fetchone("SELECT current_setting('data_directory')")[0]
        except psycopg2.Error:
            folder = None  # reading it needs pg_read_all_settings
        host = ctx.server["host"] or ""
        if folder and not (host.startswith("/") or host in ("127.0.0.1", "localhost", "::1")):
            folder = None  # a path on another machine
    try:
        status, said, more = _space(folder) if folder and os.path.isdir(folder) else (None, "", {})
    except OSError:
        status = None
    if status is None:
        return Result("db-disk", WARN, f"{where}; its disk's free space is unknown (PostgreSQL runs elsewhere, "
                      "or this role may not read data_directory)", "watch it where PostgreSQL runs", facts)
    facts.update(more)
    todo = "" if status == OK else "free space on PostgreSQL's disk before it stops taking writes"
    return Result("db-disk", status, f"{where}; its disk ({folder}): {said}", todo, facts)


def spool(ctx: Context) -> Result:
    folder = layout.spool_dir(ctx.values.data_dir)
    positions = {}
    if ctx.db is not None:
        positions = dict(ctx.db.fetchall("SELECT file, position FROM log_spool_positions WHERE instance_id = %s",
                                         (ctx.values.instance_id,)))
    undelivered, files, oldest = 0, 0, None
    for path in folder.glob(f"*{logspool.SUFFIX}"):
        try:
            length = path.stat().st_size
        except FileNotFoundError:
            continue
        start = positions.get(path.name, 0)
        if length <= start:
            continue
        files += 1
        undelivered += length - start
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                stamp = datetime.datetime.fromisoformat(fh.read(64).split(b"\t", 1)[0].decode()).timestamp()
        except (OSError, ValueError):
            stamp = path.stat().st_mtime
        oldest = stamp if oldest is None else min(oldest, stamp)
    cap = ctx.values.log_spool_max
    lag = max(0.0, time.time() - oldest) if oldest is not None else 0.0
    facts = {"undelivered_bytes": undelivered, "files": files, "cap": cap, "oldest_s": round(lag, 1)}
    said = f"{size(undelivered)} undelivered in {files} file(s) of {size(cap)} allowed (AYON_LOG_SPOOL_MAX)"
    if files:
        said += f", the oldest waiting {ago(lag)}"
    todo = ("is the logcollector running and the database reachable? (supervisorctl status logcollector, "
            "supervisorctl tail logcollector)")
    if undelivered >= cap * SPOOL_FAIL:
        return Result("spool", FAIL, said, f"the oldest records are dropped at the cap: {todo}", facts)
    if undelivered >= cap * SPOOL_WARN or lag > SPOOL_LAG:
        return Result("spool", WARN, said, todo, facts)
    return Result("spool", OK, said, facts=facts)


def flock_holder(path: Path) -> str | None:
    """Who holds an flock on `path`: 'pid 12 (logcollector)', 'held', or None when free (or no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        major, minor, inode = parts[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) == wanted:
            return f"pid {parts[4]} ({process_name(int(parts[4]))})"
    return "held"


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return os.path.basename(argv[0]) or "?"


ADVISORY = {"maintenance": db.MAINTENANCE_LOCK, "migrations": migrations.LOCK}


def advisory_holders(ctx: Context) -> dict[str, tuple]:
    """Each advisory lock's holder: (pid, application_name, client, held seconds), from pg_locks."""
    found = {}
    for name, lock in ADVISORY.items():
        key = db.lock_key(lock)
        row = ctx.db.fetchone(
            "SELECT l.pid, a.application_name, coalesce(host(a.client_addr), 'local'), "
            "extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.backend_start))::float8 "
            "FROM pg_locks l LEFT JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
        found[name] = row
    return found


def locks(ctx: Context) -> Result:
    data_dir = ctx.values.data_dir
    parts, facts, status, todos = [], {}, OK, []
    instance = instancelock.holder(data_dir)
    facts["instance.lock"] = instance
    parts.append(f"instance.lock: {instance or 'free'}")
    if instance is None:
        status = WARN
        todos.append(f"no instance runs on AYON_DATA_DIR {data_dir}: run the doctor where the instance runs "
                     "(docker compose exec server ayon-doctor)")
    for label, path in (("spool/.collector.lock", layout.collector_lock(data_dir)),
                        (".installer.lock", layout.installer_lock(data_dir))):
        holder = flock_holder(path)
        facts[label] = holder
        parts.append(f"{label}: {holder or 'free'}")
    if ctx.db is None:
        parts.append("advisory locks: not checked (no database)")
        status = WARN
    else:
        running = ctx.db.fetchone("SELECT id FROM events WHERE topic = %s AND status = 'in_progress' "
                                  "ORDER BY created_at DESC LIMIT 1", (events.MAINTENANCE,))
        for name, row in advisory_holders(ctx).items():
            lock = ADVISORY[name]
            if row is None:
                facts[lock] = None
                parts.append(f"{lock}: free")
                continue
            pid, app, client, held = row
            facts[lock] = {"pid": pid, "application_name": app, "client": client, "held_s": round(held or 0, 1)}
            who = f"pid {pid} ({app or 'no application_name'}, {client}) for {ago(held or 0)}"
            if name == "maintenance" and running:
                parts.append(f"{lock}: run {running[0]}, {who}")
            elif name == "maintenance" and (held or 0) > LOCK_STUCK:
                status = FAIL
                parts.append(f"{lock}: STUCK, {who} with no maintenance run in progress")
                todos.append(f"it blocks every maintenance run; if pid {pid} is no run, end it: "
                             f"SELECT pg_terminate_backend({pid})")
            elif name == "migrations" and (held or 0) > 60:
                status = FAIL if status == FAIL else WARN
                parts.append(f"{lock}: {who}")
                todos.append(f"a migration runs or hangs (pid {pid}); every program waits for it")
            else:
                parts.append(f"{lock}: {who}")
    return Result("locks", status, "; ".join(parts), "; ".join(todos), facts)


@needs_database
def maintenance(ctx: Context) -> Result:
    cfg = ctx.cfg()
    rows = ctx.db.fetchall(
        "SELECT id, status, created_at, updated_at, extract(epoch FROM clock_timestamp() - updated_at)::float8 "
        "FROM events WHERE topic = %s ORDER BY created_at DESC LIMIT 20", (events.MAINTENANCE,))
    daemons = ctx.db.fetchone(
        "SELECT count(*) FROM instances WHERE program = 'maintenance' "
        "AND last_seen > clock_timestamp() - make_interval(secs => %s)", (cfg.instances.stale_after,))[0]
    first = ctx.db.fetchone("SELECT extract(epoch FROM clock_timestamp() - min(applied_at))::float8 "
                            "FROM schema_migrations")[0] or 0.0
    running = next((r for r in rows if r[1] == "in_progress"), None)
    ended = next((r for r in rows if r[1] in ("finished", "failed", "aborted")), None)
    finished = next((r for r in rows if r[1] == "finished"), None)
    nxt = times.next_run(times.utc_now(), cfg.maintenance.time, cfg.maintenance.timezone)
    parts = []
    if running:
        parts.append(f"run {running[0]} in progress since {times.rfc3339(running[2])}")
    parts.append(f"last run {ended[0]} {ended[1]} at {times.rfc3339(ended[3])}" if ended else "no run yet")
    if cfg.maintenance.enabled:
        parts.append(f"next at {times.rfc3339(nxt)} ({cfg.maintenance.time} {cfg.maintenance.timezone})")
    parts.append(f"{daemons} daemon(s) heard from")
    facts = {"last": ended and {"id": str(ended[0]), "status": ended[1], "ended": times.rfc3339(ended[3])},
             "running": running and str(running[0]), "daemons": daemons,
             "next": times.rfc3339(nxt) if cfg.maintenance.enabled else None}
    said = "; ".join(parts)
    if not cfg.maintenance.enabled:
        return Result("maintenance", WARN, said + "; maintenance.enabled is false",
                      "nothing runs on schedule: PATCH /api/config {\"maintenance\": {\"enabled\": true}}", facts)
    if daemons == 0:
        return Result("maintenance", WARN, said, "no maintenance daemon runs in the fleet, so no scheduled run: "
                      "run an instance with AYON_RUN_MAINTENANCE=true", facts)
    if ended and ended[1] != "finished":
        return Result("maintenance", WARN, said, f"see why in GET /api/events/{ended[0]} or the dashboard's "
                      "Maintenance page", facts)
    overdue = 25 * 3600
    if (finished[4] if finished else first) > overdue:
        return Result("maintenance", WARN, said, "no finished run in over a day: see the maintenance program's "
                      "output (supervisorctl tail maintenance)", facts)
    return Result("maintenance", OK, said, facts=facts)


def programs(ctx: Context) -> Result:
    values = ctx.values
    expected = [p for p in generator.programs(values)]
    if values.roles == ["setup"]:
        return Result("programs", OK, "setup alone: no long-running programs")
    facts, problems, todos = {}, [], []
    try:
        if not os.path.exists(values.supervisor_conf):
            raise FileNotFoundError(f"no supervisord config at AYON_SUPERVISOR_CONF {values.supervisor_conf}")
        states = healthcheck.program_states(values.supervisor_conf)
        setup_done = layout.setup_done(values.data_dir).exists()
        down = healthcheck.program_problems([p.name for p in expected], states, setup_done)
        facts["supervisord"] = {name: info["statename"] for name, info in states.items()}
        problems += down
        todos += [f"supervisorctl start {line.split()[0]}" for line in down if "is not configured" not in line]
        heard_by = "supervisord: all RUNNING" if not down else ""
    except Exception as exc:  # no socket: the doctor runs outside the instance
        heard_by = f"supervisord does not answer ({first_line(exc)})" + (
            ", judged by heartbeats alone" if ctx.db is not None else "")
        todos.append("run the doctor inside the instance (docker compose exec server ayon-doctor)")
    beating = [p.name for p in expected if not p.oneshot and p.name != "postgres"]
    if ctx.db is not None:
        stale_after = ctx.cfg().instances.stale_after
        seen = dict(ctx.db.fetchall(
            "SELECT program, extract(epoch FROM clock_timestamp() - last_seen)::float8 FROM instances "
            "WHERE instance_id = %s", (values.instance_id,)))
        facts["heard_s_ago"] = {name: seen.get(name) and round(seen[name], 1) for name in beating}
        quiet = [f"{name} never heard from" if name not in seen else f"{name} last heard {ago(seen[name])} ago"
                 for name in beating if name not in seen or seen[name] > stale_after]
        if quiet:
            problems += quiet
            todos.append(f"a program that beats no more within instances.stale_after ({stale_after} s) is hung or "
                         "cut off from the database: supervisorctl tail <program>")
        heard = f"{', '.join(beating)} heard from within {stale_after} s" if not quiet else ""
    else:
        heard = "heartbeats not checked (no database)"
    said = "; ".join(x for x in (", ".join(problems), heard, heard_by) if x)
    if problems:
        return Result("programs", FAIL, said, "; ".join(todos), facts)
    return Result("programs", OK if "does not answer" not in heard_by else WARN, said, "; ".join(todos), facts)


@needs_database
def installs(ctx: Context) -> Result:
    values = ctx.values
    if not any(p.name == "installer" for p in generator.programs(values)):
        return Result("installs", OK, "no installer on this instance (AYON_RUN_SERVER is false)")
    most = ctx.cfg().installer.max_attempts
    rows = ctx.db.fetchall(
        "SELECT i.name, i.version, i.status, i.reason, i.attempts, "
        "extract(epoch FROM clock_timestamp() - i.updated_at)::float8 "
        "FROM package_installs i JOIN packages p USING (name, version) "
        "WHERE i.instance_id = %s AND p.active AND i.status IN ('pending', 'failed') ORDER BY i.name, i.version",
        (values.instance_id,))
    installed = ctx.db.fetchone("SELECT count(*) FROM package_installs WHERE instance_id = %s "
                                "AND status = 'installed'", (values.instance_id,))[0]
    final = [r for r in rows if r[2] == "failed" and r[4] >= most]
    retrying = [r for r in rows if r[2] == "failed" and r[4] < most]
    late = [r for r in rows if r[2] == "pending" and r[5] > PENDING_INSTALL]
    pending = [r for r in rows if r[2] == "pending"]
    facts = {"installed": installed, "pending": len(pending), "failed": len(final), "retrying": len(retrying)}
    said = f"{installed} installed, {len(pending)} pending, {len(retrying)} retrying, {len(final)} failed"
    named = "; ".join(f"{n} {v} {s} ({a} attempt(s)): {reason or 'no reason'}" for n, v, s, reason, a, _ in
                      final + retrying + late)
    if named:
        said += f": {named}"
    if final:
        return Result("installs", FAIL, said, "fix the package and upload it again, or remove it "
                      "(DELETE /api/addons/NAME/VERSION); supervisorctl tail installer says more", facts)
    if retrying or late:
        return Result("installs", WARN, said, "the installer retries; supervisorctl tail installer says why", facts)
    return Result("installs", OK, said, facts=facts)


CHECKS = [database, schema, pooler, connections, clock, data_disk, db_disk, spool, locks, maintenance,
          programs, installs]


def bounded(check, ctx: Context) -> Result:
    """Run one check in a thread of its own; one that does not return within CHECK_BOUND is a fail."""
    name = check.__name__.replace("_", "-")
    box: list = []

    def work():
        try:
            box.append(check(ctx))
        except BaseException as exc:  # a check that breaks says so as its verdict (supervisor's client exits)
            box.append(Result(name, FAIL, f"could not check: {first_line(exc)}", "see the line above for the cause"))

    worker = threading.Thread(target=work, name=f"doctor-{name}", daemon=True)
    worker.start()
    worker.join(CHECK_BOUND)
    if not box:
        return Result(name, FAIL, f"did not answer within {CHECK_BOUND:g} s", "something it reads hangs: "
                      "the database (pg_stat_activity) or supervisord")
    return box[0]


def secrets_of(values) -> list[str]:
    found = [values.admin_token or ""]
    for url in {values.postgres_url, values.session_url}:
        try:
            found.append(psycopg2.extensions.parse_dsn(url).get("password", ""))
        except psycopg2.Error:
            pass
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="ayon-doctor", description="Check this instance and its database, one line per check; "
                    "exit 0 all ok, 1 a warning, 2 a failure.")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    values = settings_mod.load()
    ctx = Context(values)  # no database configured: one Error line, exit 2 (settings.postgres_url)
    secrets = secrets_of(values)
    results = []
    for check in CHECKS:
        result = bounded(check, ctx)
        results.append(result)
        if not args.json:
            print(scrub(result.line(), secrets), flush=True)
    if ctx.db is not None:
        ctx.db.close()
    worst = max((r.status for r in results), key=EXIT.get)
    if args.json:
        document = {"instance": values.instance_id, "version": VERSION, "status": worst, "exit": EXIT[worst],
                    "checks": [asdict(r) for r in results]}
        print(scrub(json.dumps(document, indent=2, default=str), secrets))
    return EXIT[worst]


def run() -> None:
    """Entry point of `ayon-doctor` and `python -m supervision.doctor`."""
    run_main(main, "doctor")


if __name__ == "__main__":
    run()
