"""Running under a least-privilege ACL user, and keeping its password out of every output."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from expiryd.devtools.localcluster import ClusterNode

from .harness import expire_keys, wait_until
from .receiver import WebhookReceiver
from .servers import StandaloneServer, standalone_servers

Server = ClusterNode | StandaloneServer

ROOT = Path(__file__).parent.parent
USER = "expiryd"


STREAM_USER = "expiryd-stream"


def documented_rule(user: str = USER) -> list[str]:
    """The ``ACL SETUSER`` rule for ``user`` from the README, as arguments after the user name."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (line,) = [line for line in readme.splitlines() if line.startswith(f"ACL SETUSER {user} ")]
    return line.split()[3:]


def create_user(servers: Iterable[Server], rule: list[str], password: str, *, user: str = USER) -> None:
    for server in servers:
        with server.client() as client:
            client.execute_command("ACL", "SETUSER", user, *[f">{password}" if r == ">CHANGE-ME" else r for r in rule])
            client.config_set("notify-keyspace-events", "Ex")  # the user may not: an operator's job
            client.execute_command("ACL", "LOG", "RESET")


def refusals(servers: Iterable[Server], *, user: str = USER) -> set[str]:
    """What the ACL refused ``user`` on any of ``servers``, as 'reason object'."""
    refused = set()
    for server in servers:
        with server.client() as client:
            for entry in client.execute_command("ACL", "LOG"):
                if entry[b"username"] == user.encode():
                    refused.add(f"{entry[b'reason'].decode()} {entry[b'object'].decode()}")
    return refused


@pytest.fixture
def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


def test_expiryd_runs_fully_under_the_documented_acl_rule(shared_cluster, spawn, config_for, password):
    create_user(shared_cluster.nodes, documented_rule(), password)
    suffix = uuid.uuid4().hex[:8]
    payload_key, failing_key = f"order:{{{suffix}}}".encode(), f"order:{{{suffix}}}:fails".encode()
    stream = f"expired:{{{suffix}}}"
    with WebhookReceiver(respond=lambda request: 400) as receiver:
        routes = [
            {"match": f"order:{{{suffix}}}:fails", "name": "hook", "webhook": {"url": receiver.url}},
            {"match": f"order:{{{suffix}}}", "name": "orders", "payload": "{key}:payload", "stream": {"name": stream}},
        ]
        config = config_for(
            shared_cluster, routes=routes, redis={"username": USER}, election={"lock_name": "{expiryd}:leader"}
        )
        replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": password})
        replica.wait_ready()
        wait_until(replica.leads, timeout=20, what="the ACL user to win the lease")
        client = shared_cluster.client()
        client.set(payload_key + b":payload", b"data")
        expire_keys(shared_cluster, [payload_key, failing_key])
        wait_until(lambda: client.xlen(stream) == 1, timeout=15, what="the stream entry")
        wait_until(
            lambda: any(f[b"key"] == failing_key for _, f in client.xrange("{expiryd:deadletter}")),
            timeout=15,
            what="the dead-letter entry",
        )
        wait_until(lambda: client.exists(payload_key + b":payload") == 0, timeout=5, what="the payload deleted")
    (entry,) = [fields for _, fields in client.xrange(stream)]
    client.close()
    assert (entry[b"key"], entry[b"payload"]) == (payload_key, b"data")
    assert replica.metric("expiryd_node_config_refused", node=shared_cluster.primaries()[0].address) == 1
    assert refusals(shared_cluster.nodes) <= {"command config|get", "command config|set"}
    replica.terminate()
    assert password not in replica.stderr_path.read_text() + replica.stdout_path.read_text()


