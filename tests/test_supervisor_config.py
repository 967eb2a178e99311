"""The generated supervisord config, parsed by supervisor's own option parser."""

import itertools
import os
import stat
import subprocess
import sys

import pytest
from supervisor.options import ServerOptions

from supervision import generator, lifeline
from server.core import settings
from tests.conftest import ROOT
from tests.roles import LISTENERS, names_for

EXTERNAL = "postgresql://ayon:secret@db.example:5432/ayon"
BACKGROUND = ["webactions", "installer"]
# The program names users and tools rely on (README, Programs): a program added later may join them.
CONTRACT = {"postgres", "setup", "server", "webactions", "installer", "logcollector", "maintenance"}


def expected_programs(server, setup, maintenance, embedded):
    """The contract's programs for these roles."""
    found = []
    if embedded:
        found.append("postgres")
    if setup and (server or maintenance):
        found.append("setup")
    if server:
        found += ["server", *BACKGROUND]
    if server or maintenance:
        found.append("logcollector")
    if maintenance:
        found.append("maintenance")
    return set(found)


def environ(server, setup, maintenance, embedded, tmp_path):
    env = {
        "AYON_RUN_SERVER": str(server).lower(),
        "AYON_RUN_SETUP": "yes" if setup else "no",
        "AYON_RUN_MAINTENANCE": "1" if maintenance else "0",
        "AYON_DATA_DIR": str(tmp_path / "data"),
    }
    if not embedded:
        env["AYON_POSTGRES_URL"] = EXTERNAL
    return env


def parse(path):
    """Load a config exactly as supervisord would; returns {program: process config}."""
    options = ServerOptions()
    options.realize(["-c", str(path)])
    return {group.name: group.process_configs[0] for group in options.process_group_configs}, options


COMBOS = [c for c in itertools.product([True, False], repeat=3) if any(c) and c != (False, True, False)]


@pytest.mark.parametrize("embedded", [False, True], ids=["external", "embedded"])
@pytest.mark.parametrize("server,setup,maintenance", COMBOS)
def test_program_set_matches_the_design(server, setup, maintenance, embedded, tmp_path):
    values = settings.load(environ(server, setup, maintenance, embedded, tmp_path))
    path = generator.write(values, tmp_path / "supervisord.conf")
    programs, options = parse(path)
    assert set(programs) & CONTRACT == expected_programs(server, setup, maintenance, embedded)
    assert set(programs) - set(LISTENERS) == set(
        names_for(server=server, setup=setup, maintenance=maintenance, embedded=embedded))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "run").st_mode) == 0o700
    assert options.nodaemon
    server_conf = options.server_configs[0]
    assert server_conf["chmod"] == 0o700 and server_conf["username"] == "ayon" and len(server_conf["password"]) >= 24
    for name, proc in programs.items():
        if name in LISTENERS:
            continue
        # its own capped file for `supervisorctl tail`, and events for the console listener
        assert proc.stdout_logfile == str(tmp_path / "data" / "logs" / f"{name}.log")
        assert proc.stdout_logfile_maxbytes == 5 * 1024 * 1024 and proc.stdout_logfile_backups == 1
        assert proc.stdout_events_enabled and proc.redirect_stderr
        assert proc.command.startswith(f"{sys.executable} -m supervision.lifeline ")
        # gunicorn's master stops its workers itself, after its drain: they must not get the signal first.
        assert proc.stopasgroup is (name != "server") and proc.killasgroup
        assert proc.environment["PYTHONUNBUFFERED"] == "1"
        assert proc.autorestart is (False if name == "setup" else supervisor_restart_unexpected())
        assert proc.exitcodes == ([0] if name == "setup" else [0, 2])
        assert proc.stopwaitsecs > 0 and proc.startsecs >= 0
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "logs").st_mode) == 0o700
    console = programs["console"]
    assert console.stderr_logfile == "/dev/stdout" and console.stdout_logfile is None
    if "server" in programs:
        # the drain (default 5 s), then gunicorn's graceful timeout, then a margin
        assert programs["server"].stopwaitsecs == values.drain_seconds + settings.SERVER_GRACE_SECONDS + 5 == 30
    if "postgres" in programs:
        assert programs["postgres"].priority < min(p.priority for n, p in programs.items() if n not in ("postgres", *LISTENERS))
    if "setup" in programs:
        others = [p.priority for n, p in programs.items() if n not in ("postgres", "setup", *LISTENERS)]
        assert programs["setup"].priority < min(others)


def supervisor_restart_unexpected():
    from supervisor.datatypes import RestartWhenExitUnexpected

    return RestartWhenExitUnexpected


def test_setup_alone_runs_in_the_foreground(tmp_path):
    values = settings.load(environ(False, True, False, False, tmp_path))
    assert generator.programs(values) == []
    out = run("procs.supervisor", "--programs", env=environ(False, True, False, False, tmp_path))
    assert out.returncode == 0 and out.stdout == "setup\n"


