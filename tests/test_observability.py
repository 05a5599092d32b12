"""The observability profile (issue 16, O4 and O5): alert rules promtool accepts, with unit tests that show each one
firing when it should and silent otherwise; a dashboard and alerts that query only metrics the code exports; and the
configs of Prometheus, Grafana, Loki, Alloy, Tempo and the OpenTelemetry collector present, parseable and wired to
each other. No container runs: the configs are checked as files.

promtool comes from Debian's `prometheus` package (`make tools` installs it). A missing promtool fails these tests,
naming the command, rather than skipping them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from ruamel.yaml.error import YAMLError

import capacity.service  # noqa: F401  (registers the capacity role's gauges)
import taskmill.metrics  # noqa: F401  (registers every other role's metrics)
from taskmill.logs import JsonFormatter
from tests.test_compose import (
    LONG_RUNNING_ROLES,
    ROOT,
    as_argv,
    compose_services,
    dependencies,
    load_yaml,
    taskmill_services,
)

PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
LOKI_CONFIG = ROOT / "deploy" / "loki" / "config.yaml"
ALLOY_CONFIG = ROOT / "deploy" / "loki" / "docker-logs.alloy"
TEMPO_CONFIG = ROOT / "deploy" / "tempo" / "config.yaml"
COLLECTOR_CONFIG = ROOT / "deploy" / "otel-collector" / "config.yaml"
README = ROOT / "README.md"

PROFILE = "observability"
COLLECTOR_ENDPOINT = "http://otel-collector:4318"  # what the README tells users to set OTEL_EXPORTER_OTLP_ENDPOINT to
PROMETHEUS_DEFAULT_PORT = 9090

# A taskmill metric name in PromQL (not part of a longer name or a recording rule's `a:b` name).
METRIC = re.compile(r"(?<![\w:.])taskmill_[a-z0-9_]+")
# The series a metric family of each type puts in Prometheus (a classic histogram has no series of its bare name).
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not (PROMTOOL.is_file() and os.access(PROMTOOL, os.X_OK)):
        pytest.fail(
            f"promtool is missing at {PROMTOOL}: install it with `make tools`, or: sudo apt-get install prometheus"
        )
    return subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def exported_series() -> frozenset[str]:
    """Every series name the roles' metrics put in Prometheus, read from the registry the roles serve."""
    return frozenset(
        family.name + suffix for family in REGISTRY.collect() for suffix in SERIES_SUFFIXES.get(family.type, ("",))
    )


def metric_names(promql: str) -> set[str]:
    return set(METRIC.findall(promql))


def expressions(node: Any) -> Iterator[str]:
    """Every query expression (`expr`) in a dashboard, at any depth."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from expressions(value)


def dashboard_queries() -> dict[str, list[str]]:
    return {path.name: list(expressions(json.loads(path.read_text()))) for path in sorted(DASHBOARDS.glob("*.json"))}


def loki_queries() -> list[str]:
    """The LogQL of the dashboards' Loki panels."""
    return [
        target["expr"]
        for path in sorted(DASHBOARDS.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        if panel.get("datasource", {}).get("type") == "loki"
        for target in panel["targets"]
    ]


def datasources() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for path in sorted(DATASOURCES.glob("*.yml")) for ds in load_yaml(path)["datasources"]}


def observability_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose_services().items() if PROFILE in (s.get("profiles") or [])}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume a service mounts from a host path."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume["target"])
        else:
            source, _, rest = str(volume).partition(":")
            target = rest.partition(":")[0]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def address(value: str) -> tuple[str, int]:
    """Host and port of `host:port` or a URL."""
    parts = urlsplit(value if "://" in value else f"//{value}")
    assert parts.hostname and parts.port, f"no host and port in {value!r}"
    return parts.hostname, parts.port


