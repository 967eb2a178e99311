"""The three stacks under test, each started as real processes and stopped after."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    """A server command and its environment; `start()` waits until /api/info answers."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    log: object = None
    workers: list[psutil.Process] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, expected_workers: int, timeout: float = 60.0) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            self.workers = self._workers()
            if len(self.workers) >= expected_workers and self._answers():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def _workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        # uvicorn's multiprocessing also starts a resource tracker, which serves nothing.
        return [c for c in children if "resource_tracker" not in " ".join(_cmdline(c))]

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/api/info", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def pids_answering(self, tries: int = 40) -> set[int]:
        """Worker pids seen on fresh connections to /api/info."""
        seen = set()
        for _ in range(tries):
            request = urllib.request.Request(self.base + "/api/info", headers={"Connection": "close"})
            with urllib.request.urlopen(request, timeout=5) as resp:
                seen.add(json.load(resp).get("pid"))
        return seen

    def cpu_seconds(self) -> dict[int, float]:
        """CPU time used so far by each worker, to see how load spread over them."""
        found = {}
        for worker in self.workers:
            try:
                times = worker.cpu_times()
                found[worker.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                found[worker.pid] = 0.0
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log:
            self.log.close()


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AYON_", "BENCH_"))}


def server_env(database_url: str, token: str, port: int, data_dir: Path) -> dict[str, str]:
    """Our server in its default configuration: only what has no usable default is set."""
    env = _clean_env()
    env.update(AYON_POSTGRES_URL=database_url, AYON_ADMIN_TOKEN=token, AYON_HTTP_BIND=f"127.0.0.1:{port}",
               AYON_DATA_DIR=str(data_dir), AYON_INSTANCE_ID="bench", PYTHONPATH=str(ROOT))
    return env


def ours(database_url: str, token: str, port: int, folder: Path, gunicorn_args: list[str]) -> Stack:
    env = server_env(database_url, token, port, folder / "ours-data")
    command = [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py", *gunicorn_args]
    return Stack("ayon", command, env, port, folder / "ours.log")


def ceiling(database_url: str, token: str, port: int, folder: Path, gunicorn_args: list[str]) -> Stack:
    # Same gunicorn settings file; the positional app replaces the configured one.
    env = server_env(database_url, token, port, folder / "ceiling-data")
    command = [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py", *gunicorn_args,
               "bench.http.ceiling:app"]
    return Stack("falcon-ceiling", command, env, port, folder / "ceiling.log")


def fastapi(database_url: str, token: str, port: int, folder: Path, workers: int, reuse_port: bool) -> Stack:
    env = _clean_env()
    env.update(BENCH_POSTGRES_URL=database_url, BENCH_TOKEN=token, PYTHONPATH=str(ROOT))
    # Always the peer's own launcher: uvicorn's --workers sockets lack TCP_NODELAY, which
    # held every response ~40 ms on a delayed ACK and made the peer look 10x slower.
    command = [sys.executable, "-m", "bench.http.peer_fastapi", "--port", str(port), "--workers", str(workers)]
    return Stack("fastapi-uvicorn", command, env, port, folder / "fastapi.log")
