"""The image and deployment files: lints, manifest validation, and names that exist."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from packaging.version import Version

from server.core import VERSION, config, settings
from supervision import generator, roster
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
COMPOSE = sorted((ROOT / "deploy" / "compose").glob("*.yml"))
KUBERNETES = ROOT / "deploy" / "kubernetes"
# Every Kubernetes object the layers are made of (kustomization.yaml files say how they combine).
MANIFESTS = sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")
# The maintenance choices, each applied with the base (`kubectl apply -k deploy/kubernetes/<choice>`):
# the one mechanism it brings, and the maintenance.enabled its configuration must say.
MAINTENANCE_CHOICES = {
    "maintenance-cronjob": ("CronJob/ayon-maintenance", False),
    "maintenance-daemon": ("Deployment/ayon-maintenance", True),
}
# The contract step of a rolling upgrade: applied on its own after a rollout (`kubectl apply -k
# deploy/kubernetes/contract`), beside whichever choice runs.
CONTRACT = "contract"
# The claims a choice brings for its own data folder (the server's come from its volumeClaimTemplates).
DATA_CLAIMS = {"maintenance-daemon": {"PersistentVolumeClaim/ayon-maintenance-data"}}
# The oldest Kubernetes release the manifests support; the newest is the newest kubernetes-validate knows.
OLDEST_KUBERNETES = Version("1.29")
# The project's image, as `make image` tags it, the Compose files build it (AYON_IMAGE picks
# another) and the Kubernetes manifests name it: in full, pinned by the version.
PROJECT_IMAGE = f"localhost/ayon-server:{VERSION}"
COMPOSE_PROJECT_IMAGE = f"${{AYON_IMAGE:-{PROJECT_IMAGE}}}"
# Official images the Compose files may use, named in full (no search registries needed), and
# the variables and commands they document.
OFFICIAL_IMAGES = {"docker.io/library/postgres": re.compile(r"^(1[4-9])(-bookworm)?$")}
OFFICIAL_VARIABLES = {"docker.io/library/postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"}}
OFFICIAL_COMMANDS = {"docker.io/library/postgres": {"pg_isready"}}
# Variables the user sets when running compose, beside the AYON_* settings.
COMPOSE_INPUTS = {"POSTGRES_PASSWORD", "HTTP_PORT", "SERVER_PORT", "SERVER_2_PORT", "AYON_IMAGE", "AYON_NOFILE"}
# The service `compose exec server python -m maintenance` reaches in every Compose file (upstream's docs).
COMPOSE_SERVER = "server"
DEPLOY = ROOT / "deploy"
BY_NAME = {setting.name: setting for setting in settings.SETTINGS}


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def shell_scripts() -> list[Path]:
    found = []
    for path in sorted((ROOT / "scripts").iterdir()):
        if path.is_file():
            first = path.read_text(errors="replace").partition("\n")[0]
            if first.startswith("#!") and re.search(r"\b(ba|da|k)?sh\b", first):
                found.append(path)
    return found


def image_command_exists(argv: list[str]) -> bool:
    """Whether a command run in the project image names a program that is there."""
    if argv[:2] == ["python", "-m"] and len(argv) > 2:
        module = ROOT.joinpath(*argv[2].split("."))
        return module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()
    if argv[0].startswith("/app/"):
        return (ROOT / argv[0].removeprefix("/app/")).is_file()
    return argv[0] in {"supervisorctl"}


# --- lints ---


def test_dockerfile_passes_hadolint():
    result = run(str(BIN / "hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = shell_scripts()
    assert {p.name for p in scripts} >= {"docker-entrypoint.sh", "build-base-image.sh", "build-image.sh"}
    result = run(str(BIN / "shellcheck"), *map(str, scripts))
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_scripts_are_executable():
    for name in ("docker-entrypoint.sh", "healthcheck", "ayon-doctor", "build-base-image.sh", "build-image.sh"):
        assert (ROOT / "scripts" / name).stat().st_mode & 0o111, name


def test_dockerfile_keeps_its_contract():
    text = (ROOT / "Dockerfile").read_text()
    for line in ("ARG BASE_IMAGE=python:3.11-slim-bookworm", 'ENTRYPOINT ["/app/scripts/docker-entrypoint.sh"]',
                 "EXPOSE 5000", 'VOLUME ["/var/lib/ayon"]', "STOPSIGNAL SIGTERM", "USER 10001:10001"):
        assert line in text.splitlines(), line
    assert 'CMD ["/app/scripts/healthcheck"]' in text
    assert "    && ln -s /app/scripts/ayon-doctor /opt/venv/bin/ayon-doctor" in text.splitlines()  # on PATH


# --- Kubernetes ---


def kubernetes_minors(oldest: Version = OLDEST_KUBERNETES) -> list[str]:
    """Each Kubernetes minor from `oldest` to the newest that the installed kubernetes-validate has schemas for."""
    known = {kubernetes_validate.major_minor(v) for v in kubernetes_validate.all_versions()}
    return sorted((v for v in known if Version(v) >= oldest), key=Version)


def load_objects(path: Path) -> dict[str, dict]:
    found = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            assert key not in found, f"{path}: {key} twice"
            found[key] = doc
    return found


def merge_patch(target: dict, patch: dict, where: str) -> dict:
    """A strategic-merge patch as kustomize applies it, for patches made of maps and scalars only."""
    merged = dict(target)
    for key, value in patch.items():
        # Lists merge by per-field keys in a strategic merge: this resolver does not do that.
        assert not isinstance(value, list), f"{where}: a list in a patch ({key}) needs kubectl to resolve"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value, where)
        else:
            merged[key] = value
    return merged


def kustomize(folder: Path, files: set[Path] | None = None) -> dict[str, dict]:
    """The objects `kubectl apply -k folder` applies, keyed kind/name, resolved without kubectl.

    Only what these folders use (resources: files and folders; patches: strategic-merge
    files); anything else in a kustomization.yaml fails here rather than being ignored.
    `files` collects every file read.
    """
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{folder}: this resolver does not know {sorted(unknown)}"
    assert spec["kind"] == "Kustomization", folder
    found: dict[str, dict] = {}
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        objects = kustomize(path, files) if path.is_dir() else load_objects(path)
        if path.is_file() and files is not None:
            files.add(path)
        for key, doc in objects.items():
            assert key not in found, f"{folder}: {key} comes twice"
            found[key] = doc
    for patch in spec.get("patches", []):
        assert set(patch) == {"path"}, f"{folder}: only patches given by path are resolved here: {patch}"
        path = (folder / patch["path"]).resolve()
        if files is not None:
            files.add(path)
        for key, doc in load_objects(path).items():
            assert key in found, f"{path}: patches {key}, which {folder} does not have"
            found[key] = merge_patch(found[key], doc, str(path))
    return found


def applied(choice: str) -> dict[str, dict]:
    return kustomize(KUBERNETES / choice)


def all_objects() -> dict[str, dict]:
    """Every object of every maintenance choice (the base's appear once)."""
    found = {}
    for choice in (*MAINTENANCE_CHOICES, CONTRACT):
        found.update(applied(choice))
    return found


def pod_specs(found: dict[str, dict]) -> dict[str, dict]:
    specs = {}
    for key, doc in found.items():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            specs[key] = spec["template"]["spec"]
    return specs


def container_settings(container: dict, found: dict[str, dict]) -> settings.Settings:
    """The settings a container starts with: its env and the Secrets it takes whole (envFrom)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(found[f"Secret/{source['secretRef']['name']}"]["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # set from the pod's fields: a value of its own, not a role switch
            env[item["name"]] = "from-the-pod"
    return settings.load(env)


def maintenance_mechanisms(found: dict[str, dict]) -> list[str]:
    """The objects that run the maintenance procedure: a one-shot run or the daemon."""
    mechanisms = []
    for key, pod in pod_specs(found).items():
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            argv = container.get("command", []) + container.get("args", [])
            if argv:  # the entrypoint runs the command instead of the roles
                runs = argv[:3] == ["python", "-m", "maintenance"]
            else:
                values = container_settings(container, found)
                runs = values.roles != ["setup"] and "maintenance" in [p.name for p in generator.programs(values)]
            if runs:
                mechanisms.append(key)
    return mechanisms


def configured_maintenance(found: dict[str, dict], tmp_path: Path) -> dict:
    path = tmp_path / "config.yaml"
    path.write_text(found["ConfigMap/ayon-config"]["data"]["config.yaml"])
    return config.load_file(str(path))["maintenance"]


@pytest.mark.parametrize("minor", kubernetes_minors(), ids=lambda v: f"k8s-{v}")
def test_kubernetes_manifests_validate_strictly(minor):
    result = run(str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", f"{minor}.0",
                 *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    objects = sum(len(load_objects(path)) for path in MANIFESTS)
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    # A kind without a schema is only a warning to the tool: every object must have passed.
    assert len(passed) == objects, result.stdout
    assert all(line.endswith(f" against version {minor}") for line in passed), result.stdout


def test_kubernetes_validation_covers_every_release_from_1_29():
    minors = kubernetes_minors()
    assert minors[0] == "1.29"
    assert minors[-1] == kubernetes_validate.major_minor(kubernetes_validate.latest_version())
    assert len(minors) == Version(minors[-1]).minor - 28, minors  # no gaps


def test_setup_job_validates_for_every_release_the_tool_knows():
    # Kubernetes 1.28 and older require onPodConditions in each podFailurePolicy rule.
    path = KUBERNETES / "base" / "setup-job.yaml"
    for minor in kubernetes_minors(oldest=Version("0.0")):
        result = run(str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", f"{minor}.0", str(path))
        assert result.returncode == 0 and " passed for resource " in result.stdout, result.stdout + result.stderr


def test_the_layers_use_every_manifest():
    files: set[Path] = set()
    for choice in (*MAINTENANCE_CHOICES, CONTRACT):
        kustomize(KUBERNETES / choice, files)
    assert files == set(MANIFESTS)
    folders = {p.parent.name for p in KUBERNETES.rglob("kustomization.yaml")}
    assert folders == {"base", *MAINTENANCE_CHOICES, CONTRACT}
    assert not list(KUBERNETES.glob("*.yaml")), "a manifest outside the layers"


def test_the_base_runs_no_maintenance_and_each_choice_exactly_one(tmp_path):
    base = kustomize(KUBERNETES / "base")
    assert set(base) == {"ConfigMap/ayon-config", "Secret/ayon", "Job/ayon-setup", "StatefulSet/ayon-server",
                         "Service/ayon-server", "PodDisruptionBudget/ayon-server"}
    assert maintenance_mechanisms(base) == []
    for choice, (mechanism, enabled) in MAINTENANCE_CHOICES.items():
        found = applied(choice)
        assert set(found) == set(base) | {mechanism} | DATA_CLAIMS.get(choice, set()), choice
        assert maintenance_mechanisms(found) == [mechanism], choice
        assert configured_maintenance(found, tmp_path)["enabled"] is enabled, choice


def test_the_cronjob_configuration_differs_from_the_base_only_in_the_switch(tmp_path):
    base = configured_maintenance(kustomize(KUBERNETES / "base"), tmp_path)
    cron = configured_maintenance(applied("maintenance-cronjob"), tmp_path)
    assert {**cron, "enabled": base["enabled"]} == base
    assert base["time"] == "03:00"


def test_kubernetes_layout_follows_the_design():
    found = all_objects()
    server = found["StatefulSet/ayon-server"]["spec"]
    assert server["replicas"] == 2
    assert server["updateStrategy"]["type"] == "RollingUpdate" and server["podManagementPolicy"] == "Parallel"
    pod = server["template"]["spec"]
    (container,) = pod["containers"]
    # The preStop sleep matches the drain; the grace period covers the sleep and supervisord's whole
    # wait for the server (the drain, gunicorn's graceful timeout, a margin: supervision/roster.py).
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    drain = int({e["name"]: e.get("value") for e in container["env"]}["AYON_DRAIN_SECONDS"])
    assert drain == 5
    (program,) = [p for p in roster.PROGRAMS if p.name == "server"]
    stopwait = program.stopwait(settings.load({"AYON_DRAIN_SECONDS": str(drain)}))
    assert pod["terminationGracePeriodSeconds"] > 5 + stopwait
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "startupProbe" in container
    annotations = server["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "5000", "prometheus.io/path": "/metrics"}
    assert [p["containerPort"] for p in container["ports"]] == [5000]
    budget = found["PodDisruptionBudget/ayon-server"]["spec"]
    assert budget["selector"]["matchLabels"] == server["selector"]["matchLabels"]
    assert 0 < budget["minAvailable"] < server["replicas"]
    cron = found["CronJob/ayon-maintenance"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    (job_container,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert job_container["args"] == ["python", "-m", "maintenance"]
    assert found["Deployment/ayon-maintenance"]["spec"]["replicas"] == 1
    rules = found["Job/ayon-setup"]["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "setup", "operator": "In", "values": [2]},
            "onPodConditions": []} in rules
    assert set(found["Secret/ayon"]["stringData"]) == {"AYON_ADMIN_TOKEN", "AYON_POSTGRES_URL"}
    assert found["Service/ayon-server"]["spec"]["selector"] == server["selector"]["matchLabels"]


def test_the_contract_step_is_a_job_of_its_own_that_setup_understands():
    from procs import setup

    found = applied(CONTRACT)
    assert set(found) == {"Job/ayon-contract"}  # the Secret comes from the base, applied before
    job = found["Job/ayon-contract"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"][:4] == ["python", "-m", "procs.setup", "--contract"]
    args = setup.parse_args(container["args"][3:])
    assert args.contract and args.wait >= 600
    assert {"action": "FailJob", "onExitCodes": {"containerName": "contract", "operator": "In", "values": [2]},
            "onPodConditions": []} in job["podFailurePolicy"]["rules"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["ayon"]
    assert "Secret/ayon" in kustomize(KUBERNETES / "base")
def test_what_must_survive_a_pod_is_on_a_claim_of_its_own():
    """The data folder (spool, packages) of each server instance and of the maintenance daemon outlives the pod:
    a claim per server pod (ReadWriteOnce cannot be shared by replicas), the daemon's one claim mounted by its
    single Recreate replica; the CronJob's runs deliver their own records before they exit."""
    found = all_objects()
    server = found["StatefulSet/ayon-server"]["spec"]
    (claim,) = server["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not [v for v in server["template"]["spec"]["volumes"] if v["name"] == "data"]
    (container,) = server["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/var/lib/ayon"} in container["volumeMounts"]
    assert {"name": "AYON_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    daemon = found["Deployment/ayon-maintenance"]["spec"]
    assert daemon["replicas"] == 1 and daemon["strategy"]["type"] == "Recreate"
    (volume,) = [v for v in daemon["template"]["spec"]["volumes"] if v["name"] == "data"]
    pvc = found[f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}"]["spec"]
    assert pvc["accessModes"] == ["ReadWriteOnce"]
    assert "PersistentVolumeClaim/ayon-maintenance-data" not in applied("maintenance-cronjob")


def test_kubernetes_pods_are_hardened_and_name_real_settings():
    found = all_objects()
    for key, pod in pod_specs(found).items():
        assert pod["automountServiceAccountToken"] is False, key
        assert pod["securityContext"]["runAsNonRoot"] is True, key
        assert pod["securityContext"]["runAsUser"] == 10001, key
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, key
        for container in pod["containers"]:
            assert container["image"] == PROJECT_IMAGE, key
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, key
            assert security["readOnlyRootFilesystem"] is True, key
            assert security["capabilities"] == {"drop": ["ALL"]}, key
            assert set(container["resources"]["requests"]) == {"cpu", "memory"}, key
            assert "memory" in container["resources"]["limits"], key
            # A read-only root: everything the programs write is a volume.
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/var/lib/ayon", "/tmp"} <= mounted, key
            for item in container.get("env", []):
                assert item["name"] in BY_NAME, f"{key}: {item['name']} is not a setting"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                assert command is None or image_command_exists(command), f"{key}: {command}"
            if "args" in container:
                assert image_command_exists(container["args"]), key
            # supervisord writes its config
            if not container.get("args") and container_settings(container, found).roles != ["setup"]:
                assert "/etc/supervisor" in mounted, key


def test_kubernetes_config_map_is_a_valid_configuration_file(tmp_path):
    for choice in MAINTENANCE_CHOICES:
        assert configured_maintenance(applied(choice), tmp_path)["time"] == "03:00"


# --- Compose ---


def compose_services(path: Path) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["services"]


def project_services(path: Path) -> dict[str, dict]:
    return {name: s for name, s in compose_services(path).items() if s["image"] == COMPOSE_PROJECT_IMAGE}


def deploy_images() -> list[tuple[str, str]]:
    """(file, image) for every image named anywhere in deploy/, as written."""
    found = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yml", ".yaml") or path.name == "cron.example":
            for image in re.findall(r"^\s*(?:-\s+)?image:\s*(\S+)", path.read_text(), re.M):
                found.append((str(path.relative_to(ROOT)), image))
    return found


def test_every_image_in_deploy_is_named_in_full_and_pinned_by_version():
    images = deploy_images()
    assert len(images) >= 8, images  # four Kubernetes containers, two Compose files with two images each
    for where, image in images:
        if image.startswith("${AYON_IMAGE:-"):
            assert image == COMPOSE_PROJECT_IMAGE, where
            image = PROJECT_IMAGE
        repo, _, tag = image.rpartition(":")
        # A registry host first: short names need search registries, which Debian's podman has none of.
        assert "." in repo.split("/")[0] or repo.startswith("localhost/"), f"{where}: {image} is a short name"
        assert tag and tag != "latest" and "/" not in tag, f"{where}: {image} is not pinned"
        if repo.endswith("/ayon-server"):
            assert image == PROJECT_IMAGE, f"{where}: {image} is not version {VERSION}"


def test_make_image_builds_the_image_the_deploy_files_name():
    result = run("make", "-n", "image")
    assert result.returncode == 0, result.stderr
    assert f"scripts/build-image.sh {PROJECT_IMAGE}" in result.stdout, result.stdout


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_file_names_only_what_exists(path):
    services = compose_services(path)
    assert set(services) >= {"postgres"}
    for name, service in services.items():
        repo, _, tag = service["image"].rpartition(":")
        if service["image"] == COMPOSE_PROJECT_IMAGE:
            build = service["build"]
            assert (path.parent / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
            allowed_vars, allowed_cmds, image = set(BY_NAME), set(), "project"
        else:
            assert repo in OFFICIAL_IMAGES and OFFICIAL_IMAGES[repo].match(tag), f"{name}: {service['image']}"
            allowed_vars, allowed_cmds, image = OFFICIAL_VARIABLES[repo], OFFICIAL_COMMANDS[repo], repo
        for variable in service.get("environment", {}):
            assert variable in allowed_vars, f"{name}: {variable} is unknown to the {image} image"
        if "command" in service:
            assert image_command_exists(shlex.split(service["command"]) if isinstance(service["command"], str)
                                        else service["command"]), f"{name}: {service['command']}"
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD" and test[1] in allowed_cmds, f"{name}: {test}"
    for variable in re.findall(r"\$\{(\w+)", path.read_text()):
        assert variable in BY_NAME or variable in COMPOSE_INPUTS, f"${{{variable}}} is not a known variable"


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_dependencies_start_under_podman_compose_too(path):
    services = compose_services(path)
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            # podman-compose turns a dependency into podman's --requires, which will not start a
            # container whose required one has exited: only long-running services can be depended on.
            assert services[dependency].get("restart", "no") != "no", f"{name} depends on one-shot {dependency}"
            # Health checks order the start where the tool supports it (Docker Compose, newer podman).
            assert condition == {"condition": "service_healthy"}, f"{name}: {condition}"
            assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no health check"


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_instances_have_stable_ids_and_ports_of_their_own(path):
    services = project_services(path)
    ids = [s["environment"].get("AYON_INSTANCE_ID") for s in services.values()]
    assert None not in ids and len(set(ids)) == len(ids), ids
    published = []
    for name, service in services.items():
        # One container per service: replicas would share the instance id.
        assert service.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in service, name
        for port in service.get("ports", []):
            host, _, container = port.rpartition(":")
            assert container == "5000" and re.fullmatch(r"\$\{[A-Z0-9_]+_PORT:-\d+\}", host), f"{name}: {port}"
            published.append(host)
        volumes = [v for v in service.get("volumes", []) if v.endswith(":/var/lib/ayon")]
        if service["environment"].get("AYON_RUN_SERVER", "true") == "true":
            assert volumes and "ports" in service, f"{name}: a server keeps its data and publishes its port"
    defaults = [re.search(r":-(\d+)", p).group(1) for p in published]
    assert len(set(defaults)) == len(defaults) and len(set(published)) == len(published), published


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_database_outlives_its_clients_on_stop(path):
    # podman-compose stops every container at once: PostgreSQL's smart shutdown (SIGTERM) waits
    # for the ayon programs' sessions to end, and its grace period is the longest.
    services = compose_services(path)

    def seconds(service):
        return int(service["stop_grace_period"].removesuffix("s"))

    assert services["postgres"]["stop_signal"] == "SIGTERM"
    assert all(seconds(services["postgres"]) > seconds(s) for s in project_services(path).values())


def test_split_compose_runs_each_role_in_its_own_service():
    services = compose_services(ROOT / "deploy" / "compose" / "split.yml")

    def roles(name):
        env = services[name]["environment"]
        return {r for r in ("SERVER", "SETUP", "MAINTENANCE") if env[f"AYON_RUN_{r}"] == "true"}

    assert roles("setup") == {"SETUP"} and services["setup"]["restart"] == "no"
    servers = sorted(name for name in services if name.startswith("server"))
    assert servers == ["server", "server-2"]
    for name in servers:
        assert roles(name) == {"SERVER"}
        assert services[name]["environment"]["AYON_INSTANCE_ID"] == name
        assert services[name]["volumes"] == [f"{name}-data:/var/lib/ayon"]
    assert roles("maintenance") == {"MAINTENANCE"}
    for name in (*servers, "maintenance"):
        assert services[name]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert services[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_web_service_is_named_server(path):
    # Upstream AYON's docs say `docker compose exec server python -m maintenance`.
    service = compose_services(path)[COMPOSE_SERVER]
    assert service["image"] == COMPOSE_PROJECT_IMAGE
    assert service["environment"].get("AYON_RUN_SERVER", "true") == "true"


def test_cron_example_runs_maintenance_in_the_server_service_of_each_file():
    # The active line and the commented alternative: both must work as written.
    lines = re.findall(r"^(?:# )?(\d+ \d+ [*\d]+ [*\d]+ [*\d]+ .*)$", (DEPLOY / "compose" / "cron.example").read_text(),
                       re.M)
    files = []
    for line in lines:
        fields = line.split(None, 6)
        assert len(fields) == 7, line  # five time fields, the user, the command
        command = shlex.split(fields[6].split(">>")[0].split("&&")[-1])
        assert command[:3] == ["docker", "compose", "-f"]
        path = ROOT / command[3]
        files.append(path)
        services = compose_services(path)
        rest = command[command.index("exec") + 1:]
        while rest[0].startswith("-"):  # exec's own options (-T) come before the service
            rest = rest[1:]
        assert rest[0] == COMPOSE_SERVER, line
        assert services[rest[0]]["environment"].get("AYON_RUN_SERVER", "true") == "true", line
        assert rest[1:] == ["python", "-m", "maintenance"] and image_command_exists(rest[1:]), line
    assert sorted(files) == COMPOSE, files