# Grafana Alloy's configuration syntax, enough to tell a file Alloy would refuse to load: tokens, balanced brackets,
# components declared once, and every reference to a component naming one declared.
ALLOY_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<comment>//[^\n]*|/\*.*?\*/)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<number>\d+(?:\.\d+)?)
      | (?P<punct>==|!=|<=|>=|&&|\|\||[{}\[\]()=,+\-*/%<>!^?:])""",
    re.VERBOSE | re.DOTALL,
)
ALLOY_NAMESPACES = frozenset({"discovery", "loki", "prometheus", "otelcol", "pyroscope", "faro", "local", "remote"})
CLOSING = {"}": "{", "]": "[", ")": "("}


def alloy_tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = ALLOY_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unreadable {text[pos : pos + 20]!r} at offset {pos}")
        pos = match.end()
        if match.lastgroup not in {"space", "comment"}:
            tokens.append((str(match.lastgroup), match.group()))
    return tokens


def alloy_problems(text: str) -> list[str]:
    """What keeps an Alloy configuration from loading, as far as its syntax and component references go."""
    try:
        tokens = alloy_tokens(text)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    stack: list[str] = []
    declared: set[tuple[str, str]] = set()
    references: list[str] = []
    for i, (kind, value) in enumerate(tokens):
        following = [v for _, v in tokens[i + 1 : i + 3]]
        if kind == "punct" and value in "{[(":
            stack.append(value)
        elif kind == "punct" and value in CLOSING:
            if not stack or stack.pop() != CLOSING[value]:
                problems.append(f"unbalanced {value!r}")
        elif kind == "name" and not stack:
            if following[:1] == ["{"]:
                continue  # an unlabelled top-level block (logging, tracing)
            if len(following) == 2 and tokens[i + 1][0] == "string" and following[1] == "{":
                component = (value, json.loads(following[0]))
                if component in declared:
                    problems.append(f"{value} {following[0]} is declared twice")
                declared.add(component)
            else:
                problems.append(f"{value} at the top level is not a block")
        elif kind == "name" and following[:1] not in (["="], ["{"], ["("]):
            if value.split(".")[0] in ALLOY_NAMESPACES:
                references.append(value)
    if stack:
        problems.append(f"unclosed {''.join(stack)!r}")
    for reference in references:
        if not any(reference.startswith(f"{name}.{label}.") for name, label in declared):
            problems.append(f"{reference} names no declared component")
    return problems


def parse_problem(path: Path) -> str | None:
    """Why a mounted configuration file would not load, or None."""
    text = path.read_text()
    try:
        if path.suffix in {".yml", ".yaml"}:
            document = load_yaml(path)
        elif path.suffix == ".json":
            document = json.loads(text)
        elif path.suffix == ".alloy":
            return "; ".join(alloy_problems(text)) or None
        else:
            return f"no check for {path.suffix or 'files without a suffix'}"
    except (YAMLError, json.JSONDecodeError) as exc:
        return f"does not parse: {exc}"
    return None if isinstance(document, dict) and document else "is not a mapping with content"


def listening_ports() -> dict[str, set[int]]:
    """The ports each service listens on, as its own configuration sets them."""
    services = compose_services()
    ports: dict[str, set[int]] = {}
    for name, service in taskmill_services(services).items():
        if port := (service.get("environment") or {}).get("TASKMILL_METRICS_PORT"):
            ports[name] = {int(port)}
    listen = [a for a in as_argv(services["prometheus"]["command"]) if a.startswith("--web.listen-address=")]
    ports["prometheus"] = {address(listen[-1].partition("=")[2])[1] if listen else PROMETHEUS_DEFAULT_PORT}
    ports["loki"] = {int(load_yaml(LOKI_CONFIG)["server"]["http_listen_port"])}
    tempo = load_yaml(TEMPO_CONFIG)
    ports["tempo"] = {int(tempo["server"]["http_listen_port"])} | {
        address(p["endpoint"])[1] for p in tempo["distributor"]["receivers"]["otlp"]["protocols"].values()
    }
    collector = load_yaml(COLLECTOR_CONFIG)
    ports["otel-collector"] = {address(p["endpoint"])[1] for p in collector["receivers"]["otlp"]["protocols"].values()}
    ports["otel-collector"] |= {
        int(reader["pull"]["exporter"]["prometheus"]["port"])
        for reader in collector["service"]["telemetry"]["metrics"]["readers"]
    }
    ports["alloy"] = {
        address(a.partition("=")[2])[1]
        for a in as_argv(services["alloy"]["command"])
        if a.startswith("--server.http.listen-addr=")
    }
    return ports


def named_addresses() -> list[tuple[str, str, int]]:
    """(where, host, port) of every address the observability configs send to or read from."""
    found: list[tuple[str, str, int]] = []
    for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
        where = f"prometheus job {job['job_name']}"
        for sd in job.get("dns_sd_configs", []):
            found += [(where, host, int(sd["port"])) for host in sd["names"]]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = address(target)
                found.append((where, "prometheus" if host == "localhost" else host, port))
    for uid, ds in datasources().items():
        found.append((f"grafana datasource {uid}", *address(ds["url"])))
    collector = load_yaml(COLLECTOR_CONFIG)
    for name, exporter in collector["exporters"].items():
        if "endpoint" in exporter:
            found.append((f"collector exporter {name}", *address(exporter["endpoint"])))
    for url in re.findall(r'\burl\s*=\s*"([^"]+)"', ALLOY_CONFIG.read_text()):
        found.append(("alloy", *address(url)))
    return found


def alloy_stream_labels(text: str) -> set[str]:
    """The labels Alloy gives the log streams it ships: relabelled, default and promoted from the JSON."""
    labels = set(re.findall(r'target_label\s*=\s*"([a-z_]+)"', text))
    for block in re.findall(r"\blabels\s*=\s*\{([^}]*)\}", text):
        labels |= set(re.findall(r"([a-z_]+)\s*=", block))
    for block in re.findall(r"stage\.labels\s*\{\s*values\s*=\s*\{([^}]*)\}", text):
        labels |= set(re.findall(r"([a-z_]+)\s*=", block))
    return labels


def selector_labels(logql: str) -> set[str]:
    """The label names a LogQL query's stream selector matches on."""
    selector = re.match(r"\s*\{([^}]*)\}", logql)
    assert selector, f"no stream selector in {logql!r}"
    return set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector.group(1)))


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_rule_check_rejects_a_rule_whose_expression_does_not_parse(tmp_path: Path) -> None:
    text = ALERTS.read_text()
    assert "sum by (le) (rate(" in text
    broken = tmp_path / ALERTS.name
    broken.write_text(text.replace("sum by (le) (rate(", "sum by (le) (rate((", 1))

    result = promtool("check", "rules", str(broken))

    assert result.returncode != 0
    assert "TaskmillStartLatenessHigh" in result.stdout + result.stderr


