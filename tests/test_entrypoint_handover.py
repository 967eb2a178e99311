"""The entrypoint hands every AYON_* setting to the next process in memory, never in its environment."""

import json
import subprocess
import sys

from tests.conftest import ROOT

HAND_OVER = "from supervision import handover; handover.hand_over('tests.handover_probe')"


def handed(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", HAND_OVER], env=env, cwd=ROOT, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_every_setting_arrives_byte_for_byte_and_none_is_in_the_environment_proc_shows():
    settings = {
        b"AYON_ADMIN_TOKEN": b"a-secret-token-of-the-admin",
        b"AYON_POSTGRES_URL": b"postgresql://ayon:p=ss\nword@db/ayon?x=1&y==2",
        b"AYON_EMPTY": b"",
        b"AYON_NOT_UTF8": b"\xff\xfe caf\xc3\xa9",
        b"AYON_LARGE": b"x" * 100_000,  # beyond a pipe's 64 KiB buffer: nothing may block before the exec
    }
    env = {b"PATH": b"/usr/bin:/bin", b"PYTHONPATH": str(ROOT).encode(), b"PROBE_KEPT": b"yes", **settings}
    report = handed(env)
    assert report["taken"] is True
    assert {bytes.fromhex(k): bytes.fromhex(v) for k, v in report["settings"].items()} == settings
    assert report["other"] == {"PROBE_KEPT": "yes"}
    shown = bytes.fromhex(report["proc_environ"])
    assert b"AYON_" not in shown and b"a-secret-token" not in shown and b"p=ss" not in shown
    assert b"PROBE_KEPT=yes" in shown
    # The in-memory file is closed once read: nothing this process starts inherits it.
    assert not [t for t in report["fd_targets"] if "ayon-settings" in t], report["fd_targets"]


def test_no_settings_hand_over_an_empty_file():
    report = handed({"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert report["taken"] is True and report["settings"] == {}


def test_a_process_started_without_the_file_takes_nothing():
    for argv in ([], ["--settings-fd"], ["--settings-fd", "x"], ["--other", "3"], ["--settings-fd", "3", "more"]):
        out = subprocess.run([sys.executable, "-m", "tests.handover_probe", *argv], cwd=ROOT, capture_output=True,
                             timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "AYON_X": "1"})
        assert json.loads(out.stdout)["taken"] is False, argv


def test_every_setting_is_one_the_entrypoint_hands_over():
    """The hand-over takes AYON_* variables: a setting named otherwise would stay in supervisord's environment."""
    from supervision import handover
    from server.core import settings

    assert settings.SETTINGS
    for setting in settings.SETTINGS:
        assert setting.name.encode().startswith(handover.PREFIX), setting.name


def test_a_command_the_entrypoint_cannot_run_is_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    (tmp_path / "text").write_text("not a program\n")
    (tmp_path / "text").chmod(0o644)
    for argv, code, what in ((["no-such-command-here"], 127, "No such file or directory"),
                             ([str(tmp_path / "text")], 126, "Permission denied")):
        out = subprocess.run([sys.executable, "-m", "procs.entrypoint", *argv], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout) == (code, ""), out.stderr
        assert out.stderr == f"Error: cannot run {argv[0]!r}: {what}\n"


def test_settings_that_cannot_be_taken_are_one_line_and_start_nothing(tmp_path):
    """supervision.supervisord started by hand with a bad descriptor or file: exit 2 with one line, nothing written."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    good = b"AYON_DATA_DIR=" + str(tmp_path / "data").encode() + b"\0AYON_SUPERVISOR_CONF=" + \
        str(tmp_path / "supervisord.conf").encode()
    cases = [
        (["--settings-fd", "97"], None,
         "--settings-fd 97: the settings handed over cannot be read (Bad file descriptor)"),
        (["--settings-fd", "0"], good + b"\0not-a-setting", "--settings-fd 0: the settings handed over are not"),
        (["--settings-fd", "0"], good + b"\0=value", "--settings-fd 0: the settings handed over are not"),
    ]
    for argv, stdin, expected in cases:
        out = subprocess.run([sys.executable, "-m", "supervision.supervisord", *argv], env=env, cwd=ROOT, input=stdin,
                             capture_output=True, timeout=30)
        assert out.returncode == 2, out.stderr.decode()
        assert out.stderr.decode().startswith(f"Error: {expected}") and out.stderr.count(b"\n") == 1, out.stderr
    assert list(tmp_path.iterdir()) == []
    # Empty entries (a trailing NUL) are nothing: the settings before them still count.
    out = subprocess.run([sys.executable, "-m", "supervision.supervisord", "--settings-fd", "0"], env=env, cwd=ROOT,
                         input=good + b"\0AYON_RUN_SERVER=perhaps\0\0", capture_output=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.decode() == "Error: AYON_RUN_SERVER='perhaps': expected one of true/false/1/0/yes/no/on/off\n"
    assert list(tmp_path.iterdir()) == []
