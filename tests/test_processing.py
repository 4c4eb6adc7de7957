"""The leader processes expirations from every primary, routed by glob, and only the leader."""

from __future__ import annotations

import time

from .harness import event_key, expire_keys, keys_on_every_primary, wait_for_single_leader, wait_until


def test_events_from_all_three_primaries_are_processed(shared_cluster_each_server, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster_each_server))
    replica.wait_ready()
    wait_for_single_leader([replica])
    by_node = keys_on_every_primary(shared_cluster_each_server, "all-primaries", per_node=5)
    expire_keys(shared_cluster_each_server, [key for keys in by_node.values() for key in keys])

    expected = {key for keys in by_node.values() for key in keys}
    wait_until(lambda: expected <= set(replica.handled_keys()), timeout=15, what="every key to be processed")
    nodes_seen = {event["node"] for event in replica.events()}
    assert nodes_seen == set(by_node)
    for event in replica.events():
        assert event["term"] >= 1
        assert event["replica"] == "1"
        assert isinstance(event["received_at"], float)


def test_only_the_leader_processes(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    replicas = [spawn(str(i), config) for i in (1, 2, 3)]
    for replica in replicas:
        replica.wait_ready()
    leader = wait_for_single_leader(replicas)
    keys = [f"only-leader:{i}".encode() for i in range(30)]
    expire_keys(shared_cluster, keys)

    wait_until(lambda: set(keys) <= set(leader.handled_keys()), timeout=15, what="the leader to process every key")
    followers = [r for r in replicas if r is not leader]
    wait_until(
        lambda: all(f.metric("expiryd_events_skipped_total") >= len(keys) for f in followers),
        timeout=10,
        what="followers to receive and skip the events",
    )
    assert all(f.events() == [] for f in followers)


def test_first_matching_route_wins_and_unmatched_keys_are_counted(cluster, config_for, spawn):
    # A cluster of its own: on the shared one, other tests' keys would count as unrouted here.
    routes = [
        {"match": "order:*", "name": "orders", "log": {}},
        {"match": "order:vip:*", "name": "never-reached", "log": {}},
        {"match": "session:*", "name": "sessions", "log": {}},
    ]
    replica = spawn("1", config_for(cluster, routes=routes))
    replica.wait_ready()
    wait_for_single_leader([replica])
    expire_keys(cluster, [b"order:1", b"order:vip:2", b"session:3", b"cart:4", b"cart:5"])

    wait_until(lambda: replica.metric("expiryd_events_unrouted_total") == 2, timeout=15, what="two unrouted events")
    wait_until(lambda: len(replica.events()) == 3, timeout=5, what="three routed events")
    assert replica.metric("expiryd_events_processed_total", route="orders", outcome="ok") == 2
    assert replica.metric("expiryd_events_processed_total", route="sessions", outcome="ok") == 1
    assert replica.metric("expiryd_events_processed_total", route="never-reached", outcome="ok") == 0
    assert sorted(event_key(e) for e in replica.events()) == [b"order:1", b"order:vip:2", b"session:3"]


def test_keys_that_are_not_utf8_survive_end_to_end(shared_cluster_each_server, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster_each_server))
    replica.wait_ready()
    wait_for_single_leader([replica])
    keys = [b"bin:\xff\xfe\x00end", b"bin:\xc3\x28", b"text:caf\xc3\xa9", b'quote:"\n\\']
    expire_keys(shared_cluster_each_server, keys)

    wait_until(lambda: set(keys) <= set(replica.handled_keys()), timeout=15, what="binary keys to arrive intact")
    by_key = {event_key(e): e for e in replica.events()}
    assert "key_b64" in by_key[b"bin:\xff\xfe\x00end"] and "key" not in by_key[b"bin:\xff\xfe\x00end"]
    assert by_key[b"text:caf\xc3\xa9"]["key"] == "text:café"
    assert by_key[b'quote:"\n\\']["key"] == 'quote:"\n\\'


def test_a_running_leader_opens_no_new_connections(shared_cluster, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster))
    replica.wait_ready()
    wait_for_single_leader([replica])
    # The schedule's start-up scan of each primary opens its connection for good.
    primaries = len(shared_cluster.primaries())
    wait_until(
        lambda: replica.metric("expiryd_schedule_scans_total", result="complete") >= primaries,
        timeout=30,
        what="the start-up scans",
    )
    # One client per node, kept open, so that reading the counters opens nothing either.
    clients = [node.client() for node in shared_cluster.nodes]

    def connections_accepted() -> int:
        return sum(client.info("stats")["total_connections_received"] for client in clients)

    try:
        time.sleep(2)  # settled: the election and the subscriptions are connected
        before = connections_accepted()
        time.sleep(5)  # five topology reads, five renewals, five watchdog pings per node
        assert connections_accepted() - before == 0
    finally:
        for client in clients:
            client.close()