def test_prometheus_config_and_the_rules_it_loads_pass_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_yaml(PROMETHEUS_CONFIG)['rule_files'])} rule files found" in result.stdout
    assert f"Checking {ALERTS}" in result.stdout


def test_prometheus_finds_its_rule_files_in_the_container_as_in_the_repository() -> None:
    prometheus = compose_services()["prometheus"]
    mounts = {PurePosixPath(target): (ROOT / source).resolve() for source, target in bind_mounts(prometheus)}
    flags = [a for a in as_argv(prometheus["command"]) if a.startswith("--config.file=")]
    config_in_container = PurePosixPath(flags[-1].partition("=")[2])
    rule_files = load_yaml(PROMETHEUS_CONFIG)["rule_files"]

    assert mounts[config_in_container] == PROMETHEUS_CONFIG
    assert rule_files
    for rule_file in rule_files:  # relative to the config file, in both places
        assert not PurePosixPath(rule_file).is_absolute(), rule_file
        in_container = config_in_container.parent / rule_file
        assert mounts.get(in_container) == PROMETHEUS_DIR / rule_file, f"{in_container} is not {rule_file}"


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_stays_silent() -> None:
    document = load_yaml(ALERTS_TEST)
    outcomes: dict[str, set[bool]] = {}
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            outcomes.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))

    assert document["rule_files"] == [ALERTS.name]
    for rule in alert_rules():
        assert outcomes.get(rule["alert"]) == {True, False}, f"{rule['alert']}: fires and silent cases needed"


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        pytest.param("TaskmillDeadRuns", 'outcome="dead"', 'outcome="failed"', id="dead-runs-never-fires"),
        pytest.param("TaskmillStartLatenessHigh", "[5m]))) > 10", "[5m]))) > 60", id="lateness-never-fires"),
        pytest.param("TaskmillStartLatenessHigh", "[5m]))) > 10", "[5m]))) > 0.5", id="lateness-always-fires"),
    ],
)
def test_alert_unit_tests_catch_a_rule_that_fires_when_it_should_not_or_not_when_it_should(
    tmp_path: Path, alert: str, old: str, new: str
) -> None:
    text = ALERTS.read_text()
    assert old in text
    (tmp_path / ALERTS.name).write_text(text.replace(old, new))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)

    result = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)

    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr


def test_every_metric_the_alerts_query_is_one_the_code_exports() -> None:
    used = {name for rule in alert_rules() for name in metric_names(rule["expr"])}

    assert used
    assert sorted(used - exported_series()) == []


def test_every_metric_the_dashboards_query_is_one_the_code_exports() -> None:
    exported = exported_series()
    queries = dashboard_queries()

    assert queries
    for name, exprs in queries.items():
        used = set().union(*(metric_names(expr) for expr in exprs))
        assert used, f"{name} queries no taskmill metric"
        assert sorted(used - exported) == [], name


