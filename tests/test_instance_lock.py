"""One instance per data folder and per supervisord config: a second start refuses at once and changes nothing.

The running instance is paused (SIGSTOP to its whole tree) while the second
start runs, so that any change to its folder can only come from the second
start; it is resumed after and must still serve.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from server.core import layout
from tests.conftest import ROOT
from tests.instance import Instance, http_get, poll

pytestmark = pytest.mark.serial  # a refusal must come within 1 s (make test runs it alone)

ALL = {"setup", "server", "webactions", "installer", "logcollector", "maintenance"}
DEADLINE = 1.0


@pytest.fixture
def running(env, tmp_path):
    instance = Instance(env, tmp_path / "one", AYON_SERVER_WORKERS="1").start()
    try:
        instance.wait_running(ALL)
        instance.wait_ready()
        yield instance
    finally:
        instance.kill()


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under the roots (not following symlinks): its kind, mode and content."""
    found = {}
    for root in roots:
        paths = [root, *root.rglob("*")] if root.is_dir() else [root]
        for path in paths:
            st = path.lstat()
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path))
            elif path.is_file():
                found[str(path)] = ("file", st.st_mode, path.read_bytes())
            elif path.is_dir():
                found[str(path)] = ("dir", st.st_mode)
            else:
                found[str(path)] = ("other", st.st_mode)
    return found


class Paused:
    """The instance's whole process tree stopped, so that nothing of it writes while we look."""

    def __init__(self, instance: Instance):
        self.tree = instance.tree()

    def __enter__(self):
        for proc in self.tree:
            proc.send_signal(signal.SIGSTOP)
        poll(lambda: all(p.status() == psutil.STATUS_STOPPED for p in self.tree), 5, "the instance's tree stopped")

    def __exit__(self, *exc):
        for proc in self.tree:
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass


def start_again(env: dict, cwd: Path = ROOT, **changes: str) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of a second `python -m procs.entrypoint`; killed if it outlives 10 s."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "procs.entrypoint"], env={**env, **changes}, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err, time.monotonic() - started


def assert_refused_unchanged(instance: Instance, expected: str, **changes: str) -> None:
    data, conf = Path(instance.env["AYON_DATA_DIR"]), Path(instance.env["AYON_SUPERVISOR_CONF"])
    cwd = Path(changes.pop("cwd", ROOT))
    with Paused(instance):
        before = snapshot(instance.folder)
        code, out, err, took = start_again(instance.env, cwd, **changes)
        after = snapshot(instance.folder)
    assert (code, out, err) == (2, "", f"Error: {expected}\n")
    assert took < DEADLINE, f"took {took:.2f} s"
    assert set(after) == set(before), f"added {set(after) - set(before)}, removed {set(before) - set(after)}"
    assert [p for p in before if after[p] != before[p]] == []
    assert conf in [Path(p) for p in before] and data / "instance.lock" in [Path(p) for p in before]


def in_use(data: str, instance: Instance) -> str:
    return (f"AYON_DATA_DIR='{data}': in use by the running instance 'test' (supervisord pid {instance.proc.pid}); "
            "stop it first, or give this instance a data folder of its own")


def test_a_second_start_on_the_data_folder_refuses_at_once_and_changes_nothing(running, tmp_path):
    data = running.env["AYON_DATA_DIR"]
    lock = layout.lock_file(data)
    assert lock.read_text() == f"{running.proc.pid} test\n"
    # supervisord holds it, none of its programs: the lock ends with supervisord
    holders = [p.pid for p in running.tree() if str(lock) in [f.path for f in p.open_files()]]
    assert holders == [running.proc.pid]

    # as it is; then with its own supervisord config elsewhere (which it must not create either)
    assert_refused_unchanged(running, in_use(data, running))
    other_conf = tmp_path / "two" / "supervisord.conf"
    assert_refused_unchanged(running, in_use(data, running), AYON_SUPERVISOR_CONF=str(other_conf))
    assert not other_conf.exists() and not other_conf.parent.exists()

    # the same folder spelled relative to another folder, and through a symlink
    assert_refused_unchanged(running, in_use(data, running), AYON_DATA_DIR="data", cwd=str(running.folder))
    link = tmp_path / "link"
    link.symlink_to(data)
    assert_refused_unchanged(running, in_use(str(link), running), AYON_DATA_DIR=str(link))

    # without its pid file and socket, which were all the old check looked at
    rundir = layout.run_dir(data)
    (rundir / "supervisord.pid").unlink()
    (rundir / "supervisor.sock").unlink()
    assert_refused_unchanged(running, in_use(data, running))
    assert_refused_unchanged(running, in_use(str(link), running), AYON_DATA_DIR=str(link))

    # resumed, it still serves and still counts its requests
    running.wait_ready()
    assert (rundir / "setup.done").exists()
    def answered() -> float:
        text = http_get(running.url + "/metrics", token="test-token")[1].decode()
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith("ayon_http_requests_total{"))

    first = answered()
    poll(lambda: answered() > first, 10, "the running instance's request counter to go on counting")


def test_a_second_instance_on_its_supervisord_config_refuses_and_changes_nothing(running, tmp_path):
    other = tmp_path / "two" / "data"
    conf = running.env["AYON_SUPERVISOR_CONF"]
    assert_refused_unchanged(
        running, f"AYON_SUPERVISOR_CONF='{conf}': the config file of the running instance 'test' "
                 f"(supervisord pid {running.proc.pid}) on {running.env['AYON_DATA_DIR']}; "
                 "give each instance a file of its own",
        AYON_DATA_DIR=str(other))
    # the refused start took its data folder's lock and gave it back, with the folders it made
    assert not other.exists() and not other.parent.exists()
    assert running.ctl("status").returncode == 0


def test_the_lock_ends_with_supervisord(running):
    """kill -9 leaves no stale lock: the next start on the folder runs."""
    tree = running.tree()
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(10)
    poll(lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
         "the killed instance's tree gone")
    again = Instance(running.env, running.folder).start()
    try:
        again.wait_running(ALL)
        assert layout.lock_file(again.env["AYON_DATA_DIR"]).read_text() == f"{again.proc.pid} test\n"
    finally:
        again.kill()


def test_setup_alone_and_one_shot_commands_take_no_lock(running):
    """A Kubernetes Job's setup and `python -m maintenance` run beside a running instance, as they should."""
    setup = start_again(running.env, AYON_RUN_SERVER="false", AYON_RUN_MAINTENANCE="false")
    assert setup[0] == 0, setup[1] + setup[2]
    proc = subprocess.run([sys.executable, "-m", "procs.entrypoint", sys.executable, "-m", "maintenance", "--list"],
                          env=running.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert http_get(running.url + "/health/ready")[0] == 200
