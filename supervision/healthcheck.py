"""The image's health check: exit 0 only when this instance does its work.

Every program expected for the enabled roles must be RUNNING, as
`supervisorctl status` shows it (setup may be EXITED with code 0, or gone
from the table once the watchdog removed it after it finished), and with
the server role GET /health/ready must answer 200. One line on stdout says
what is wrong; exit 1 then.
"""

import sys
import urllib.error
import urllib.request

from server.core import layout
from server.core import settings as settings_mod
from server.core.errors import ConfigError, first_line
from supervision import generator

HTTP_TIMEOUT = 5


def program_states(conf: str) -> dict[str, dict]:
    """Each program's state as supervisorctl sees it, through its own client."""
    from supervisor.supervisorctl import ClientOptions

    options = ClientOptions()
    options.realize(args=["-c", conf], doc="")
    proxy = options.getServerProxy()
    return {info["name"]: info for info in proxy.supervisor.getAllProcessInfo()}


def program_problems(expected: list[str], states: dict[str, dict], setup_done: bool = False) -> list[str]:
    problems = []
    for name in expected:
        info = states.get(name)
        if info is None and name == "setup" and setup_done:
            continue
        if info is None:
            problems.append(f"{name} is not configured")
        elif info["statename"] == "RUNNING":
            continue
        elif name == "setup" and info["statename"] == "EXITED" and info["exitstatus"] == 0:
            continue
        else:
            problems.append(f"{name} is {info['statename']}")
    return problems


def ready_problem(bind: str) -> str | None:
    host, _, port = bind.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as answer:
            if answer.status == 200:
                return None
            return f"{url} answered {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except OSError as exc:
        return f"{url} did not answer: {exc}"


def main() -> int:
    try:
        values = settings_mod.load()
        generator.check_roles(values)
    except ConfigError as exc:
        print(f"unhealthy: {exc}")
        return 1
    if values.roles == ["setup"]:
        # Setup alone runs in the foreground: the container's exit code is its verdict.
        return 0
    expected = [p.name for p in generator.programs(values)]
    try:
        setup_done = layout.setup_done(values.data_dir).exists()
        problems = program_problems(expected, program_states(values.supervisor_conf), setup_done)
    except Exception as exc:  # the socket is missing, refused, or the config unreadable
        problems = [f"supervisord does not answer: {first_line(exc)}"]
    if not problems and values.run_server:
        problem = ready_problem(values.http_bind)
        problems += [problem] if problem else []
    if problems:
        print("unhealthy: " + "; ".join(problems))
        return 1
    print("healthy: " + ", ".join(expected))
    return 0


def run() -> None:
    """Entry point of `ayon-healthcheck` and scripts/healthcheck."""
    sys.exit(main())


if __name__ == "__main__":
    run()
