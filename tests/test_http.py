"""The HTTP listener: metrics, liveness, readiness and leader status."""

from __future__ import annotations

import urllib.error
import urllib.request

from .harness import expire_keys, free_port, wait_for_single_leader, wait_until

REQUIRED_METRICS = [
    "expiryd_is_leader",
    "expiryd_leader_term",
    "expiryd_leader_transitions_total",
    "expiryd_lock_renewals_total",
    "expiryd_node_subscribed",
    "expiryd_node_notifications_ok",
    "expiryd_events_received_total",
    "expiryd_events_processed_total",
    "expiryd_events_unrouted_total",
    "expiryd_queue_depth",
    "expiryd_event_handle_seconds_bucket",
    "expiryd_build_info",
]


def test_metrics_expose_every_documented_series(shared_cluster, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster))
    replica.wait_ready()
    wait_for_single_leader([replica])
    expire_keys(shared_cluster, [b"metrics:1"])
    wait_until(lambda: replica.events(), timeout=10, what="one processed event")
    wait_until(lambda: replica.metric("expiryd_lock_renewals_total", result="ok") >= 1, timeout=5, what="a renewal")

    status, text = replica.http("/metrics")
    assert status == 200
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert set(REQUIRED_METRICS) <= names
    assert replica.metric("expiryd_is_leader") == 1
    assert replica.metric("expiryd_leader_term") >= 1
    assert replica.metric("expiryd_subscriptions_unbroken_seconds") > 0  # read on the leader too
    for node in shared_cluster.primaries():
        assert replica.metric("expiryd_node_subscribed", node=node.address) == 1
        assert replica.metric("expiryd_node_notifications_ok", node=node.address) == 1


def test_leader_endpoint_is_200_on_the_leader_and_503_on_followers(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    replicas = [spawn(str(i), config) for i in (1, 2)]
    for replica in replicas:
        replica.wait_ready()
    leader = wait_for_single_leader(replicas)
    follower = next(r for r in replicas if r is not leader)
    assert leader.http("/leader")[0] == 200
    assert follower.http("/leader") == (503, "follower\n")


def test_followers_are_ready_and_live(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    replicas = [spawn(str(i), config) for i in (1, 2)]
    for replica in replicas:
        replica.wait_ready()
    follower = next(r for r in replicas if r is not wait_for_single_leader(replicas))
    assert follower.http("/readyz") == (200, "ready\n")
    assert follower.http("/healthz") == (200, "ok\n")


def test_unreachable_cluster_is_live_but_not_ready(tmp_path, spawn):
    config = tmp_path / "dead.yaml"
    config.write_text(f"redis:\n  nodes: ['redis://127.0.0.1:{free_port()}']\nroutes: [{{match: '*', log: {{}}}}]\n")
    replica = spawn("1", config)
    wait_until(lambda: _answers(replica), timeout=15, what="the listener")
    assert replica.http("/readyz") == (503, "cluster unreachable\n")
    assert replica.http("/healthz")[0] == 200
    assert replica.http("/leader")[0] == 503


def test_unknown_paths_and_methods_are_refused(shared_cluster, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster))
    replica.wait_ready()
    assert replica.http("/nope")[0] == 404
    request = urllib.request.Request(f"http://127.0.0.1:{replica.port}/metrics", data=b"x", method="POST")
    try:
        urllib.request.urlopen(request, timeout=2)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 405


def test_metrics_can_be_served_on_an_address_of_their_own_and_only_there(shared_cluster, config_for, spawn):
    metrics_port = free_port()
    replica = spawn("1", config_for(shared_cluster, http={"metrics_listen": f"127.0.0.1:{metrics_port}"}))
    replica.wait_ready()
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as reply:
        assert "expiryd_is_leader" in reply.read().decode()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/leader", timeout=2)
        raise AssertionError("the metrics listener served /leader")
    except urllib.error.HTTPError as error:
        assert error.code == 404
    assert replica.http("/metrics")[0] == 404
    assert replica.http("/readyz")[0] == 200


def _answers(replica) -> bool:
    replica.assert_running()
    try:
        replica.http("/healthz")
        return True
    except OSError:
        return False
