"""Programs forked from a preloaded supervisord (supervision/preload.py) start as `python -m` would start them.

Each case runs the same probe program twice, from a real fork of a process that
preloaded it and through the real `supervision.lifeline` exec, and compares what the
two saw and how they ended.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from supervision import generator, lifeline, preload
from server.core import settings
from tests.conftest import ROOT
from tests.test_supervisor_config import environ

SECRET = {"PROBE_SECRET": "probe-secret"}

# Plays supervisord: handlers of its own on its signals, the program's environment handed to the fork.
PARENT = r"""
import json, os, signal, sys
from supervision import lifeline, preload
argv, env = json.loads(sys.argv[1]), json.loads(sys.argv[2])
env[lifeline.PARENT_VAR] = str(os.getpid())
found = {tuple(argv): preload.parse(argv)}
failed = preload.preload(found)
for signum in preload.SUPERVISORD_SIGNALS:
    signal.signal(signum, lambda *a: None)
# Garbage not collected yet, holding a descriptor supervisord's fork closes (as it closes 3 and up).
import gc, io
gc.disable()
class Cycle: pass
garbage = Cycle(); garbage.me = garbage; garbage.file = io.FileIO(os.open(os.devnull, os.O_RDONLY))
del garbage
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    os.closerange(3, 256)
    gc.enable()
    preload.become(found[tuple(argv)], env)
_, status = os.waitpid(pid, 0)
print(json.dumps({"failed": failed, "status": status}))
"""


def command(*args: str) -> list[str]:
    """The probe as the supervisord config writes a program's command."""
    py = sys.executable
    return [py, "-m", "supervision.lifeline", "TERM", py, "-m", "tests.preload_probe", *args]


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AYON_", "PROBE_"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), AYON_INSTANCE_ID="probe",
               **{lifeline.SECRETS_VAR: lifeline.encode(SECRET)})
    return env


