"""A new background program is one module and one declaration line: nothing else is edited.

The test adds both to a copy of the tree and runs that copy for real: the
program is listed by `--programs`, has its section in the generated config,
runs under supervisord and beats in the heartbeat table.
"""

import re
import shutil
import subprocess
import sys

from supervision import roster
from tests.conftest import ROOT
from tests.instance import Instance, poll

MODULE = '''"""A program added by a test: it ticks and beats."""

from server.core.program import Daemon


class Hello(Daemon):
    program = "hello"

    def tick(self) -> None:
        self.log.info("hello from the new program")

    def interval(self) -> float:
        return 0.5


if __name__ == "__main__":
    Hello.main()
'''
DECLARATION = '    Program("hello", "procs.hello", "long-running", "says hello"),\n'


def tree_with_new_program(tmp_path):
    tree = tmp_path / "tree"
    for package in ("server", "supervision", "procs", "maintenance"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "procs" / "hello.py").write_text(MODULE)
    declared = tree / "supervision" / "roster.py"
    text = declared.read_text()
    # One line, appended to the list where programs are declared.
    end = text.index("\n]\n", text.index("PROGRAMS = ["))
    declared.write_text(text[: end + 1] + DECLARATION + text[end + 1:])
    return tree


def test_a_new_program_is_one_module_and_one_line(tmp_path, env, database):
    tree = tree_with_new_program(tmp_path)
    changed = {p.relative_to(tree) for p in tree.rglob("*.py")
               if not (ROOT / p.relative_to(tree)).exists() or (ROOT / p.relative_to(tree)).read_text() != p.read_text()}
    assert changed == {tree.joinpath("procs/hello.py").relative_to(tree),
                       tree.joinpath("supervision/roster.py").relative_to(tree)}
    assert "hello" not in [p.name for p in roster.PROGRAMS]

    roles = dict(env, AYON_RUN_SERVER="false", AYON_RUN_SETUP="false", AYON_RUN_MAINTENANCE="true",
                 PYTHONPATH=str(tree))
    listed = subprocess.run([sys.executable, "-m", "procs.supervisor", "--programs"], cwd=tree, env=roles,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["logcollector", "hello", "maintenance"]
    rendered = subprocess.run([sys.executable, "-m", "procs.supervisor"], cwd=tree, env=roles,
                              capture_output=True, text=True, timeout=60)
    assert re.search(r"^\[program:hello\]$", rendered.stdout, re.M), rendered.stdout

    instance = Instance(roles, tmp_path / "instance", root=tree).start()
    try:
        states = instance.wait_running({"hello", "logcollector", "maintenance"}, 60)
        assert set(states) >= {"hello", "logcollector", "maintenance"}
        poll(lambda: database.fetchone("SELECT pid FROM instances WHERE instance_id = %s AND program = 'hello'",
                                       (env["AYON_INSTANCE_ID"],)), 30, "a heartbeat of the hello program")
        poll(lambda: "hello from the new program" in instance.output, 30, "the hello program's line on stdout")
        assert instance.stop() == 0
    finally:
        instance.kill()
