"""The container image and the compose stack: valid, complete, and wired the way the roles expect."""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

ROLES = frozenset({"migrate", "scheduler", "distributor", "processor", "api", "capacity"})
LONG_RUNNING_ROLES = ROLES - {"migrate"}
OBSERVABILITY_SERVICES = frozenset({"prometheus", "grafana", "loki", "alloy", "tempo", "otel-collector"})


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path)


def compose_services() -> dict[str, dict[str, Any]]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    services = document["services"]
    assert isinstance(services, dict)
    return services


def validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """Check a compose file against the Compose specification's JSON schema (vendored by check-jsonschema)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def built_from_repo(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return (ROOT / context).resolve() == ROOT and (ROOT / context / dockerfile).resolve() == DOCKERFILE


def taskmill_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that run the image built from this repository (built here, or reusing that image's name)."""
    built_images = {s.get("image") for s in services.values() if built_from_repo(s)} - {None}
    return {name: s for name, s in services.items() if built_from_repo(s) or s.get("image") in built_images}


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def pinned_tag(image: str) -> str | None:
    """The tag or digest an image reference is pinned to; None when untagged or `latest`."""
    if "@sha256:" in image:
        return image.partition("@")[2]
    _, colon, tag = image.rpartition(":")
    if not colon or "/" in tag or tag in {"", "latest"}:
        return None
    return tag


