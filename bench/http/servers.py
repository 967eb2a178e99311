"""The five stacks under test, each started as real processes and stopped after."""

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

INFO, EVENTS = "info", "events"

# Shared objects whose presence in a worker's memory tells which loop and HTTP parser it runs.
LOOPS = (("uvloop/loop.", "uvloop"),)
PARSERS = (("httptools/parser/parser.", "httptools"), ("gunicorn_h1c", "gunicorn_h1c"))


@dataclass
class Stack:
    """A server command and its environment; `start()` waits until every worker answers /api/info."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    endpoints: tuple[str, ...] = (INFO, EVENTS)  # what it answers meaningfully
    parser: str = "gunicorn's Python one"  # the HTTP parser when no C one is loaded
    same_page: bool = True  # answers the server's exact events page (fastapi-default does not)
    proc: subprocess.Popen | None = None
    log: object = None
    workers: list[psutil.Process] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, expected_workers: int, timeout: float = 60.0) -> None:
        """Start the stack and wait until every worker has answered /api/info on a fresh connection.

        One answer is not enough: a worker still importing its app when wrk
        connects leaves all the connections to the other, for the whole run.
        """
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            self.workers = self._workers()
            if len(self.workers) >= expected_workers and self._answers():
                seen |= self.pids_answering(10)
                if {w.pid for w in self.workers} <= seen:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {len(seen)} of {len(self.workers)} workers answered within "
                                   f"{timeout:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def _workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        # uvicorn's multiprocessing also starts a resource tracker, which serves no requests.
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
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    seen.add(json.load(resp).get("pid"))
            except (OSError, ValueError):
                pass  # a worker still starting; the caller polls again
        return seen

    def page(self, path: str, token: str):
        """One answer of `path` with the token, decoded."""
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.load(resp)

    def runtime(self) -> str:
        """The event loop and HTTP parser the workers really run, from the libraries mapped in them."""
        loops, parsers = set(), set()
        for worker in self.workers:
            try:
                maps = Path(f"/proc/{worker.pid}/maps").read_text()
            except OSError:
                continue
            loops.add(next((name for part, name in LOOPS if part in maps), "asyncio"))
            parsers.add(next((name for part, name in PARSERS if part in maps), self.parser))
        return f"event loop {'/'.join(sorted(loops)) or 'unknown'}, HTTP parser {'/'.join(sorted(parsers)) or 'unknown'}"

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


def _bench_env(database_url: str, token: str, **extra: str) -> dict[str, str]:
    env = _clean_env()
    env.update(BENCH_POSTGRES_URL=database_url, BENCH_TOKEN=token, PYTHONPATH=str(ROOT), **extra)
    return env


def server_env(database_url: str, token: str, port: int, data_dir: Path) -> dict[str, str]:
    """Our server in its default configuration: only what has no usable default is set."""
    env = _clean_env()
    env.update(AYON_POSTGRES_URL=database_url, AYON_ADMIN_TOKEN=token, AYON_HTTP_BIND=f"127.0.0.1:{port}",
               AYON_DATA_DIR=str(data_dir), AYON_INSTANCE_ID="bench", PYTHONPATH=str(ROOT))
    return env


def ours(database_url: str, token: str, port: int, folder: Path, gunicorn_args: list[str]) -> Stack:
    # Two workers: AYON_SERVER_WORKERS's default.
    env = server_env(database_url, token, port, folder / "ours-data")
    command = [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py", *gunicorn_args]
    return Stack("ayon", command, env, port, folder / "ours.log")


def falcon_ceiling(database_url: str, token: str, port: int, folder: Path, gunicorn_args: list[str]) -> Stack:
    # Same gunicorn settings file (so the same loop and parser); the positional app replaces the configured one.
    env = server_env(database_url, token, port, folder / "falcon-ceiling-data")
    command = [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn_conf.py", *gunicorn_args,
               "bench.http.falcon_ceiling:app"]
    return Stack("falcon-ceiling", command, env, port, folder / "falcon-ceiling.log", endpoints=(INFO,))


def db_ceiling(database_url: str, token: str, port: int, folder: Path, workers: int, driver: str) -> Stack:
    # gunicorn's stock asgi worker with its fastest options, whatever the server's settings say; one
    # SO_REUSEPORT socket per worker spreads connections evenly without the server's accept batching.
    env = _bench_env(database_url, token, BENCH_DRIVER=driver)
    command = [sys.executable, "-m", "gunicorn", "-k", "asgi", "--asgi-loop", "uvloop", "--reuse-port",
               "--workers", str(workers), "--worker-connections", "1000", "--keep-alive", "5",
               "--bind", f"127.0.0.1:{port}", "--no-control-socket", "bench.http.db_ceiling:get_app()"]
    name = "db-ceiling" if driver == "psycopg2" else f"db-ceiling-{driver}"
    return Stack(name, command, env, port, folder / f"{name}.log")


def _uvicorn(name: str, app: str, loop: str, http: str, database_url: str, token: str, port: int, folder: Path,
             workers: int, same_page: bool) -> Stack:
    # Always the launcher: uvicorn's --workers sockets lack TCP_NODELAY, which held every
    # response ~40 ms on a delayed ACK and made a peer look 10x slower.
    command = [sys.executable, "-m", "bench.http.uvicorn_run", app, "--port", str(port), "--workers", str(workers),
               "--loop", loop, "--http", http]
    return Stack(name, command, _bench_env(database_url, token), port, folder / f"{name}.log",
                 parser="h11" if http == "h11" else "unknown", same_page=same_page)


def fastapi_default(database_url: str, token: str, port: int, folder: Path, workers: int) -> Stack:
    # Its page is FastAPI's encoding of row dicts: the same events, not the same document.
    return _uvicorn("fastapi-default", "bench.http.fastapi_default:app", "asyncio", "h11", database_url, token, port,
                    folder, workers, same_page=False)


def fastapi_tuned(database_url: str, token: str, port: int, folder: Path, workers: int) -> Stack:
    return _uvicorn("fastapi-tuned", "bench.http.fastapi_tuned:app", "uvloop", "httptools", database_url, token,
                    port, folder, workers, same_page=True)
