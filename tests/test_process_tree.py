"""A whole instance on its embedded PostgreSQL: no secret where it is not needed, no orphan after a crash."""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg2
import pytest

from procs import postgres as postgres_program
from server.core import embedded_pg
from server.core.errors import AyonError
from tests.conftest import ROOT
from tests.instance import Instance, environ, http_get, poll
from tests.pg import EmbeddedPostgres, free_port
from tests.roles import names_for

TOKEN = "process-tree-test-token"
PROGRAMS = set(names_for(server=True, setup=True, maintenance=True, embedded=True))


@pytest.fixture
def embedded_env(tmp_path):
    """All roles on their own embedded PostgreSQL."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AYON_")}
    env.update(AYON_INSTANCE_ID="tree", AYON_ADMIN_TOKEN=TOKEN, AYON_EMBEDDED_PG_PORT=str(free_port()),
               AYON_SERVER_WORKERS="2", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    os.chmod(tmp_path, 0o755)  # the embedded PostgreSQL's user (when root) must reach its data
    return env


@pytest.fixture
def instances():
    started = []
    yield started
    for instance in started:
        instance.kill()


def alive(pid: int, started: str) -> bool:
    """The process `pid` that started at `started` still runs (not a zombie, not a new process on the same pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z" and fields[19] == started


def snapshot(root: int) -> dict[int, str]:
    """Every process of the tree under `root`: pid -> its start time in /proc."""
    tree = {}
    for proc in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
        try:
            tree[proc.pid] = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except FileNotFoundError:
            pass
    return tree


def open_files(pid: int) -> list[str]:
    """What a process's descriptors point at, skipping those closed while looking."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except FileNotFoundError:
            pass
    return found


def test_secrets_only_where_needed_and_nothing_survives_kill_9(embedded_env, tmp_path, instances):
    instance = Instance(embedded_env, tmp_path / "one").start()
    instances.append(instance)
    instance.wait_running(PROGRAMS)
    instance.wait_ready()
    data = Path(instance.env["AYON_DATA_DIR"])
    port = int(embedded_env["AYON_EMBEDDED_PG_PORT"])

    # No secret in any environment /proc shows: the programs forked from supervisord (supervision/preload.py)
    # hold theirs in memory only, and the server answers with its token.
    names = instance.programs_by_pid()
    assert sorted(set(names.values())) == sorted(PROGRAMS - {"setup"} | {"console"})
    assert len([n for n in names.values() if n == "postgres"]) > 3  # the postmaster and its backends
    superuser, owner = (embedded_pg.password(data, role).encode() for role in ("postgres", "ayon"))
    for pid, name in names.items():
        env = environ(pid)
        assert TOKEN.encode() not in env, name
        assert superuser not in env and owner not in env, name
        if name == "postgres":
            assert b"AYON_PROGRAM_SECRETS" not in env and b"AYON_POSTGRES_URL" not in env
    # supervisord's own: the entrypoint handed it every setting in memory (supervision/handover.py), and
    # nothing of the tree still holds the file they came in.
    assert TOKEN.encode() not in environ(instance.proc.pid) and b"AYON_" not in environ(instance.proc.pid)
    for pid in [instance.proc.pid, *names]:
        assert not [t for t in open_files(pid) if "ayon-settings" in t], names.get(pid, "supervisord")
    assert http_get(instance.url + "/api/config", token=TOKEN)[0] == 200
    assert http_get(instance.url + "/api/config")[0] == 401
    # Every Python program is a fork of supervisord sharing its preloaded pages, not an interpreter of
    # its own (the postgres program becomes PostgreSQL by exec).
    for name in PROGRAMS - {"setup", "postgres"}:
        pid = instance.pid_of(name)
        assert psutil.Process(pid).ppid() == instance.proc.pid, name
        shared = int(re.search(r"Shared_Dirty:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text())[1])
        assert shared > 4096, f"{name} shares only {shared} kB of supervisord's pages"
    # PostgreSQL wants a password; the programs are connected as its owner role, no superuser.
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", passfile="/nonexistent")
    conn = psycopg2.connect(embedded_pg.url(data, port, "postgres", "postgres"))
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT usename, rolsuper FROM pg_stat_activity JOIN pg_roles ON rolname = usename "
                    "WHERE application_name LIKE 'ayon-%%'")
        assert cur.fetchall() == [("ayon", False)]
    conn.close()

    # kill -9 of supervisord: within 5 s nothing of its tree runs any more
    tree = snapshot(instance.proc.pid)
    assert len(tree) > 12
    instance.proc.send_signal(signal.SIGKILL)
    instance.proc.wait(10)
    poll(lambda: not [pid for pid, started in tree.items() if alive(pid, started)], 5,
         lambda: "every process of the tree to end: still " + ", ".join(
             f"{pid} {psutil.Process(pid).cmdline()[:3]}" for pid, started in tree.items() if alive(pid, started)))

    # A later start on the same data recovers, even from a pid file naming a live process that is no PostgreSQL.
    squatter = subprocess.Popen(["sleep", "600"])
    try:
        (data / "postgres" / "postmaster.pid").write_text(f"{squatter.pid}\n{data / 'postgres'}\n")
        again = Instance(instance.env, tmp_path / "one").start()
        instances.append(again)
        again.wait_running(PROGRAMS)
        again.wait_ready()
        assert f"removed the stale {data / 'postgres' / 'postmaster.pid'} (pid {squatter.pid}" in again.output
    finally:
        squatter.kill()
        squatter.wait()


def test_a_busy_port_is_named_as_the_instance_s_last_line(embedded_env, tmp_path, instances):
    port = int(embedded_env["AYON_EMBEDDED_PG_PORT"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        instance = Instance(embedded_env, tmp_path / "busy", AYON_RUN_MAINTENANCE="false").start()
        instances.append(instance)
        code = instance.proc.wait(90)
    assert code == 1
    assert instance.lines[-1].startswith(
        f"Error: program postgres could not be started (FATAL): port 127.0.0.1:{port} (AYON_EMBEDDED_PG_PORT) "
        f"is in use by pid {os.getpid()} ("), instance.output[-3000:]


def test_an_orphaned_postgres_on_the_data_folder_is_stopped(tmp_path):
    os.chmod(tmp_path, 0o755)
    # Started by this test, not by a supervisord: what a crashed instance of an older version left running.
    orphan = EmbeddedPostgres(tmp_path / "data", free_port())
    orphan.start()
    said = []
    try:
        postgres_program.make_way(orphan.datadir, free_port(), say=said.append)
        assert orphan.proc.wait(10) == 0
        assert said == [f"stopping PostgreSQL pid {orphan.proc.pid}, left running on {orphan.datadir} "
                        "by an instance that ended"]
        assert not (orphan.datadir / "postmaster.pid").exists()
    finally:
        orphan.stop()


def test_a_postgres_of_a_running_instance_is_left_alone(tmp_path):
    os.chmod(tmp_path, 0o755)
    # Its parent is a supervisord, as a running instance's is (a script of that name will do).
    script = tmp_path / "supervisord"
    script.write_text("import signal, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path\n"
                      "from tests.pg import EmbeddedPostgres\n"
                      "pg = EmbeddedPostgres(Path(sys.argv[1]), int(sys.argv[3])); pg.start()\n"
                      "print(pg.proc.pid, flush=True); signal.pause()  # until stopped\n")
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(ROOT), str(free_port())],
                              stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    try:
        with pytest.raises(AyonError) as caught:
            postgres_program.make_way(tmp_path / "data", free_port(), say=print)
        assert str(caught.value).startswith(f"{tmp_path / 'data'} is in use by PostgreSQL pid {pid} of a running "
                                            f"instance (its parent: pid {parent.pid} (")
        assert psutil.Process(pid).is_running()
    finally:
        parent.kill()  # its PostgreSQL follows it (lifeline)
        parent.wait()
        poll(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
             "the PostgreSQL to end with its parent")
