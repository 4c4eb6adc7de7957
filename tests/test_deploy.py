"""The deployment side: image, compose file, Kubernetes manifests, alert rules, dashboard."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from expiryd.metrics import Metrics

ROOT = Path(__file__).parent.parent
OVERLAYS = ["dev", "prod"]


def run(*command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def rendered(overlay: str) -> list[dict[str, Any]]:
    result = run("kubectl", "kustomize", f"deploy/overlays/{overlay}")
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(doc for doc in documents if doc["kind"] == kind)


def metric_names() -> set[str]:
    """Every series name expiryd can expose, including those of labelled metrics not yet used."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    names = set()
    for metric in Metrics().registry.collect():
        names.update(metric.name + suffix for suffix in suffixes.get(metric.type, [""]))
    return names


def test_dockerfile_passes_hadolint_with_nothing_above_info():
    result = run("hadolint", "--failure-threshold", "warning", "docker/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_fixed_non_root_user_with_a_healthcheck():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["expiryd"]' in text
    assert text.count("FROM ") == 2  # build tools stay in the first stage


def test_compose_file_is_valid():
    result = run("docker-compose", "-f", "docker/compose.yaml", "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_runs_six_redis_nodes_three_replicas_and_prometheus():
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    assert len([s for s in services if s.startswith("redis-")]) == 6
    assert len([s for s in services if s.startswith("expiryd-")]) == 3
    assert "prometheus" in services and "cluster-create" in services
    scrape = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [
        "expiryd-1:9101",
        "expiryd-2:9101",
        "expiryd-3:9101",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_core_object_validates_strictly(overlay, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(rendered(overlay)))
    result = run("kubernetes-validate", "--strict", "--no-warn", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource deployment/expiryd" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_keeps_the_hand_off_and_security_rules(overlay):
    documents = rendered(overlay)
    deployment = of_kind(documents, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert pod["terminationGracePeriodSeconds"] >= 15
    env = {e["name"]: e for e in container["env"]}
    assert env["EXPIRYD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    config_map = of_kind(documents, "ConfigMap")
    assert config_map["metadata"]["name"].startswith("expiryd-config-")  # hashed: a change rolls the pods
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["redis-password"]["secret"]["secretName"] == "expiryd-redis"
    assert of_kind(documents, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_base_runs_three_replicas_and_the_dev_overlay_one():
    assert of_kind(rendered("prod"), "Deployment")["spec"]["replicas"] == 3
    assert of_kind(rendered("dev"), "Deployment")["spec"]["replicas"] == 1


def test_the_config_in_the_manifests_loads(tmp_path):
    from expiryd.config import load_config

    config_map = of_kind(rendered("prod"), "ConfigMap")
    path = tmp_path / "expiryd.yaml"
    path.write_text(config_map["data"]["expiryd.yaml"])
    secret = tmp_path / "password"
    secret.write_text("x")
    config = load_config(path=str(path), environ={"EXPIRYD_REDIS_PASSWORD_FILE": str(secret)})
    assert config.routes


def test_podmonitor_scrapes_the_http_port_of_expiryd_pods():
    documents = rendered("prod")
    monitor = of_kind(documents, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["podMetricsEndpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}
    pod_labels = of_kind(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_prometheus_rules_pass_promtool_and_name_real_metrics(tmp_path):
    rule = of_kind(rendered("prod"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = run("promtool", "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts["ExpirydNoLeader"] == "sum(expiryd_is_leader) == 0"
    assert {
        "ExpirydSeveralLeaders",
        "ExpirydNodeNotSubscribed",
        "ExpirydSlotsUnheard",
        "ExpirydClockOff",
        "ExpirydNodeMayEvict",
        "ExpirydNotificationsDisabled",
        "ExpirydEventsDropped",
        "ExpirydQueueSaturated",
        "ExpirydEventsDeadLettered",
        "ExpirydRouteDropping",
        "ExpirydRouteLagging",
        "ExpirydEventsUnheard",
        "ExpirydSweepsStalled",
    } <= alerts.keys()
    known = metric_names()
    for expr in alerts.values():
        for name in re.findall(r"expiryd_[a-z_]+", expr):
            assert name in known, f"{name} in an alert is not a metric expiryd exposes"


def test_grafana_dashboard_is_json_whose_queries_name_real_metrics():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "expiryd-dashboard.json").read_text())
    known = metric_names()
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"expiryd_[a-z_]+", target["expr"])
    }
    assert queried and queried <= known, queried - known
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("leader", "node", "route", "renewals", "queue"):
        assert topic in titles