def test_programs_flag_lists_names(tmp_path):
    out = run("procs.supervisor", "--programs", env=environ(True, True, True, True, tmp_path))
    listed = out.stdout.split()
    assert [name for name in listed if name in CONTRACT] == [
        "postgres", "setup", "logcollector", "server", "webactions", "installer", "maintenance"]
    assert listed == names_for(server=True, setup=True, maintenance=True, embedded=True)


def test_printed_config_masks_credentials(tmp_path):
    env = environ(True, True, True, False, tmp_path)
    env["AYON_ADMIN_TOKEN"] = "a-token-of-sane-length-123"
    out = run("procs.supervisor", env=env)
    assert out.returncode == 0
    assert "password=***" in out.stdout and "secret" not in out.stdout
    assert 'AYON_PROGRAM_SECRETS="***"' in out.stdout
    assert "a-token-of-sane-length-123" not in out.stdout and lifeline.encode({"x": "a-token"})[:6] not in out.stdout


# Characters a supervisord config value would cut, expand, or take as a comment or separator.
NASTY = """a"b'c%(ENV_HOME)s,d=e ;f #g\\h"""


def program_secrets(proc) -> dict:
    return lifeline.decode(proc.environment.get(lifeline.SECRETS_VAR, ""))


@pytest.mark.parametrize("embedded", [False, True], ids=["external", "embedded"])
def test_each_program_gets_only_its_secrets(embedded, tmp_path):
    env = environ(True, True, True, embedded, tmp_path)
    url = "postgresql://ayon:p%40s,s;w'o\"r%25d@db.example:5432/ayon"
    env.update(AYON_ADMIN_TOKEN="tok-" + NASTY.replace(" ", ""))
    if not embedded:
        env["AYON_POSTGRES_URL"] = url
    values = settings.load(env)
    programs, _ = parse(generator.write(values, tmp_path / "supervisord.conf"))
    token = {"AYON_ADMIN_TOKEN": env["AYON_ADMIN_TOKEN"]}
    database = {} if embedded else {"AYON_POSTGRES_URL": url}
    expected = {name: database for name in ("logcollector", "webactions", "installer", "maintenance")}
    expected.update(setup={**database, **token}, server={**database, **token}, console={})
    if embedded:
        expected["postgres"] = {}
    got = {name: program_secrets(proc) for name, proc in programs.items()}
    # Nothing else, the control socket's credentials included: the watchdog is supervisord itself.
    assert got == expected
    for proc in programs.values():
        assert set(proc.environment) <= {"PYTHONUNBUFFERED", lifeline.SECRETS_VAR}


def run(module, *args, env):
    return subprocess.run([sys.executable, "-m", module, *args], env={**env, "PATH": os.environ["PATH"]},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", ["procs.entrypoint", "procs.supervisor"])
def test_no_role_is_a_configuration_error(module, tmp_path):
    out = run(module, env=environ(False, False, False, False, tmp_path))
    assert out.returncode == 2
    assert out.stderr == ("Error: no role enabled: set at least one of AYON_RUN_SERVER, AYON_RUN_SETUP, "
                          "AYON_RUN_MAINTENANCE to true\n")
    assert not (tmp_path / "data").exists()


def test_setup_alone_with_embedded_postgres_is_refused(tmp_path):
    out = run("procs.entrypoint", env=environ(False, True, False, True, tmp_path))
    assert out.returncode == 2
    assert out.stderr.startswith("Error: AYON_RUN_SETUP alone needs AYON_POSTGRES_URL")


def test_bad_flag_exits_2_with_nothing_started(tmp_path):
    env = environ(True, True, True, False, tmp_path)
    env["AYON_RUN_MAINTENANCE"] = "sometimes"
    out = run("procs.entrypoint", env=env)
    assert out.returncode == 2
    assert out.stderr == "Error: AYON_RUN_MAINTENANCE='sometimes': expected one of true/false/1/0/yes/no/on/off\n"
    assert not (tmp_path / "data").exists()


def test_arguments_are_executed_instead(tmp_path):
    out = run("procs.entrypoint", "python3", "-c", "print('hello from the image')",
              env=environ(True, True, True, False, tmp_path))
    assert out.returncode == 0 and out.stdout == "hello from the image\n"


def test_the_server_stop_waits_for_the_configured_drain(tmp_path):
    env = environ(True, False, False, False, tmp_path)
    for drain, wait in (("0", 25), ("12", 37)):
        values = settings.load({**env, "AYON_DRAIN_SECONDS": drain})
        programs, _ = parse(generator.write(values, tmp_path / f"drain{drain}.conf"))
        assert programs["server"].stopwaitsecs == wait
        assert programs["webactions"].stopwaitsecs == 15  # programs that do not drain keep their own