def test_without_config_and_class_g_keys_fire_on_redis_timing_counted_and_warned_once_per_node(
    shared_cluster, spawn, config_for, password
):
    create_user(shared_cluster.nodes, documented_rule(), password)  # notify-keyspace-events "Ex": no g
    prefix = f"order:{{{uuid.uuid4().hex[:8]}}}"
    config = config_for(
        shared_cluster,
        routes=[{"match": f"{prefix}:*", "name": "orders", "log": {}}],
        redis={"username": USER},
        election={"lock_name": "{expiryd}:leader"},
    )
    replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": password})
    replica.wait_ready()
    started = time.monotonic()
    wait_until(replica.leads, timeout=20, what="the ACL user to win the lease")
    keys = [f"{prefix}:{i}".encode() for i in range(5)]
    expire_keys(shared_cluster, keys)

    wait_until(lambda: set(keys) <= set(replica.handled_keys()), timeout=15, what="the keys, on Redis's timing")
    assert all("due_at" not in event for event in replica.events())
    assert replica.metric("expiryd_events_unscheduled_total", route="orders") == len(keys)
    # Past the next periodic notification check (every 10 s), which must not warn again.
    time.sleep(max(0.0, started + 12 - time.monotonic()))
    warnings = [entry for entry in replica.logs() if entry.get("msg", "").startswith("CONFIG refused")]
    assert sorted(entry["node"] for entry in warnings) == sorted(node.address for node in shared_cluster.nodes)
    assert "without g, its keys fire on Redis's own timing" in warnings[0]["msg"]
    assert replica.metric("expiryd_node_notifications_ok", node=shared_cluster.primaries()[0].address) == 0


def test_independent_masters_and_a_stream_on_another_server_work_under_their_documented_rules(
    shared_cluster, spawn, config_for, password, tmp_path
):
    stream_password = f"stream-{uuid.uuid4().hex}"
    password_file = tmp_path / "stream-password"
    password_file.write_text(stream_password + "\n")
    with (
        standalone_servers(3, tmp_path / "masters") as masters,
        standalone_servers(1, tmp_path / "target") as (target,),
    ):
        create_user([*shared_cluster.nodes, *masters], documented_rule(), password)
        create_user([target], documented_rule(STREAM_USER), stream_password, user=STREAM_USER)
        prefix = f"order:{{{uuid.uuid4().hex[:8]}}}"
        route = {
            "match": f"{prefix}:*",
            "name": "orders",
            "stream": {
                "name": "expired:orders",
                "url": target.url,
                "username": STREAM_USER,
                "password_file": str(password_file),
            },
        }
        config = config_for(
            shared_cluster,
            routes=[route],
            redis={"username": USER},
            election={"lock_name": "{expiryd}:leader", "masters": [m.url for m in masters]},
        )
        replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": password})
        replica.wait_ready()
        wait_until(replica.leads, timeout=20, what="the ACL user to win the lease on the masters")
        keys = [f"{prefix}:{i}".encode() for i in range(3)]
        expire_keys(shared_cluster, keys)
        with target.client() as client:
            wait_until(lambda: client.xlen("expired:orders") == len(keys), timeout=15, what="the stream entries")
            entries = client.xrange("expired:orders")
        for master in masters:
            with master.client() as client:
                assert client.exists("redlock:{expiryd}:leader") == 1
        replica.terminate()
        assert sorted(fields[b"key"] for _, fields in entries) == keys
        assert refusals(masters) == set()
        assert refusals([target], user=STREAM_USER) == set()
        outputs = replica.stderr_path.read_text() + replica.stdout_path.read_text()
        assert password not in outputs and stream_password not in outputs


def test_a_missing_permission_is_logged_naming_the_refused_command(shared_cluster, spawn, config_for, password):
    create_user(shared_cluster.nodes, [r for r in documented_rule() if r != "+eval"], password)
    config = config_for(shared_cluster, redis={"username": USER}, election={"lock_name": "{expiryd}:leader"})
    replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": password})
    replica.wait_ready()
    wait_until(lambda: replica.logged("lease attempt failed"), timeout=15, what="the failed lease attempt logged")
    (entry,) = replica.logged("lease attempt failed")
    assert "no permissions to run the 'eval' command" in entry["reason"]
    assert not replica.leads()


def test_a_wrong_password_never_appears_in_logs_metrics_or_check_output(
    shared_cluster, spawn, config_for, password, tmp_path
):
    create_user(shared_cluster.nodes, documented_rule(), password)
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = config_for(shared_cluster, redis={"username": USER})
    replica = spawn("1", config, env={"EXPIRYD_REDIS_PASSWORD": wrong})
    wait_until(lambda: replica.logged("cannot read the cluster topology"), timeout=30, what="refused topology reads")
    _, metrics = replica.http("/metrics")
    check = subprocess.run(
        [sys.executable, "-m", "expiryd", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"EXPIRYD_REDIS_PASSWORD": wrong, "PATH": "/usr/bin:/bin"},
    )
    replica.terminate()
    outputs = replica.stderr_path.read_text() + replica.stdout_path.read_text() + metrics + check.stdout + check.stderr
    assert "AuthenticationError" in outputs
    assert wrong not in outputs and password not in outputs
