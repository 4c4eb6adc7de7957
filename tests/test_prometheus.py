"""A real Prometheus scrapes three replicas and sees exactly one leader, before and after the leader dies."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from .harness import free_port, wait_for_single_leader, wait_until, wait_until_eligible


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on loopback; the test writes its scrape targets, then calls ``start``."""
    port = free_port()
    process: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [{"job_name": "expiryd", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        process.append(
            subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "prometheus.log").open("wb"),
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for p in process:
        p.kill()
        p.wait()


def query(base: str, expression: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.load(reply)["data"]["result"]
    except OSError:
        return []


def leader_instances(base: str) -> list[str]:
    return [r["metric"]["instance"] for r in query(base, "expiryd_is_leader == 1")]


def single_value(base: str, expression: str) -> float | None:
    """The value of an expression that yields one series, or None when it yields none."""
    result = query(base, expression)
    return float(result[0]["value"][1]) if result else None


def sum_of_leaders(base: str) -> float | None:
    return single_value(base, "sum(expiryd_is_leader)")


def most_leaders_seen(base: str) -> float | None:
    """The largest number of replicas Prometheus saw leading at once over the last two minutes."""
    return single_value(base, "max_over_time(sum(expiryd_is_leader)[2m:250ms])")


def test_prometheus_sees_one_leader_and_a_new_one_after_a_kill(shared_cluster, config_for, spawn, prometheus):
    config = config_for(shared_cluster)
    replicas = [spawn(str(i), config) for i in (1, 2, 3)]
    for replica in replicas:
        replica.wait_ready()
    base = prometheus([f"127.0.0.1:{r.port}" for r in replicas])
    leader = wait_for_single_leader(replicas)
    wait_until_eligible(replicas)
    old_instance = f"127.0.0.1:{leader.port}"

    wait_until(
        lambda: sum_of_leaders(base) == 1 and len(query(base, "up == 1")) == 3,
        timeout=30,
        what="Prometheus to scrape all three and see one leader",
    )
    assert leader_instances(base) == [old_instance]

    leader.kill()
    # One query per look: a scrape that times out on a busy machine drops a
    # series for a second, so the new leader is judged on a single snapshot.
    wait_until(
        lambda: len(seen := leader_instances(base)) == 1 and seen != [old_instance],
        timeout=30,
        what="Prometheus to see another replica as the only leader",
    )
    assert most_leaders_seen(base) == 1


def test_exposition_passes_promtool_check_metrics(shared_cluster, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster))
    replica.wait_ready()
    wait_for_single_leader([replica])
    _, text = replica.http("/metrics")
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
