"""Running under a least-privilege ACL user, and keeping its password out of every output."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from expiryd.localcluster import LocalCluster

from .harness import expire_keys, wait_until
from .receiver import WebhookReceiver

ROOT = Path(__file__).parent.parent
USER = "expiryd"


def documented_rule() -> list[str]:
    """The ``ACL SETUSER`` rule from the README, as arguments after the user name."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (line,) = [line for line in readme.splitlines() if line.startswith(f"ACL SETUSER {USER} ")]
    return line.split()[3:]


def create_user(cluster: LocalCluster, rule: list[str], password: str) -> None:
    for node in cluster.nodes:
        client = node.client()
        client.execute_command("ACL", "SETUSER", USER, *[f">{password}" if r == ">CHANGE-ME" else r for r in rule])
        client.config_set("notify-keyspace-events", "Ex")  # the user may not: an operator's job
        client.execute_command("ACL", "LOG", "RESET")
        client.close()


def refusals(cluster: LocalCluster) -> set[str]:
    """What the ACL refused the user on any node, as 'reason object'."""
    refused = set()
    for node in cluster.nodes:
        client = node.client()
        for entry in client.execute_command("ACL", "LOG"):
            if entry[b"username"] == USER.encode():
                refused.add(f"{entry[b'reason'].decode()} {entry[b'object'].decode()}")
        client.close()
    return refused


@pytest.fixture
def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


def test_expiryd_runs_fully_under_the_documented_acl_rule(shared_cluster, spawn, config_for, password):
    create_user(shared_cluster, documented_rule(), password)
    suffix = uuid.uuid4().hex[:8]
    payload_key, failing_key = f"order:{{{suffix}}}".encode(), f"order:{{{suffix}}}:fails".encode()
    stream = f"expired:{{{suffix}}}"
    with WebhookReceiver(respond=lambda request: 400) as receiver:
        routes = [{"match": f"order:{{{suffix}}}:fails", "name": "hook", "webhook": {"url": receiver.url}},
                  {"match": f"order:{{{suffix}}}", "name": "orders", "payload": "{key}:payload",
                   "stream": {"name": stream}}]
        config = config_for(shared_cluster, routes=routes, redis={"username": USER},
                            election={"lock_name": "{expiryd}:leader"})
        replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": password})
        replica.wait_ready()
        wait_until(replica.leads, timeout=20, what="the ACL user to win the lease")
        client = shared_cluster.client()
        client.set(payload_key + b":payload", b"data")
        expire_keys(shared_cluster, [payload_key, failing_key])
        wait_until(lambda: client.xlen(stream) == 1, timeout=15, what="the stream entry")
        wait_until(lambda: any(f[b"key"] == failing_key for _, f in client.xrange("{expiryd}:dead-letter")),
                   timeout=15, what="the dead-letter entry")
        wait_until(lambda: client.exists(payload_key + b":payload") == 0, timeout=5, what="the payload deleted")
    (entry,) = [fields for _, fields in client.xrange(stream)]
    client.close()
    assert (entry[b"key"], entry[b"payload"]) == (payload_key, b"data")
    assert replica.metric("expiryd_node_config_refused", node=shared_cluster.primaries()[0].address) == 1
    assert refusals(shared_cluster) <= {"command config|get", "command config|set"}
    replica.terminate()
    assert password not in replica.stderr_path.read_text() + replica.stdout_path.read_text()


def test_a_missing_permission_is_logged_naming_the_refused_command(shared_cluster, spawn, config_for, password):
    create_user(shared_cluster, [r for r in documented_rule() if r != "+eval"], password)
    config = config_for(shared_cluster, redis={"username": USER}, election={"lock_name": "{expiryd}:leader"})
    replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": password})
    replica.wait_ready()
    wait_until(lambda: replica.logged("lease attempt failed"), timeout=15, what="the failed lease attempt logged")
    (entry,) = replica.logged("lease attempt failed")
    assert "no permissions to run the 'eval' command" in entry["reason"]
    assert not replica.leads()


def test_a_wrong_password_never_appears_in_logs_metrics_or_check_output(shared_cluster, spawn, config_for, password,
                                                                        tmp_path):
    create_user(shared_cluster, documented_rule(), password)
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = config_for(shared_cluster, redis={"username": USER})
    replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": wrong})
    wait_until(lambda: replica.logged("cannot read the cluster topology"), timeout=30, what="refused topology reads")
    _, metrics = replica.http("/metrics")
    check = subprocess.run([sys.executable, "-m", "expiryd", "check", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, env={"EXPIRYD_REDIS_PASSWORD": wrong,
                                                                            "PATH": "/usr/bin:/bin"})
    replica.terminate()
    outputs = replica.stderr_path.read_text() + replica.stdout_path.read_text() + metrics + check.stdout + check.stderr
    assert "AuthenticationError" in outputs
    assert wrong not in outputs and password not in outputs
