"""Replicas under a real memory limit (a memory cgroup, as a container's): a flood of keys of no route, a
batch of large payloads and a day of dead letters in miniature. Nothing promised is lost, what a bound refuses
is counted, and no replica is killed.

Each limit is set below what the same load took before its bound existed, so that each test fails without it.
"""

from __future__ import annotations

import uuid

import pytest

from .faults import MemoryLimit, memory_limits_unavailable
from .harness import Replica, send_raw, wait_until

# expiryd itself takes about 45 MB resident before it holds any key or event.
LIMIT = 90 << 20


@pytest.fixture(autouse=True)
def _memory_limits() -> None:
    reason = memory_limits_unavailable()
    if reason is not None:
        pytest.skip(reason)


def heard(replica: Replica, cluster) -> float:
    return sum(replica.metric("expiryd_events_received_total", node=n.address) for n in cluster.primaries())


def test_a_flood_of_keys_of_no_route_takes_no_memory_and_a_routed_key_still_arrives(shared_cluster, config_for, spawn):
    prefix = uuid.uuid4().hex[:8]
    flood = 200_000  # 200-byte names: about 70 MB of history were they kept, past the limit
    config = config_for(shared_cluster, routes=[{"match": f"{prefix}:routed:*", "name": "routed", "log": {}}])
    with MemoryLimit(LIMIT) as leader_limit, MemoryLimit(LIMIT) as follower_limit:
        leader = spawn("1", config)
        leader_limit.add(leader.process.pid)
        wait_until(leader.leads, timeout=30, what="the first replica to lead")
        follower = spawn("2", config)
        follower_limit.add(follower.process.pid)
        follower.wait_ready()
        before = {replica.name: heard(replica, shared_cluster) for replica in (leader, follower)}
        names = [f"{prefix}:other:{n:012d}:".encode().ljust(200, b"x") for n in range(flood)]
        send_raw(
            shared_cluster,
            names,
            lambda name: b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n$2\r\nPX\r\n$1\r\n1\r\n" % (len(name), name),
        )
        # Their application reads them once due: each read deletes an expired key and publishes expired.
        send_raw(shared_cluster, names, lambda name: b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(name), name))
        for replica in (leader, follower):
            wait_until(
                lambda replica=replica: heard(replica, shared_cluster) - before[replica.name] >= flood,
                timeout=120,
                what=f"replica {replica.name} to hear the flood",
            )
            assert replica.metric("expiryd_events_unrouted_total") >= flood
            assert replica.metric("expiryd_memory_bytes", part="replay") == 0
        routed = f"{prefix}:routed:after".encode()
        client = shared_cluster.client()
        client.set(routed, b"v", px=200)
        wait_until(lambda: routed in leader.handled_keys(), timeout=30, what="the routed key delivered")
        assert leader_limit.oom_kills() == 0 and follower_limit.oom_kills() == 0
        leader.assert_running()
        follower.assert_running()


def test_large_payloads_are_read_a_few_at_a_time_and_an_oversized_one_is_set_aside(shared_cluster, config_for, spawn):
    prefix = uuid.uuid4().hex[:8]
    two_mb = 2 << 20
    route = {
        "match": f"{prefix}:*",
        "name": "orders",
        "payload": "{key}:payload",
        "payload_max_bytes": "3MB",
        "payload_batch_bytes": "5MB",
        "log": {},
    }
    config = config_for(shared_cluster, routes=[route])
    client = shared_cluster.client()
    keys = [f"{prefix}:{{{n}}}".encode() for n in range(30)]  # 60 MB of payloads in one batch of 100
    oversized = f"{prefix}:{{big}}".encode()
    with MemoryLimit(LIMIT) as limit:
        leader = spawn("1", config)
        limit.add(leader.process.pid)
        wait_until(leader.leads, timeout=30, what="the replica to lead")
        for n, key in enumerate(keys):
            client.set(key + b":payload", bytes([65 + n % 26]) * two_mb)
        client.set(oversized + b":payload", b"B" * (4 << 20))
        pipe = client.pipeline()
        for key in [*keys, oversized]:
            pipe.set(key, b"v", px=300)
        pipe.execute()
        wait_until(lambda: len(leader.handled_keys()) >= len(keys), timeout=60, what="every payload delivered")
        delivered = {event["key"]: len(event["payload"]) for event in leader.events()}
        assert delivered == {key.decode(): two_mb for key in keys}
        assert not any(client.exists(key + b":payload") for key in keys)
        wait_until(
            lambda: any(f[b"key"] == oversized for _, f in client.xrange("{expiryd:deadletter}")),
            timeout=30,
            what="the oversized payload dead-lettered",
        )
        (entry,) = [f for _, f in client.xrange("{expiryd:deadletter}") if f[b"key"] == oversized]
        assert b"payload" not in entry and entry[b"payload_bytes"] == str(4 << 20).encode()
        assert client.strlen(entry[b"payload_ref"]) == 4 << 20  # kept, under the name the entry gives
        assert client.exists(oversized + b":payload") == 0  # out of the sweep's way
        assert limit.oom_kills() == 0
        leader.assert_running()
        client.xdel(
            "{expiryd:deadletter}", *[i for i, f in client.xrange("{expiryd:deadletter}") if f[b"key"] == oversized]
        )


def test_a_day_of_refusals_in_miniature_keeps_the_dead_letters_within_their_bytes(shared_cluster, config_for, spawn):
    prefix = uuid.uuid4().hex[:8]
    stream = f"{{{prefix}-dead}}"
    refused = 5_000  # some 2 MB of entries against a bound of 1 MB
    config = config_for(
        shared_cluster,
        routes=[{"match": f"{prefix}:*", "name": "orders", "python": "tests.callables:refuse"}],
        dead_letter={"stream": stream, "max_bytes": "1MB"},
    )
    client = shared_cluster.client()
    with MemoryLimit(LIMIT) as limit:
        leader = spawn("1", config)
        limit.add(leader.process.pid)
        wait_until(leader.leads, timeout=30, what="the replica to lead")
        term = leader.http("/leader")[1]
        names = [f"{prefix}:{n:08d}:".encode().ljust(200, b"o") for n in range(refused)]
        send_raw(
            shared_cluster,
            names,
            lambda name: b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n$2\r\nPX\r\n$3\r\n100\r\n" % (len(name), name),
        )

        def accounted() -> float:
            return client.xlen(stream) + leader.metric("expiryd_dead_letters_trimmed_total")

        wait_until(lambda: accounted() >= refused, timeout=90, what="every refusal dead-lettered or counted")
        assert accounted() == refused  # kept, or trimmed and counted: none unaccounted for
        assert leader.metric("expiryd_dead_letters_trimmed_total") > 0
        assert client.memory_usage(stream, samples=0) <= 2 << 20
        assert leader.metric("expiryd_dead_letter_bytes") > 0
        assert leader.http("/leader")[1] == term  # the lease was renewed throughout: the same term
        assert limit.oom_kills() == 0
        client.delete(stream)
