"""The README's `podman run` block, run as written: it must start on a host with strict rlimits.

The commands are read from the README, so the documented line cannot rot. The
test changes only what two runs on one host cannot share: the container name,
the volume and the host port (on loopback); the image is the one under test
when it has another name. podman runs as the README has it, with no
containers.conf of the tests' (tests/image/podman.py) and its default runtime.
"""

import re
import shlex
import subprocess
import uuid

from tests.conftest import ROOT
from tests.image.podman import IMAGE, TOKEN, Container, progress
from tests.pg import free_port

README = ROOT / "README.md"
READY_TIMEOUT = 180


def readme_podman_block() -> list[list[str]]:
    """The commands of the README's shell block that starts with `podman run`, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.M | re.S)
    (block,) = [b for b in blocks if b.startswith("podman run ")]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_podman_run_block_has_the_rlimit_flags():
    run, *execs = readme_podman_block()
    assert run[:3] == ["podman", "run", "-d"]
    ulimits = [run[i + 1] for i, arg in enumerate(run) if arg == "--ulimit"]
    assert sorted(u.split("=")[0] for u in ulimits) == ["nofile", "nproc"], run
    assert [e[:3] for e in execs] == [["podman", "exec", run[run.index("--name") + 1]]] * len(execs)


def test_readme_podman_run_line_starts_and_its_commands_work():
    run, *execs = readme_podman_block()
    name = run[run.index("--name") + 1]
    own_name, volume = f"ayon-readme-{uuid.uuid4().hex[:8]}", f"ayon-readme-{uuid.uuid4().hex[:8]}"
    replaced = {name: own_name, "5000:5000": f"127.0.0.1:{free_port()}:5000",
                "AYON_ADMIN_TOKEN=change-me": f"AYON_ADMIN_TOKEN={TOKEN}"}
    argv = []
    for arg in run:
        arg = replaced.get(arg, arg)
        if arg.startswith("ayon-data:"):
            arg = arg.replace("ayon-data", volume, 1)
        elif re.fullmatch(r"localhost/ayon-server:\S+", arg):
            arg = IMAGE
        argv.append(arg)
    progress(f"README: {shlex.join(argv)}")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        container = Container.existing(own_name)
        progress(f"README's podman run: {container.wait_healthy(timeout=READY_TIMEOUT)}")
        for command in execs:
            command = [own_name if arg == name else arg for arg in command]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            # supervisorctl exits 3 while a program is not running (setup EXITED): the text is what counts.
            ok = (0, 3) if command[3:5] == ["supervisorctl", "status"] else (0,)
            assert result.returncode in ok, f"{shlex.join(command)}:\n{result.stdout}{result.stderr}"
            progress(f"README: {shlex.join(command)}: exit {result.returncode}")
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "0", own_name], capture_output=True, timeout=120)
        subprocess.run(["podman", "volume", "rm", "--force", volume], capture_output=True, timeout=120)