def forked(*args: str) -> tuple[list[str], str, int]:
    """(stdout lines, stderr, wait status) of the probe forked from a preloaded parent."""
    out = subprocess.run([sys.executable, "-c", PARENT, json.dumps(command(*args)), json.dumps(environment())],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    parent = json.loads(lines.pop())
    assert parent["failed"] == {}
    return lines, out.stderr, parent["status"]


def as_supervisord_execs() -> None:
    """supervisord handles these signals, so exec gives its programs their defaults, whatever ours are."""
    for signum in preload.SUPERVISORD_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def execed(*args: str) -> tuple[list[str], str, int]:
    """The same through the lifeline's exec, as written in the config."""
    out = subprocess.run(command(*args), env={**environment(), lifeline.PARENT_VAR: str(os.getpid())},
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, preexec_fn=as_supervisord_execs)
    code = out.returncode
    return out.stdout.splitlines(), out.stderr, (-code if code < 0 else code << 8)


def report(lines: list[str]) -> dict:
    return json.loads(lines[0])


def test_the_forked_program_sees_what_the_execed_one_sees():
    (fork_lines, _, fork_status), (exec_lines, _, exec_status) = forked("exit", "0"), execed("exit", "0")
    assert fork_status == exec_status == 0
    mine, theirs = report(fork_lines), report(exec_lines)
    # Only where they must differ: the fork's /proc shows neither the secret nor NUL-separated arguments.
    assert mine.pop("proc_environ_has_secret") is False and theirs.pop("proc_environ_has_secret") is True
    assert mine.pop("cmdline") == " ".join(command("exit", "0")[4:])
    assert theirs.pop("cmdline") == "\0".join(command("exit", "0")[4:])
    assert mine == theirs
    assert mine["name"] == "__main__" and mine["main_is_me"] is True
    assert mine["argv"] == [str(ROOT / "tests" / "preload_probe.py"), "exit", "0"]
    assert mine["path0"] == mine["cwd"] == str(ROOT)
    assert mine["env"] == {"AYON_INSTANCE_ID": "probe", **SECRET}  # decoded; the lifeline's own variables gone
    assert mine["signals"]["SIGINT"] == str(signal.default_int_handler)
    assert {mine["signals"][s] for s in ("SIGTERM", "SIGCHLD", "SIGHUP", "SIGQUIT", "SIGUSR2")} == \
        {str(signal.Handlers.SIG_DFL)}


@pytest.mark.parametrize("args,status,stdout,stderr", [
    (("exit", "3"), 3 << 8, [], ""),
    (("exit", "258"), 2 << 8, [], ""),
    (("text",), 1 << 8, [], "probe: stopped with a message\n"),
    (("raise",), 1 << 8, [], "RuntimeError: probe: a bug\n"),
    (("interrupt",), signal.SIGINT, [], "KeyboardInterrupt\n"),
    (("thread",), 0, ["thread finished"], ""),
    (("atexit",), 0, ["atexit ran"], ""),
    (("collect",), 0, ["descriptor 3 kept"], ""),
], ids=["exit-3", "exit-258", "message", "exception", "ctrl-c", "thread", "atexit", "inherited-garbage"])
def test_the_forked_program_ends_as_the_execed_one_does(args, status, stdout, stderr):
    for lines, err, got in (forked(*args), execed(*args)):
        assert got == status, err
        assert lines[1:] == stdout
        assert err.endswith(stderr), err


def test_every_program_of_every_role_is_forked_and_shown_as_its_command(tmp_path):
    """From the generated config itself: a program added later is covered unchanged."""
    values = settings.load(environ(True, True, True, True, tmp_path))
    conf = generator.write(values, tmp_path / "supervisord.conf")
    found = preload.commands(str(conf))
    text = conf.read_text()
    sections = [line for line in text.splitlines() if line.startswith(("[program:", "[eventlistener:"))]
    assert len(found) == len(sections) >= 8
    for argv, parsed in found.items():
        assert parsed.title == " ".join(argv[4:]) and parsed.module == argv[6]
        assert parsed.deathsignal == lifeline.signal_named(argv[3])


@pytest.mark.parametrize("argv", [
    ["/usr/bin/python3", "-m", "supervision.lifeline", "TERM", "/usr/bin/python3", "-m", "procs.webactions"],
    [sys.executable, "-m", "supervision.lifeline", "TERM", "/bin/sh", "-c", "exit 0"],
    [sys.executable, "-m", "supervision.lifeline", "NOSUCH", sys.executable, "-m", "procs.webactions"],
    [sys.executable, "-m", "supervision.lifeline", "TERM", sys.executable, "-m", "-c", "print(1)"],
    [sys.executable, "-m", "supervision.lifeline", "TERM", sys.executable, "-c", "print(1)"],
    [sys.executable, "-m", "procs.webactions"],
    [sys.executable, "-m", "supervision.lifeline", "TERM", sys.executable, "-m"],
], ids=["other-python", "not-python", "bad-signal", "dash-module", "dash-c", "no-lifeline", "no-module"])
def test_any_other_command_is_left_to_exec(argv):
    assert preload.parse(argv) is None


def test_preloading_every_program_starts_no_thread_and_keeps_supervisord_signals(tmp_path):
    """Imports run inside supervisord: none may start a thread (fork would lose it), take a signal or retitle it."""
    values = settings.load(environ(True, True, True, True, tmp_path))
    conf = generator.write(values, tmp_path / "supervisord.conf")
    check = r"""
import json, signal, sys, threading
from supervision import preload
before = {s: signal.getsignal(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}
cmdline = open("/proc/self/cmdline", "rb").read()
found = preload.commands(sys.argv[1])
failed = preload.preload(found)
after = {s: signal.getsignal(s) for s in before}
assert open("/proc/self/cmdline", "rb").read() == cmdline, "preloading changed the command line ps shows"
print(json.dumps({"modules": sorted({c.module for c in found.values()}), "failed": failed,
                  "threads": threading.active_count(), "signals": [s.name for s in before if before[s] != after[s]],
                  "preloaded": sorted(preload._CODE)}))
"""
    out = subprocess.run([sys.executable, "-c", check, str(conf)], cwd=ROOT, capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["failed"] == {} and seen["threads"] == 1 and seen["signals"] == []
    assert seen["preloaded"] == sorted(set(seen["modules"]) - preload.NOT_PRELOADED)
    assert {"gunicorn", "procs.webactions", "maintenance", "supervision.console"} <= set(seen["modules"])


def test_a_module_that_cannot_be_preloaded_fails_in_its_program_with_its_own_error(tmp_path):
    broken = tmp_path / "brokenprobe.py"
    broken.write_text("import no_such_module_anywhere\n")
    py = sys.executable
    argv = [py, "-m", "supervision.lifeline", "TERM", py, "-m", "brokenprobe"]
    env = {**environment(), "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    out = subprocess.run([sys.executable, "-c", PARENT, json.dumps(argv), json.dumps(env)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    parent = json.loads(out.stdout.splitlines()[-1])
    assert parent["failed"] == {"no_such_module_anywhere": "No module named 'no_such_module_anywhere'"}
    assert parent["status"] == 1 << 8
    assert out.stderr.endswith("ModuleNotFoundError: No module named 'no_such_module_anywhere'\n")
