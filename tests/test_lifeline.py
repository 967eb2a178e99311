"""supervision.lifeline: a program that dies with its parent, with its own secrets only."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from supervision import lifeline
from tests.conftest import ROOT
from tests.instance import poll

SHOW_ENV = "import json, os; print(os.getpid(), json.dumps(dict(os.environ)), flush=True)"


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for its parent's wait() has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_execs_in_place_with_its_secrets_decoded():
    env = {**os.environ, lifeline.SECRETS_VAR: lifeline.encode({"AYON_ADMIN_TOKEN": 'to"k%en,;#'}),
           lifeline.PARENT_VAR: str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-m", "supervision.lifeline", "TERM", sys.executable, "-c", SHOW_ENV],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    pid, shown = out.split(" ", 1)
    assert int(pid) == proc.pid  # the same process: supervisord's pid for it stays right
    environ = __import__("json").loads(shown)
    assert environ["AYON_ADMIN_TOKEN"] == 'to"k%en,;#'
    assert lifeline.SECRETS_VAR not in environ and lifeline.PARENT_VAR not in environ


def test_the_program_dies_when_its_parent_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    # A parent that starts a program through the lifeline, then waits forever.
    parent_code = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        env = dict(os.environ, {lifeline.PARENT_VAR}=str(os.getpid()))
        child = subprocess.Popen([sys.executable, "-m", "supervision.lifeline", "TERM", "sleep", "600"], env=env)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        signal.pause()  # until killed
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT)
    try:
        child = int(poll(lambda: pid_file.exists() and pid_file.read_text(), 30, "the child's pid"))
        poll(lambda: Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep\0"), 30, "the exec into sleep")
        parent.kill()
        parent.wait()
        poll(lambda: not alive(child), 5, "the child to die with its parent")
    finally:
        parent.kill()
        parent.wait()


def test_a_parent_already_gone_means_no_start():
    env = {**os.environ, lifeline.PARENT_VAR: "1" if os.getpid() != 1 else "2"}
    proc = subprocess.run([sys.executable, "-m", "supervision.lifeline", "TERM", "echo", "started"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == -signal.SIGTERM and proc.stdout == ""


def test_a_bad_signal_is_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "supervision.lifeline", "NOPE", "true"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr == "Error: unknown signal 'NOPE'\n"


def test_secrets_survive_the_round_trip():
    values = {"A": "".join(map(chr, range(1, 300))), "B": ""}
    word = lifeline.encode(values)
    assert set(word) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert lifeline.decode(word) == values and lifeline.decode("") == {}