def publishes_host_port(service: dict[str, Any]) -> bool:
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                return True
        elif ":" in str(entry):
            return True
    return False


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}, for both the list and the mapping syntax."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {dep: spec.get("condition", "service_started") for dep, spec in depends_on.items()}


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_stages(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[list[Instruction]] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        elif not stages:
            continue  # ARG before the first FROM
        stages[-1].append(instruction)
    return stages


def image_entrypoint() -> list[str]:
    """The exec-form ENTRYPOINT of the Dockerfile's final stage."""
    final = dockerfile_stages(DOCKERFILE.read_text())[-1]
    entrypoints = [i.arguments for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "the final stage has no ENTRYPOINT"
    value = json.loads(entrypoints[-1])
    assert isinstance(value, list), "ENTRYPOINT is not in exec form"
    return [str(part) for part in value]


def test_compose_file_matches_the_compose_specification() -> None:
    result = validate_compose(COMPOSE_FILE)

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_a_service_with_an_unknown_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  api:\n    image: taskmill:local\n    restartt: always\n")

    result = validate_compose(broken)

    assert result.returncode != 0
    assert "restartt" in result.stdout + result.stderr


def test_compose_runs_every_role_from_the_repo_image() -> None:
    services = taskmill_services(compose_services())

    subcommands = {argv[0] for s in services.values() if (argv := as_argv(s.get("command")))}

    assert subcommands >= ROLES, f"roles missing from compose: {sorted(ROLES - subcommands)}"


def test_every_taskmill_command_in_compose_parses_with_the_cli() -> None:
    from taskmill.cli import build_parser

    entrypoint = image_entrypoint()
    commands = {
        name: [*(as_argv(s.get("entrypoint")) or entrypoint), *as_argv(s.get("command"))]
        for name, s in taskmill_services(compose_services()).items()
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["no-such-role"])

    assert commands
    for name, argv in commands.items():
        assert argv[0] == "taskmill", f"{name} runs {shlex.join(argv)}, not taskmill"
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"service {name}: `{shlex.join(argv)}` is rejected by the CLI (exit {exc.code})")


@pytest.mark.parametrize("image", ["postgres", "postgres:latest", "localhost:5000/postgres"])
def test_image_pin_check_rejects_untagged_and_latest_images(image: str) -> None:
    assert pinned_tag(image) is None


def test_every_image_is_built_from_the_repo_dockerfile_or_pinned_to_a_tag() -> None:
    services = compose_services()
    from_repo = taskmill_services(services)

    for name, service in services.items():
        if name in from_repo:
            assert "build" not in service or built_from_repo(service), f"{name}: other Dockerfile"
            continue
        assert "build" not in service, f"{name} builds from something other than the repo Dockerfile"
        assert pinned_tag(service["image"]) is not None, f"{name} uses an unpinned image {service['image']!r}"


def test_processor_has_no_container_name_or_host_port_so_it_scales() -> None:
    services = compose_services()
    processor = services["processor"]

    assert publishes_host_port(services["api"]), "the host-port check does not see the API's published port"
    assert "container_name" not in processor
    assert not publishes_host_port(processor)


def test_roles_start_after_migrations_on_healthy_services_and_restart_unless_stopped() -> None:
    services = compose_services()
    role_needs = {
        "postgres": "service_healthy",
        "rabbitmq": "service_healthy",
        "migrate": "service_completed_successfully",
    }

    for role in LONG_RUNNING_ROLES:
        conditions = dependencies(services[role])
        assert conditions.items() >= role_needs.items(), f"{role} depends on {conditions}"
        assert services[role].get("restart") == "unless-stopped", role
    assert dependencies(services["migrate"]).get("postgres") == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for name, service in services.items():
        for dep, condition in dependencies(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no healthcheck"


def test_observability_services_start_only_with_their_profile() -> None:
    services = compose_services()

    for name, service in services.items():
        expected = ["observability"] if name in OBSERVABILITY_SERVICES else None
        assert service.get("profiles") == expected, name


def test_prometheus_scrapes_every_role_on_its_metrics_port() -> None:
    services = taskmill_services(compose_services())
    config = load_yaml(PROMETHEUS_CONFIG)
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {(host, int(sd["port"])) for host in sd["names"]}
        for static in job.get("static_configs", []):
            targets |= {(host, int(port)) for host, _, port in (t.rpartition(":") for t in static["targets"])}

    for role in LONG_RUNNING_ROLES:
        port = int(services[role].get("environment", {}).get("TASKMILL_METRICS_PORT", 0))
        assert port, f"{role} has no TASKMILL_METRICS_PORT"
        assert (role, port) in targets, f"prometheus does not scrape {role}:{port}"


def test_files_mounted_from_the_repo_exist() -> None:
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_grafana_dashboards_use_the_provisioned_datasource() -> None:
    provisioned = {
        ds["uid"]
        for path in (GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml")
        for ds in load_yaml(path)["datasources"]
    }
    dashboards = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

    def datasource_uids(node: Any) -> set[str]:
        if isinstance(node, dict):
            own = {node["datasource"]["uid"]} if isinstance(node.get("datasource"), dict) else set()
            return own.union(*(datasource_uids(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(datasource_uids(v) for v in node))
        return set()

    assert dashboards
    for path in dashboards:
        used = datasource_uids(json.loads(path.read_text()))
        assert used, f"{path.name} names no datasource"
        assert used <= provisioned, f"{path.name} uses unprovisioned datasources {sorted(used - provisioned)}"


def test_dockerfile_installs_the_repo_and_runs_taskmill_as_a_non_root_user() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    everything = [i for stage in stages for i in stage]
    final = stages[-1]
    runs = [i.arguments for i in everything if i.keyword == "RUN"]

    assert final[0].arguments.split()[0] == "python:3.11-slim"
    assert image_entrypoint() == ["taskmill"]
    assert any(i.keyword == "COPY" and i.arguments.split()[0] == "." for i in everything), "repo not copied"
    assert any(
        {"pip", "."} <= (words := set(shlex.split(run))) and bool({"install", "wheel"} & words) for run in runs
    ), "no pip command builds or installs the repository"
    assert any("pip install" in i.arguments for i in final if i.keyword == "RUN"), "final stage: no install"
    assert not any("[dev" in run or " -e " in run for run in runs), "dev extras or editable install"
    users = [i.arguments.split(":")[0] for i in final if i.keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1] not in {"root", "0"}


def test_dockerignore_keeps_build_inputs_and_drops_local_state() -> None:
    patterns = [
        line.strip().removeprefix("**/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [
        "pyproject.toml",
        project["project"]["readme"],
        *project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"],
    ]

    def ignored(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)

    assert ignored(".venv") and ignored(".git")
    assert [name for name in needed if ignored(name)] == []


def test_each_role_gets_only_the_secrets_it_needs() -> None:
    services = taskmill_services(compose_services())
    holders = {
        var: {name for name, s in services.items() if var in s.get("environment", {})}
        for var in ("JWT_SECRET", "TASKMILL_SECRET_KEY")
    }
    assert holders == {"JWT_SECRET": {"api"}, "TASKMILL_SECRET_KEY": {"api", "processor"}}
    for name, service in services.items():  # every role still reaches the database and the broker
        assert {"DATABASE_URL", "AMQP_URL"} <= set(service.get("environment", {})), name
    # The processor may create the namespaces its command jail needs, and nothing more.
    processor = services["processor"]
    assert set(processor.get("security_opt", [])) == {"seccomp=unconfined", "apparmor=unconfined"}
    assert "privileged" not in processor and "cap_add" not in processor
