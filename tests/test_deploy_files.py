"""The image and deployment files: lints, manifest validation, and names that exist."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server import config
from server.settings import BY_NAME
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
COMPOSE = sorted((ROOT / "deploy" / "compose").glob("*.yml"))
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# The project's image, as `make image` tags it and the Compose files build it.
PROJECT_IMAGE = "ayon-server:latest"
# Official images the Compose files may use, and the variables and commands they document.
OFFICIAL_IMAGES = {"postgres": re.compile(r"^(1[4-9])(-bookworm)?$")}
OFFICIAL_VARIABLES = {"postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"}}
OFFICIAL_COMMANDS = {"postgres": {"pg_isready"}}
# Variables the user sets when running compose, beside the AYON_* settings.
COMPOSE_INPUTS = {"POSTGRES_PASSWORD"}


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
    for name in ("docker-entrypoint.sh", "healthcheck", "build-base-image.sh", "build-image.sh"):
        assert (ROOT / "scripts" / name).stat().st_mode & 0o111, name


def test_dockerfile_keeps_its_contract():
    text = (ROOT / "Dockerfile").read_text()
    for line in ("ARG BASE_IMAGE=python:3.11-slim-bookworm", 'ENTRYPOINT ["/app/scripts/docker-entrypoint.sh"]',
                 "EXPOSE 5000", 'VOLUME ["/var/lib/ayon"]', "STOPSIGNAL SIGTERM", "USER 10001:10001"):
        assert line in text.splitlines(), line
    assert 'CMD ["/app/scripts/healthcheck"]' in text


# --- Kubernetes ---


def test_kubernetes_manifests_validate_strictly():
    assert len(MANIFESTS) >= 7
    result = run(str(BIN / "kubernetes-validate"), "--strict", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(MANIFESTS), result.stdout


def resources() -> dict[str, dict]:
    found = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
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


def test_kubernetes_layout_follows_the_design():
    found = resources()
    server = found["Deployment/ayon-server"]["spec"]
    assert server["replicas"] == 2
    pod = server["template"]["spec"]
    # Above supervisord's stopwaitsecs for the server program (30 s).
    assert pod["terminationGracePeriodSeconds"] > 30
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "startupProbe" in container
    cron = found["CronJob/ayon-maintenance"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    (job_container,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert job_container["args"] == ["python", "-m", "maintenance"]
    assert "Deployment/ayon-maintenance" in found and "Job/ayon-setup" in found
    assert set(found["Secret/ayon"]["stringData"]) == {"AYON_ADMIN_TOKEN", "AYON_POSTGRES_URL"}
    assert found["Service/ayon-server"]["spec"]["selector"] == server["selector"]["matchLabels"]


def test_kubernetes_pods_run_as_the_image_user_and_name_real_settings():
    for key, pod in pod_specs(resources()).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, key
        assert pod["securityContext"]["runAsUser"] == 10001, key
        for container in pod["containers"]:
            assert container["image"] == PROJECT_IMAGE, key
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, key
            for item in container.get("env", []):
                assert item["name"] in BY_NAME, f"{key}: {item['name']} is not a setting"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                assert command is None or image_command_exists(command), f"{key}: {command}"
            if "args" in container:
                assert image_command_exists(container["args"]), key


def test_kubernetes_config_map_is_a_valid_configuration_file(tmp_path):
    text = resources()["ConfigMap/ayon-config"]["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert config.load_file(str(path))["maintenance"]["time"] == "03:00"


# --- Compose ---


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_file_names_only_what_exists(path):
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    assert set(services) >= {"postgres"}
    for name, service in services.items():
        repo, _, tag = service["image"].partition(":")
        if service["image"] == PROJECT_IMAGE:
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
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in ("service_healthy", "service_completed_successfully")
    for variable in re.findall(r"\$\{(\w+)", path.read_text()):
        assert variable in BY_NAME or variable in COMPOSE_INPUTS, f"${{{variable}}} is not a known variable"


def test_split_compose_runs_each_role_in_its_own_service():
    services = yaml.safe_load((ROOT / "deploy" / "compose" / "split.yml").read_text())["services"]

    def roles(name):
        env = services[name]["environment"]
        return {r for r in ("SERVER", "SETUP", "MAINTENANCE") if env[f"AYON_RUN_{r}"] == "true"}

    assert roles("setup") == {"SETUP"} and services["setup"]["restart"] == "no"
    assert roles("server") == {"SERVER"} and services["server"]["deploy"]["replicas"] == 2
    assert roles("maintenance") == {"MAINTENANCE"}
    for name in ("server", "maintenance"):
        assert services[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_cron_example_runs_maintenance_in_the_split_server_service():
    services = yaml.safe_load((ROOT / "deploy" / "compose" / "split.yml").read_text())["services"]
    lines = [line for line in (ROOT / "deploy" / "compose" / "cron.example").read_text().splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert lines, "no cron line"
    for line in lines:
        fields = line.split(None, 6)
        assert len(fields) == 7, line  # five time fields, the user, the command
        command = shlex.split(fields[6].split(">>")[0].split("&&")[-1])
        assert command[:3] == ["docker", "compose", "-f"]
        assert (ROOT / command[3]) == ROOT / "deploy" / "compose" / "split.yml"
        rest = command[command.index("exec") + 1:]
        while rest[0].startswith("-"):  # exec's own options (-T) come before the service
            rest = rest[1:]
        assert rest[0] in services, line
        assert image_command_exists(rest[1:]), line
