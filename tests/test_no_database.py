"""With no database configured, every command that needs one refuses at once: one line, exit 2.

A run from cron or a one-shot container with AYON_POSTGRES_URL unset has no
instance beside it to run the embedded PostgreSQL, so waiting for 127.0.0.1
could only end in a misleading timeout. The commands come from
pyproject.toml's [project.scripts] and the README's commands table, so one
added later is covered: it refuses too, or is named below as needing no
database. The instance's own start (the entrypoint with no command) runs the
embedded PostgreSQL and is tested in tests/test_entrypoint_validation.py.
"""

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from maintenance import registry
from tests.conftest import ROOT

pytestmark = pytest.mark.serial  # each refusal must come within 2 s (make test runs it alone)

BIN = Path(sys.executable).parent
DEADLINE = 2.0
# Modules that answer without a database: they print what the settings say, or ask supervisord.
# (The console scripts name the modules behind the documented `python -m procs.*` commands.)
NEEDS_NO_DATABASE = {"procs.supervisor", "supervision.generator", "server.core.settings", "supervision.healthcheck"}
# The image's entrypoint: with no command it starts the instance (embedded PostgreSQL and all);
# with one it runs that, which then refuses like any other.
ENTRYPOINTS = {"procs.entrypoint", "supervision.handover"}
COMMAND = ["python", "-m", "maintenance"]
REFUSAL = ("Error: AYON_POSTGRES_URL is not set, and no instance with the embedded PostgreSQL runs on "
           "AYON_DATA_DIR {data}: set AYON_POSTGRES_URL to the database's URL")


def console_scripts() -> dict[str, str]:
    """Script name -> its module, from pyproject.toml."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def documented_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of each `python -m` line of the README's commands table, as typed."""
    section = (ROOT / "README.md").read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for command in re.findall(r"^\| `python -m ([^`]+)` \|", section, re.M):
        module, *args = re.sub(r"\s*\[[^]]*\]", "", command).split()
        task = registry.tasks()[0].name
        found.append((module, [task if arg == "NAME" else arg for arg in args]))
    return found


def cases() -> list[tuple[str, list[str], str]]:
    """(id, argv, module) of every command to try."""
    found = [(name, [str(BIN / name)], module) for name, module in console_scripts().items()]
    found += [(f"python -m {m} {' '.join(a)}".strip(), [sys.executable, "-m", m, *a], m) for m, a in documented_commands()]
    return [(i, [*argv, *COMMAND] if module in ENTRYPOINTS else argv, module) for i, argv, module in found]


def run(argv: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    data = tmp_path / "data"
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path), "AYON_DATA_DIR": str(data),
           "AYON_SUPERVISOR_CONF": str(tmp_path / "supervisord.conf"), "AYON_ADMIN_TOKEN": "no-db-token"}
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_every_console_script_and_documented_command_is_tried():
    ids = [i for i, _, _ in cases()]
    assert len(ids) >= 6 + 7, ids
    assert {"ayon-maintenance", "ayon-setup", "python -m maintenance --daemon", "python -m procs.setup"} <= set(ids)
    modules = {m for _, _, m in cases()}
    assert NEEDS_NO_DATABASE | ENTRYPOINTS <= modules, "a name here is no command any more"


@pytest.mark.parametrize(("argv", "module"), [c[1:] for c in cases()], ids=[c[0] for c in cases()])
def test_with_no_database_configured_it_refuses_at_once_or_needs_none(argv, module, tmp_path):
    result, took = run(argv, tmp_path)
    assert took < DEADLINE, f"{took:.1f} s: {result.stdout}{result.stderr}"
    if module in NEEDS_NO_DATABASE:
        assert "AYON_POSTGRES_URL is not set" not in result.stderr, result.stderr
        return
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [REFUSAL.format(data=tmp_path / "data")], result.stderr
    assert result.stdout == ""