def test_metric_check_rejects_names_the_code_does_not_export() -> None:
    exported = exported_series()

    assert metric_names('rate(taskmill_runs_total{outcome="dead"}[5m]) / max(taskmill_queue_depth)') == {
        "taskmill_runs_total",
        "taskmill_queue_depth",
    }
    assert {
        "taskmill_runs_finished_total",
        "taskmill_start_lateness_seconds_bucket",
        "taskmill_required_instances",
        "taskmill_queue_depth",
    } <= exported
    # A counter without _total, a name nobody defines, buckets of a gauge, a histogram's bare name.
    for wrong in (
        "taskmill_runs_finished",
        "taskmill_runs_total",
        "taskmill_due_backlog_runs_bucket",
        "taskmill_start_lateness_seconds",
    ):
        assert wrong not in exported


def test_dashboard_shows_the_panels_issue_16_asks_for() -> None:
    queries = dashboard_queries()["taskmill.json"]
    compact = [re.sub(r"\s+", "", q) for q in queries]
    used = set().union(*(metric_names(q) for q in queries))

    assert used >= {
        "taskmill_runs_finished_total",
        "taskmill_start_lateness_seconds_bucket",
        "taskmill_due_backlog_runs",
        "taskmill_oldest_due_run_age_seconds",
        "taskmill_queue_depth",
        "taskmill_required_instances",
        "taskmill_processors_live",
    }
    assert any(q.startswith("sumby(outcome)(rate(taskmill_runs_finished_total[") for q in compact), "runs by outcome"
    for quantile in ("0.5", "0.99"):
        assert any(
            q.startswith(f"histogram_quantile({quantile},") and "taskmill_start_lateness_seconds_bucket" in q
            for q in compact
        ), f"start lateness p{quantile}"
    assert any("by(type" in q and 'outcome=~"failed|retrying|dead"' in q for q in compact), "failures by type"
    assert loki_queries(), "no panel of the roles' logs"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    for path in sorted(DASHBOARDS.glob("*.json")):
        panels = json.loads(path.read_text())["panels"]
        ids = [panel["id"] for panel in panels]
        taken: dict[tuple[int, int], str] = {}

        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']!r} is wider than the grid"
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    other = taken.setdefault((x, y), panel["title"])
                    assert other == panel["title"], f"{path.name}: {panel['title']!r} overlaps {other!r}"


def test_files_mounted_into_the_observability_services_exist_and_parse() -> None:
    checked: set[Path] = set()
    for name, service in observability_services().items():
        for source, _ in bind_mounts(service):
            if not source.startswith("."):
                continue  # the Docker socket
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name} mounts missing {source}"
            for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
                problem = parse_problem(file)
                assert problem is None, f"{name} mounts {file.relative_to(ROOT)}, which {problem}"
                checked.add(file)

    assert {PROMETHEUS_CONFIG, ALERTS, LOKI_CONFIG, ALLOY_CONFIG, TEMPO_CONFIG, COLLECTOR_CONFIG} <= checked
    assert set(DASHBOARDS.glob("*.json")) | set(DATASOURCES.glob("*.yml")) <= checked


def test_mounted_file_check_rejects_broken_yaml_json_and_alloy(tmp_path: Path) -> None:
    alloy = ALLOY_CONFIG.read_text()
    broken = {
        "config.yaml": "server:\n  http_listen_port: [3100\n",
        "empty.yml": "",
        "dashboard.json": '{"panels": [}',
        "unclosed.alloy": alloy.rstrip().removesuffix("}"),
        "dangling.alloy": alloy.replace("loki.write.loki.receiver", "loki.write.default.receiver"),
        "twice.alloy": alloy + '\nloki.write "loki" {\n}\n',
        "settings.toml": "a = 1\n",
    }

    assert alloy_problems(alloy) == []
    for name, text in broken.items():
        (tmp_path / name).write_text(text)
        assert parse_problem(tmp_path / name) is not None, name
    assert "loki.write.default.receiver" in "".join(alloy_problems(broken["dangling.alloy"]))


def test_loki_alloy_tempo_and_the_collector_run_only_with_the_observability_profile() -> None:
    services = compose_services()
    default_stack = {name for name, service in services.items() if not service.get("profiles")}

    for name in ("loki", "alloy", "tempo", "otel-collector", "prometheus", "grafana"):
        assert services[name].get("profiles") == [PROFILE], name
    for name in default_stack:  # `docker compose up` without the profile must not need one of its services
        assert set(dependencies(services[name])) <= default_stack, name


