"""`make run` on a copy of the tree, driven through a real terminal: a crash, a restart, Ctrl-C."""

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.conftest import ROOT
from tests.instance import http_get, poll
from tests.pg import free_port

FIRST_STARTED = ("installer", "webactions", "maintenance", "logcollector")
NOISE = re.compile(r"FATAL|does not exist|failed", re.I)
SKIP = shutil.ignore_patterns(".venv", ".run", ".git", "__pycache__", ".pytest_cache", "test-output", "build")


class MakeRun:
    """`make run` in its own session whose terminal is a pty we type into."""

    def __init__(self, tree: Path, env: dict):
        venv = Path(sys.executable).resolve().parent.parent if (ROOT / ".venv").exists() else None
        args = ["make", "run"] + ([f"VENV={ROOT / '.venv'}"] if venv else [])
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a new session whose terminal is the pty
            os.chdir(tree)
            os.execvpe("make", args, env)
        self.chunks: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data.decode(errors="replace"))

    def output(self) -> str:
        return "".join(self.chunks)

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


def status(tree: Path) -> str:
    """What supervisord and the programs' own files say, for a failure's message."""
    ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(tree / ".run" / "supervisord.conf"),
                          "status"], capture_output=True, text=True, timeout=30)
    files = sorted((tree / ".run" / "data" / "logs").glob("*.log"))
    return "\n" + ctl.stdout + "".join(f"\n== {f.name}\n{f.read_text()[-1500:]}" for f in files)


def processes_in(tree: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cwd"]) if str(tree) in (p.info["cwd"] or "")]


def gone(procs: list[psutil.Process]) -> bool:
    return not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_make_run_survives_a_crash_serves_and_stops_on_ctrl_c(tmp_path):
    tree = tmp_path / "clone"
    shutil.copytree(ROOT, tree, ignore=SKIP)
    port, pg_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AYON_")}
    env.update(AYON_HTTP_BIND=f"127.0.0.1:{port}", AYON_EMBEDDED_PG_PORT=str(pg_port), TERM="dumb")
    ready = lambda: http_get(f"http://127.0.0.1:{port}/health/ready")[0] == 200  # noqa: E731
    runs = []
    try:
        # A crash: kill -9 of supervisord. Nothing of it may stay, and make run ends.
        crashed = MakeRun(tree, env)
        runs.append(crashed)
        poll(ready, 180, lambda: "make run to serve /health/ready\n" + crashed.output()[-3000:])
        # A first start is quiet: the programs wait for setup instead of failing to connect before it made
        # the role (no FATAL of PostgreSQL's, no "role does not exist", no "heartbeat failed").
        poll(lambda: all(f"{p} started" in crashed.output() for p in FIRST_STARTED), 60,
             lambda: "every program started\n" + crashed.output()[-3000:])
        first = crashed.output()
        assert [line for line in first.splitlines() if NOISE.search(line)] == [], first[-5000:]
        assert len(re.findall(r"waiting for setup to finish", first)) <= 3  # one line per program at most
        supervisord = int((tree / ".run" / "data" / "run" / "supervisord.pid").read_text())
        before = processes_in(tree)
        assert len(before) >= 8
        os.kill(supervisord, signal.SIGKILL)
        poll(lambda: gone(before), 5, lambda: "every program to die with supervisord: " + ", ".join(
            f"{p.pid} {p.cmdline()[:4]}" for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE))
        assert crashed.wait() != 0

        # The next make run recovers by itself.
        run = MakeRun(tree, env)
        runs.append(run)
        poll(ready, 180, lambda: "make run to serve /health/ready again\n" + run.output()[-3000:] + status(tree))
        # supervisord names each program it spawns, and each line of a program names it
        programs = ("postgres", "setup", "server", "maintenance", "logcollector")
        poll(lambda: all(f"'{p}'" in run.output() and f"[local/{p}]" in run.output() for p in programs), 10,
             lambda: "every program's name in the output\n" + run.output()[-3000:])
        text = run.output()
        assert f"open http://127.0.0.1:{port}/" in text
        token = re.search(r"admin token: (\S+)", text)[1]
        assert http_get(f"http://127.0.0.1:{port}/api/config", token=token)[0] == 200
        tree_procs = processes_in(tree)
        assert len(tree_procs) >= 6

        # A second make run beside it refuses at once, touching nothing.
        conf = tree / ".run" / "supervisord.conf"
        written = conf.read_bytes()
        second = MakeRun(tree, env)
        runs.append(second)
        assert second.wait() != 0  # make says 2 for a failed recipe
        assert re.search(r"make run: already running on \S+/\.run/data: 'local' \(supervisord pid \d+\)",
                         second.output())
        assert ready()

        # One on another data folder told to share the config refuses too, and leaves the config alone.
        other = tmp_path / "other"
        third = MakeRun(tree, {**env, "AYON_DATA_DIR": str(other), "AYON_SUPERVISOR_CONF": str(conf)})
        runs.append(third)
        assert third.wait() != 0
        refusal = f"Error: AYON_SUPERVISOR_CONF='{conf}': the config file of the running instance 'local'"
        assert refusal in third.output()
        assert conf.read_bytes() == written and not other.exists()
        assert "RUNNING" in status(tree)
        assert ready()

        started = time.monotonic()
        os.write(run.fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT to the foreground group
        code = run.wait()
        took = time.monotonic() - started
        assert code == 0, run.output()[-3000:]
        assert took < 10, f"stopping took {took:.1f} s"
        poll(lambda: "make run: stopped (cleanly)" in run.output(), 5, lambda: run.output()[-2000:])
        poll(lambda: gone(tree_procs), 10, "every process of make run to exit")
    finally:
        for proc in processes_in(tree):
            proc.kill()
        for one in runs:
            one.close()
