"""On-time firing against a real cluster whose own expiry cycle runs late.

The cluster holds 50,000 keys with a one-hour TTL, which is enough to make
Redis's sampling expiry cycle deliver a due key many seconds late; each test
checks that a key a route handles fires within a few seconds of its due time
all the same (a bound far below Redis's own lateness, not a timing race).
The last test checks, without a cluster, the SCAN patterns made from route globs.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from expiryd.devtools.localcluster import LocalCluster
from expiryd.scheduler import redis_glob

from .harness import Replica, wait_for_single_leader, wait_until, wait_until_eligible, write_config

CROWD = 50_000
ON_TIME = 3.0  # seconds after the due time; Redis alone is tens of seconds late here


@pytest.fixture(scope="module")
def crowded() -> Iterator[LocalCluster]:
    """A cluster of this module's own, crowded with keys whose TTL runs for an hour."""
    with crowded_cluster("redis") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def leader(crowded: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica leading, routing ``ontime:*`` to its log, for tests that do not hurt it."""
    with leading_replica(crowded, tmp_path_factory.mktemp("ontime")) as replica:
        yield replica


@contextlib.contextmanager
def crowded_cluster(server: str) -> Iterator[LocalCluster]:
    with LocalCluster(server=server) as cluster:
        client = cluster.client()
        pipe = client.pipeline(transaction=False)
        for i in range(CROWD):
            pipe.set(f"crowd:{i}", b"v", ex=3600)
        pipe.execute()
        client.close()
        yield cluster


@contextlib.contextmanager
def leading_replica(cluster: LocalCluster, directory: Path) -> Iterator[Replica]:
    replica = Replica("ontime", ontime_config(directory, cluster, "ontime:*"), directory)
    try:
        replica.wait_ready()
        wait_for_single_leader([replica])
        yield replica
    finally:
        replica.close()


def ontime_config(directory: Path, cluster: LocalCluster, match: str) -> Path:
    return write_config(directory, cluster, routes=[{"match": match, "name": "ontime", "log": {}}])


def set_with_ttl(cluster: LocalCluster, keys: list[bytes], *, ttl_ms: int) -> float:
    """Set ``keys`` to expire in ``ttl_ms``; return when they are due (epoch seconds, at the earliest)."""
    client = cluster.client()
    try:
        started = time.time()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, b"v", px=ttl_ms)
        pipe.execute()
        return started + ttl_ms / 1000
    finally:
        client.close()


def run_on(cluster: LocalCluster, command: Callable[[Any], Any]) -> Any:
    client = cluster.client()
    try:
        return command(client)
    finally:
        client.close()


def handled(replica: Replica, keys: list[bytes]) -> dict[bytes, dict[str, Any]]:
    wanted = set(keys)
    return {event["key"].encode(): event for event in replica.events() if event["key"].encode() in wanted}


def lateness(event: dict[str, Any]) -> float:
    """From the key's due time to expiryd receiving its expired event."""
    return float(event["received_at"]) - float(event["due_at"])


def keys_left(cluster: LocalCluster) -> int:
    """Keys the primaries still hold, counting those due but not yet expired (reads nothing, so expires nothing)."""
    total = 0
    for node in cluster.primaries():
        with node.client() as client:
            total += int(client.info("keyspace").get("db0", {}).get("keys", 0))
    return total


def unique(prefix: str, count: int) -> list[bytes]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}:{tag}:{i}".encode() for i in range(count)]


def test_keys_fire_within_seconds_of_their_due_time_though_redis_runs_late(crowded, leader):
    assert_fires_on_time(crowded, leader)


@pytest.mark.cluster
def test_keys_fire_within_seconds_of_their_due_time_on_valkey_too(tmp_path):
    with crowded_cluster("valkey") as cluster, leading_replica(cluster, tmp_path) as replica:
        assert_fires_on_time(cluster, replica)


def assert_fires_on_time(crowded: LocalCluster, leader: Replica) -> None:
    keys = unique("ontime:due", 100)
    unrouted = unique("late:due", 100)  # the same TTL, but no route: Redis's own timing
    before = keys_left(crowded)
    due = set_with_ttl(crowded, keys + unrouted, ttl_ms=1000)

    events = wait_until(
        lambda: len(h := handled(leader, keys)) == len(keys) and h, timeout=30, what="every routed key to be handled"
    )
    assert max(lateness(event) for event in events.values()) < ON_TIME
    assert all(abs(float(event["due_at"]) - due) < 1.0 for event in events.values())
    # Meanwhile Redis itself has not got round to most of the unrouted keys, due at the same moment.
    assert keys_left(crowded) - before > len(unrouted) // 2


def test_an_extended_ttl_fires_at_the_new_due_time_not_the_old(crowded, leader):
    (key,) = unique("ontime:extended", 1)
    set_with_ttl(crowded, [key], ttl_ms=1000)
    run_on(crowded, lambda client: client.pexpire(key, 4000))
    new_due = time.time() + 4.0

    event = wait_until(lambda: handled(leader, [key]).get(key), timeout=30, what="the extended key to be handled")
    assert float(event["received_at"]) >= new_due - 0.5
    assert lateness(event) < ON_TIME


