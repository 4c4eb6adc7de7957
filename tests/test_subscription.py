"""Which keyevents a subscription hears: ``expired`` everywhere, ``hexpired`` where the server expires hash fields.

Hash-field expiry (HEXPIRE, HSETEX) exists in Redis 7.4+ and Valkey 9, not in the Redis 7.0 that Debian
ships: the hexpired tests run on Valkey, and on Redis 7.0 the documented behaviour is checked instead.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from .harness import expire_keys, wait_for_single_leader, wait_until


def routes_for(prefix: str) -> list[dict[str, object]]:
    return [
        {"match": f"{prefix}:cart:*", "name": "carts", "events": ["expired", "hexpired"], "log": {}},
        {"match": f"{prefix}:*", "name": "rest", "log": {}},
    ]


def start_leader(cluster, config_for, spawn, prefix):
    replica = spawn("1", config_for(cluster, routes=routes_for(prefix)))
    replica.wait_ready()
    wait_for_single_leader([replica])
    return replica


def classes_on_primaries(cluster) -> list[str]:
    return [
        node.client().config_get("notify-keyspace-events")["notify-keyspace-events"] for node in cluster.primaries()
    ]


def test_hash_field_expirations_reach_the_routes_that_take_them_as_hexpired(shared_valkey_cluster, config_for, spawn):
    cluster = shared_valkey_cluster
    prefix = f"hx-{uuid.uuid4().hex[:6]}"
    replica = start_leader(cluster, config_for, spawn, prefix)
    assert all("h" in classes or "A" in classes for classes in classes_on_primaries(cluster))

    kept, emptied, plain, unrouted = (
        f"{prefix}:{name}".encode() for name in ("cart:kept", "cart:emptied", "cart:plain", "other")
    )
    client = cluster.client()
    due_at = time.time() + 0.3
    for key in (kept, emptied, unrouted):
        client.hset(key, mapping={b"f1": b"a"})
    client.hset(kept, b"f2", b"stays")
    for key in (kept, emptied, unrouted):
        assert client.execute_command("HPEXPIRE", key, 300, "FIELDS", 1, "f1") == [1]
    client.execute_command("HSETEX", kept, "PX", 300, "FIELDS", 1, "f3", "c")  # a second field, same key
    expire_keys(cluster, [plain], ttl_ms=300)

    def kinds_by_key():
        return {(event["key"].encode(), event["kind"]) for event in replica.events()}

    wanted = {(kept, "hexpired"), (emptied, "hexpired"), (plain, "expired")}
    wait_until(lambda: wanted <= kinds_by_key(), timeout=15, what="the hash-field expirations and the key expiry")
    wait_until(
        lambda: replica.metric("expiryd_events_unrouted_total") >= 1,
        timeout=5,
        what="the unrouted hexpired event to be counted",
    )
    events = [e for e in replica.events() if e["key"].encode() in (kept, emptied)]
    print("hexpired lateness (ms):", sorted(round((e["received_at"] - due_at) * 1000) for e in events))
    assert kinds_by_key() <= wanted  # nothing of the route that takes only expired events, no kind invented
    assert {e["term"] for e in replica.events()} == {replica.logged("became leader")[-1]["term"]}
    assert client.hgetall(kept) == {b"f2": b"stays"}  # the key lives on: only fields expired
    assert client.exists(emptied) == 0  # its last field gone, the hash is deleted (a del event, not expired)
    client.close()


def test_redis_7_0_has_no_hash_field_expiry_and_a_hexpired_route_still_gets_expired_events(
    shared_cluster, config_for, spawn
):
    client = shared_cluster.client()
    if not client.info("server")["redis_version"].startswith("7.0."):
        pytest.skip("only Redis 7.0 lacks hash-field expiry")
    prefix = f"hx-{uuid.uuid4().hex[:6]}"
    replica = start_leader(shared_cluster, config_for, spawn, prefix)
    assert all("h" in classes or "A" in classes for classes in classes_on_primaries(shared_cluster))
    hash_key = f"{prefix}:cart:1"
    node = shared_cluster.node_for_key(hash_key).client()
    with pytest.raises(redis.ResponseError, match="unknown command"):
        node.execute_command("HPEXPIRE", hash_key, 300, "FIELDS", 1, "f1")
    node.close()

    key = f"{prefix}:cart:2".encode()
    expire_keys(shared_cluster, [key], ttl_ms=100)
    wait_until(lambda: key in replica.handled_keys(), timeout=10, what="the expired event")
    assert [e["kind"] for e in replica.events()] == ["expired"]
    client.close()
