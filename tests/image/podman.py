"""podman helpers for the image tests: containers of the image under test, checked from outside."""

import os
import re
import subprocess
import time
import uuid

IMAGE = os.environ.get("AYON_TEST_IMAGE", "").strip()
# runc refuses the host's unlimited rlimits inside the sandbox; these fit every program.
PODMAN = ["podman", "--runtime", "runc"]
NPROC = 1024
RUN_OPTIONS = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", f"nproc={NPROC}:{NPROC}"]
# The same for programs that run podman themselves (podman-compose): a containers.conf named by CONTAINERS_CONF.
CONTAINERS_CONF = f"""\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc={NPROC}:{NPROC}"]

[engine]
runtime = "runc"
"""
# No systemd here to time health checks: the tests run them with `podman healthcheck run`.
DETACHED_OPTIONS = [*RUN_OPTIONS, "--health-interval", "disable"]
# What deploy/kubernetes asks of the pods: read-only root, writable data and
# supervisord config folders, no capabilities, no privilege escalation.
HARDENED_OPTIONS = ("--read-only", "--volume", "/etc/supervisor", "--cap-drop", "ALL",
                    "--security-opt", "no-new-privileges")
# Foreground runs skip the health check, so podman adds no timer complaints to the container's stderr.
FOREGROUND_OPTIONS = [*RUN_OPTIONS, "--no-healthcheck"]
TOKEN = "image-test-token"
STOP_GRACE = 45  # the image's documented stop timeout, above supervisord's 30 s stopwaitsecs


def podman(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run a podman command and capture its output as text."""
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def progress(message: str) -> None:
    print(f"[image-test] {message}", flush=True)


def open_files(container: "Container") -> tuple[int, int]:
    """The soft and hard open-files limits of the container's first process, as /proc/1/limits gives them."""
    limits = container.exec("cat", "/proc/1/limits").stdout
    found = re.search(r"^Max open files +(\d+) +(\d+) ", limits, re.M)
    assert found, limits
    return int(found.group(1)), int(found.group(2))


class Container:
    """One detached container of the image under test; removed (with its volume) at the end."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), options: tuple[str, ...] = ()):
        self.name = "ayon-test-" + uuid.uuid4().hex[:8]
        self.env = env
        self.args = args
        self.options = options

    @classmethod
    def existing(cls, name: str) -> "Container":
        """A container started by something else (podman-compose), to check it the same way."""
        container = cls({})
        container.name = name
        return container

    def start(self) -> "Container":
        flags = [item for key, value in self.env.items() for item in ("-e", f"{key}={value}")]
        podman("run", "-d", "--name", self.name, *DETACHED_OPTIONS, *self.options, *flags, IMAGE, *self.args, check=True)
        roles = ", ".join(f"{k}={v}" for k, v in self.env.items() if k.startswith("AYON_RUN_")) or "every role"
        progress(f"started {self.name} ({roles})")
        return self

    def exec(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *argv, timeout=timeout)

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name, check=True).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def logs(self, tail: int = 60) -> str:
        result = podman("logs", "--tail", str(tail), self.name)
        return result.stdout + result.stderr

    def wait_healthy(self, timeout: float = 180) -> str:
        """Poll the image's own HEALTHCHECK until it passes; the check's verdict line is returned."""
        deadline = time.monotonic() + timeout
        while True:
            result = podman("healthcheck", "run", self.name, timeout=60)
            if result.returncode == 0:
                return self.exec("/app/scripts/healthcheck").stdout.strip()
            if not self.running():
                raise AssertionError(f"{self.name} exited before becoming healthy:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not healthy after {timeout} s: {result.stdout.strip()}\n"
                                     f"{self.logs()}")
            time.sleep(1)

    def wait_exit(self, timeout: float = 120) -> int:
        result = podman("wait", self.name, timeout=timeout, check=True)
        return int(result.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", self.name)


def run_once(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`podman run --rm` in the foreground: the container's exit code and output."""
    flags = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    return podman("run", "--rm", *FOREGROUND_OPTIONS, *flags, IMAGE, *args, timeout=timeout)


def supervisor_status(container: Container) -> dict[str, str]:
    """Program name -> state, from `supervisorctl status` typed bare in the container."""
    result = container.exec("supervisorctl", "status")
    # supervisorctl exits 3 when a program is not running (setup EXITED): the text is what counts.
    assert result.returncode in (0, 3), result.stdout + result.stderr
    states = {}
    for line in result.stdout.splitlines():
        name, state, *_ = line.split()
        states[name] = state
    return states