def test_the_role_down_alert_watches_every_role_prometheus_scrapes() -> None:
    role_down = next(rule for rule in alert_rules() if rule["alert"] == "TaskmillRoleDown")
    watched = set(re.findall(r'absent\(up\{job="taskmill", role="([a-z]+)"\}\)', role_down["expr"]))
    scraped = {
        host
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        if job["job_name"] == "taskmill"
        for sd in job.get("dns_sd_configs", [])
        for host in sd["names"]
    }

    assert watched == scraped == LONG_RUNNING_ROLES


def test_every_address_the_observability_configs_name_is_a_port_its_service_listens_on() -> None:
    services = compose_services()
    ports = listening_ports()
    addresses = named_addresses()

    assert {host for _, host, _ in addresses} >= {*LONG_RUNNING_ROLES, "prometheus", "loki", "tempo"}
    assert {"otel-collector", "alloy"} <= {host for _, host, _ in addresses}, "Prometheus scrapes the stack itself"
    for where, host, port in addresses:
        assert host in services, f"{where}: no service {host}"
        if host in ports:
            assert port in ports[host], f"{where}: {host} listens on {sorted(ports[host])}, not {port}"


def test_collector_pipelines_use_defined_components_and_send_traces_to_tempo() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    pipelines = config["service"]["pipelines"]

    for pipeline, spec in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in spec.get(section, []):
                assert component in (config.get(section) or {}), f"{pipeline}: {component} is not defined"
    for extension in config["service"].get("extensions", []):
        assert extension in (config.get("extensions") or {}), extension
    assert pipelines["traces"]["processors"][0] == "memory_limiter", "the memory limiter goes first"
    assert {
        address(config["exporters"][name]["endpoint"])[0]
        for name in pipelines["traces"]["exporters"]
        if "endpoint" in config["exporters"][name]
    } == {"tempo"}


def test_roles_export_traces_only_when_told_and_the_readme_names_the_collectors_endpoint() -> None:
    services = compose_services()
    host, port = address(COLLECTOR_ENDPOINT)
    collector = load_yaml(COLLECTOR_CONFIG)

    for name, service in taskmill_services(services).items():
        environment = service.get("environment") or {}
        # No value: Compose passes the shell's on, or leaves the variable out and the role exports nothing.
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in environment, name
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] is None, name
    assert services[host].get("profiles") == [PROFILE]
    assert address(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"])[1] == port
    assert f"OTEL_EXPORTER_OTLP_ENDPOINT={COLLECTOR_ENDPOINT} docker compose --profile {PROFILE} up" in (
        README.read_text()
    )


def test_alloy_ships_every_roles_json_lines_with_the_labels_the_queries_select() -> None:
    text = ALLOY_CONFIG.read_text()
    keep = re.search(r'regex\s*=\s*"([^"]+)"\s*\n\s*action\s*=\s*"keep"', text)
    labels = alloy_stream_labels(text)
    tempo_to_logs = datasources()["tempo"]["jsonData"]["tracesToLogsV2"]["query"]
    record = logging.makeLogRecord(
        {
            "name": "processor.execute",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "run failed",
            "role": "processor",
            "run_id": 42,
            "task_id": 7,
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
        }
    )
    fields = json.loads(JsonFormatter().format(record))

    assert keep, "Alloy keeps no containers by service"
    assert set(keep.group(1).split("|")) == set(taskmill_services(compose_services()))
    assert {"job", "role", "level"} <= labels
    for query in [*loki_queries(), tempo_to_logs]:
        assert selector_labels(query) <= labels, query
    for field in ("ts", "level", "logger", "run_id", "task_id", "trace_id"):
        assert field in fields, f"the roles' JSON lines have no {field}"
        assert re.search(rf'\b{field}\s*=\s*"{field}"', text), f"Alloy does not read {field}"


def test_log_lines_link_to_their_trace_and_traces_to_their_log_lines() -> None:
    provisioned = datasources()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    line = JsonFormatter().format(
        logging.makeLogRecord({"name": "processor", "levelname": "INFO", "msg": "ran", "trace_id": trace_id})
    )
    (derived,) = provisioned["loki"]["jsonData"]["derivedFields"]
    match = re.search(derived["matcherRegex"], line)

    assert {ds["type"] for ds in provisioned.values()} == {"prometheus", "loki", "tempo"}
    assert derived["datasourceUid"] == "tempo"
    assert match and match.group(1) == trace_id, f"{derived['matcherRegex']} finds no trace id in {line}"
    assert provisioned["tempo"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"