def test_a_persisted_key_never_fires(crowded, leader):
    (key,) = unique("ontime:persisted", 1)
    due = set_with_ttl(crowded, [key], ttl_ms=1000)
    run_on(crowded, lambda client: client.persist(key))
    time.sleep(max(0.0, due + ON_TIME - time.time()))

    assert handled(leader, [key]) == {}
    assert run_on(crowded, lambda client: client.exists(key)) == 1


def test_a_deleted_key_never_fires(crowded, leader):
    (key,) = unique("ontime:deleted", 1)
    due = set_with_ttl(crowded, [key], ttl_ms=1000)
    run_on(crowded, lambda client: client.delete(key))
    time.sleep(max(0.0, due + ON_TIME - time.time()))

    assert handled(leader, [key]) == {}


def test_keys_due_during_a_leader_kill_fire_as_soon_as_the_next_leader_takes_over(crowded, tmp_path):
    config = ontime_config(tmp_path, crowded, "takeover:*")
    replicas = [Replica(str(i), config, tmp_path) for i in (1, 2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        old = wait_for_single_leader(replicas)
        wait_until_eligible(replicas)
        keys = unique("takeover", 50)
        set_with_ttl(crowded, keys, ttl_ms=1500)
        old.kill()
        (new,) = [r for r in replicas if r is not old]
        wait_until(new.leads, timeout=30, what="the follower to take over")
        took_over = time.time()

        events = wait_until(
            lambda: len(h := handled(new, keys)) == len(keys) and h,
            timeout=30,
            what="every key due during the takeover to be handled",
        )
        assert max(float(event["received_at"]) for event in events.values()) < took_over + ON_TIME
    finally:
        for replica in replicas:
            replica.close()


def test_keys_set_while_every_replica_was_down_fire_on_time_after_a_restart(crowded, tmp_path):
    config = ontime_config(tmp_path, crowded, "restart:*")
    first = Replica("1", config, tmp_path)
    try:
        first.wait_ready()
        wait_for_single_leader([first])
    finally:
        first.close()  # the whole deployment is down
    keys = unique("restart", 50)
    set_with_ttl(crowded, keys, ttl_ms=15_000)

    second = Replica("2", config, tmp_path)
    try:
        second.wait_ready()
        events = wait_until(
            lambda: len(h := handled(second, keys)) == len(keys) and h,
            timeout=45,
            what="every key set while down to be handled",
        )
        assert max(lateness(event) for event in events.values()) < ON_TIME
        assert second.metric("expiryd_schedule_scans_total", result="complete") >= 3
    finally:
        second.close()


def test_route_globs_become_scan_patterns_with_redis_negation_and_literal_backslashes():
    assert redis_glob("order:*") == b"order:*"
    assert redis_glob("job:[!x]?") == b"job:[^x]?"
    assert redis_glob("a\\b*") == b"a\\\\b*"


def test_only_the_leader_rescans_and_every_replica_learns_the_keys_it_finds_entering_the_horizon(crowded, tmp_path):
    config = write_config(
        tmp_path,
        crowded,
        routes=[{"match": "horizon:*", "name": "ontime", "log": {}}],
        schedule={"horizon": "4s", "rescan_interval": "1s", "scan_rate": 500_000},
    )
    replicas = [Replica(str(i), config, tmp_path) for i in (1, 2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        leader = wait_for_single_leader(replicas)
        (follower,) = [r for r in replicas if r is not leader]
        wait_until(
            lambda: follower.metric("expiryd_schedule_scans_total", result="complete") >= 3,
            timeout=30,
            what="the follower's scan of each primary as it subscribes",
        )
        scans_at_start = follower.metric("expiryd_schedule_scans_total", result="complete")
        beyond = follower.metric("expiryd_schedule_admissions_total", result="beyond_horizon")
        keys = unique("horizon", 20)
        due = set_with_ttl(crowded, keys, ttl_ms=7_000)  # beyond the 4 s horizon when set
        wait_until(
            lambda: follower.metric("expiryd_schedule_admissions_total", result="beyond_horizon") >= beyond + 20,
            timeout=5,
            what="the follower to leave the keys for later",
        )
        wait_until(
            lambda: follower.metric("expiryd_schedule_keys") >= 20,
            timeout=6,
            what="the follower to learn the keys the leader found entering the horizon",
        )
        assert time.time() < due  # learned ahead of their due time, from the leader's announcement
        assert follower.metric("expiryd_schedule_scans_total", result="complete") == scans_at_start
        events = wait_until(lambda: len(h := handled(leader, keys)) == len(keys) and h, timeout=30, what="all fired")
        assert max(lateness(event) for event in events.values()) < ON_TIME
    finally:
        for replica in replicas:
            replica.close()
