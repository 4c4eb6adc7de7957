"""Fan-in follows the cluster: failovers, a restarted primary, a frozen node, a stalled lease shard."""

from __future__ import annotations

import time

from .harness import (
    SteadyStream,
    expire_keys,
    keys_on_every_primary,
    lease_holder,
    primary_away_from_the_lease,
    start_replicas,
    wait_for_all,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)


def subscribed(replica, node) -> bool:
    return replica.metric("expiryd_node_subscribed", node=node.address) == 1


def keys_on(cluster, node, prefix, count=5):
    owners = cluster.slot_owners()
    keys, index = [], 0
    while len(keys) < count:
        key = f"{prefix}:{index}".encode()
        index += 1
        if owners.owner(key).address == node.address:
            keys.append(key)
    return keys


def start_leader(cluster, config_for, spawn):
    replica = spawn("1", config_for(cluster))
    replica.wait_ready()
    wait_for_single_leader([replica])
    return replica


def test_replicas_are_subscribed_ahead_of_a_failover(cluster, config_for, spawn):
    replica = start_leader(cluster, config_for, spawn)
    for node in cluster.replicas():
        wait_until(lambda n=node: subscribed(replica, n), timeout=5, what=f"a subscription to replica {node.address}")
        classes = node.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert "E" in classes and "x" in classes


def test_graceful_failover_is_followed_and_the_new_primary_processed(cluster, config_for, spawn):
    replica = start_leader(cluster, config_for, spawn)
    old = cluster.primaries()[0]
    new = cluster.replica_of(old)
    cluster.failover(new)
    reported_at = time.monotonic()

    wait_until(lambda: subscribed(replica, new), timeout=5, what="a subscription to the promoted node")
    print(f"subscribed to the promoted node {time.monotonic() - reported_at:.2f} s after the cluster reported it")
    assert time.monotonic() - reported_at <= 2.5
    # The demoted node stays subscribed as a replica, ready for the next failover; it publishes nothing.
    keys = keys_on(cluster, new, "graceful")
    expire_keys(cluster, keys)
    wait_until(lambda: set(keys) <= set(replica.handled_keys()), timeout=10, what="events from the new primary")
    assert {e["node"] for e in replica.events()} == {new.address}


def test_killed_primary_is_followed_to_its_promoted_replica(cluster_each_server, config_for, spawn):
    replica = start_leader(cluster_each_server, config_for, spawn)
    victim = primary_away_from_the_lease(cluster_each_server, replica)
    promoted = cluster_each_server.replica_of(victim)
    cluster_each_server.kill(victim)
    cluster_each_server.wait_for_primary_change(victim)
    reported_at = time.monotonic()

    wait_until(lambda: subscribed(replica, promoted), timeout=5, what="a subscription to the promoted replica")
    print(f"subscribed {time.monotonic() - reported_at:.2f} s after the cluster reported the promotion")
    assert time.monotonic() - reported_at <= 2.5
    cluster_each_server.wait_until_healthy()
    keys = keys_on(cluster_each_server, promoted, "hard")
    expire_keys(cluster_each_server, keys)
    wait_until(lambda: set(keys) <= set(replica.handled_keys()), timeout=30, what="events from the promoted replica")
    assert replica.metric("expiryd_node_subscribed", node=victim.address) == 0


def test_restarted_primary_with_notifications_off_is_repaired(patient_cluster, config_for, spawn):
    cluster = patient_cluster
    replica = start_leader(cluster, config_for, spawn)
    node = primary_away_from_the_lease(cluster, replica)
    wait_until(
        lambda: b"E" in node.client().config_get("notify-keyspace-events")["notify-keyspace-events"].encode(),
        timeout=5,
        what="expiryd to enable notifications at start",
    )
    cluster.kill(node)
    cluster.restart(node)
    assert node.client().config_get("notify-keyspace-events")["notify-keyspace-events"] == ""

    def repaired() -> bool:
        classes = node.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
        return "E" in classes and "x" in classes

    wait_until(repaired, timeout=10, what="expiryd to repair notify-keyspace-events")
    wait_until(lambda: subscribed(replica, node), timeout=10, what="the subscription to return")
    cluster.wait_until_healthy()
    keys = keys_on(cluster, node, "restarted")
    expire_keys(cluster, keys)
    wait_until(lambda: set(keys) <= set(replica.handled_keys()), timeout=10, what="events from the restarted primary")
    assert replica.logged("enabled keyspace notifications")


def test_frozen_node_is_detected_and_resubscribed_when_it_thaws(patient_cluster, config_for, spawn):
    cluster = patient_cluster
    replica = start_leader(cluster, config_for, spawn)
    node = primary_away_from_the_lease(cluster, replica)
    cluster.freeze(node)
    frozen_at = time.monotonic()
    try:
        wait_until(lambda: not subscribed(replica, node), timeout=10, what="the frozen node to be detected")
        detected_after = time.monotonic() - frozen_at
        assert replica.metric("expiryd_node_disconnects_total", node=node.address, reason="silent") >= 1
        assert replica.http("/readyz")[0] == 503
    finally:
        cluster.thaw(node)
    print(f"frozen node detected after {detected_after:.2f} s")
    assert detected_after <= 6.0

    wait_until(lambda: subscribed(replica, node), timeout=10, what="the subscription to return after SIGCONT")
    by_node = keys_on_every_primary(cluster, "thawed", per_node=3)
    expire_keys(cluster, [k for keys in by_node.values() for k in keys])
    wait_until(
        lambda: set(by_node[node.address]) <= set(replica.handled_keys()),
        timeout=10,
        what="events from the thawed node",
    )
    assert replica.http("/readyz")[0] == 200


STALL = 12.0  # seconds: 5 s past the replay window below, and long for a fork or a paused VM


def test_the_leases_primary_stalled_past_the_replay_window_loses_nothing(patient_cluster, config_for, spawn):
    cluster = patient_cluster
    # A window shorter than the stall: history must outlast the stall because no leader passed it, not by age.
    _, replicas = start_replicas(cluster, config_for, spawn, replay={"window": "7s"})
    leader = wait_for_single_leader(replicas)
    holder = lease_holder(cluster, leader)
    wait_until_eligible(replicas)
    # Every key on one other primary: a write to the stalled one would hold the writer for the whole stall.
    owners = cluster.slot_owners()
    prefix = next(
        tag for tag in (f"{{stall-{i}}}" for i in range(1000)) if owners.owner(tag.encode()).address != holder.address
    )
    with SteadyStream(cluster, prefix=prefix, rate=200) as stream:
        time.sleep(1.0)
        cluster.freeze(holder)
        try:
            time.sleep(STALL)
        finally:
            cluster.thaw(holder)
        wait_for_single_leader([r for r in replicas if r.running], timeout=30)
        time.sleep(2.0)
    counts = wait_for_all(replicas, stream.keys, timeout=60)
    assert all(counts[key] >= 1 for key in stream.keys)
    assert sum(r.metric("expiryd_replay_buffer_evicted_total") for r in replicas) == 0
