"""A real instance for tests: `python -m procs.entrypoint` under supervisord."""

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from server.core import layout
from tests.apiclient import http
from tests.apiclient import wait_for as poll  # re-exported for the tests
from tests.conftest import ROOT
from tests.pg import free_port


def http_get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, bytes, dict]:
    """(status, body, headers by lower-case name) of a GET, with the admin token when given; 0 when nothing answers."""
    return http(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=timeout)


def environ(pid: int) -> bytes:
    """A process's environment as /proc shows it; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


class Instance:
    """One supervisord tree with its own data folder, config and port."""

    def __init__(self, env: dict, folder: Path, root: Path = ROOT, **overrides: str):
        self.root = Path(root)  # the tree whose code runs
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = dict(env)
        self.env.update(
            AYON_DATA_DIR=str(self.folder / "data"),
            AYON_SUPERVISOR_CONF=str(self.folder / "supervisord.conf"),
            AYON_HTTP_BIND=f"127.0.0.1:{self.port}",
        )
        self.env.update(overrides)
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Instance":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procs.entrypoint"], env=self.env, cwd=self.root,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", self.env["AYON_SUPERVISOR_CONF"], *args],
            capture_output=True, text=True, timeout=60, cwd=self.root,
        )

    def status(self) -> dict[str, str]:
        """{program: state} from a bare `supervisorctl status`."""
        if not Path(self.env["AYON_SUPERVISOR_CONF"]).exists():
            return {}
        found = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                found[parts[0]] = parts[1]
        return found

    def programs_by_pid(self, child_suffix: str = "") -> dict[int, str]:
        """Each RUNNING program's pid -> its name, and each of its children -> its name + `child_suffix`."""
        names = {}
        for line in self.ctl("status").stdout.splitlines():
            found = re.match(r"(\S+)\s+RUNNING\s+pid (\d+)", line)
            if found:
                names[int(found[2])] = found[1]
        for pid, name in list(names.items()):
            for child in psutil.Process(pid).children(recursive=True):
                names[child.pid] = name + child_suffix
        return names

    def pid_of(self, program: str) -> int | None:
        out = self.ctl("pid", program).stdout.strip()
        return int(out) if out.isdigit() and out != "0" else None

    def wait_running(self, programs: set[str], timeout: float = 60) -> dict[str, str]:
        def ready():
            states = self.status()
            running = all(states.get(p) == "RUNNING" for p in programs - {"setup"})
            # A finished setup is taken out of the process table (EXITED for a moment before).
            setup_ok = "setup" not in programs or states.get("setup", "gone") in ("EXITED", "gone")
            return states if running and setup_ok and self.setup_done(programs) else None

        return poll(ready, timeout, lambda: f"programs {sorted(programs)} RUNNING: {self.status()}\n{self.output[-3000:]}")

    def setup_done(self, programs: set[str]) -> bool:
        return "setup" not in programs or (layout.run_dir(self.env["AYON_DATA_DIR"]) / "setup.done").exists()

    def wait_ready(self, timeout: float = 60) -> None:
        poll(lambda: http_get(self.url + "/health/ready")[0] == 200, timeout,
             lambda: f"{self.url}/health/ready = 200\n{self.output[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig=signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Last resort at the end of a test: nothing of the tree may outlive it."""
        for proc in reversed(self.tree()):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.wait(10)
