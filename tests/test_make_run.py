"""`make run` on a copy of the tree, driven through a real terminal, stopped with Ctrl-C."""

import os
import pty
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.conftest import ROOT
from tests.instance import http_get, poll
from tests.pg import free_port

SKIP = shutil.ignore_patterns(".venv", ".run", ".git", "__pycache__", ".pytest_cache", "test-output", "build")


def test_make_run_serves_and_stops_on_ctrl_c(tmp_path):
    tree = tmp_path / "clone"
    shutil.copytree(ROOT, tree, ignore=SKIP)
    port, pg_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AYON_")}
    env.update(AYON_HTTP_BIND=f"127.0.0.1:{port}", AYON_EMBEDDED_PG_PORT=str(pg_port), TERM="dumb")
    venv = Path(sys.executable).resolve().parent.parent if (ROOT / ".venv").exists() else None
    args = ["make", "run"] + ([f"VENV={ROOT / '.venv'}"] if venv else [])

    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose terminal is the pty
        os.chdir(tree)
        os.execvpe("make", args, env)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    output = lambda: "".join(chunks)  # noqa: E731
    try:
        poll(lambda: http_get(f"http://127.0.0.1:{port}/health/ready")[0] == 200, 180,
             lambda: "make run to serve /health/ready\n" + output()[-3000:])
        text = output()
        assert f"open http://127.0.0.1:{port}/" in text
        token = re.search(r"admin token: (\S+)", text)[1]
        assert http_get(f"http://127.0.0.1:{port}/api/config", token=token)[0] == 200
        assert "[local/server]" in text or "local/server" in text or "gunicorn" in text
        for program in ("postgres", "setup", "server", "maintenance", "logcollector"):
            assert f"'{program}'" in text  # supervisord names each program it spawns
        tree_procs = [p for p in psutil.process_iter(["cwd"]) if str(tree) in (p.info["cwd"] or "")]
        assert len(tree_procs) >= 6

        started = time.monotonic()
        os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT to the foreground group
        _, status = os.waitpid(pid, 0)
        took = time.monotonic() - started
        assert os.waitstatus_to_exitcode(status) == 0, output()[-3000:]
        assert took < 10, f"stopping took {took:.1f} s"
        poll(lambda: "make run: stopped (cleanly)" in output(), 5, lambda: output()[-2000:])
        poll(lambda: not [p for p in tree_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
             "every process of make run to exit")
    finally:
        for proc in psutil.process_iter(["cwd"]):
            if str(tree) in (proc.info["cwd"] or ""):
                proc.kill()
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
