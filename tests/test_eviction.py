"""A node that may evict keys is named by ``expiryd check`` and by a running replica's metric."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import NoPermissionError

from expiryd.eviction import EvictionPolicy, read_eviction_policy

from .harness import wait_for_single_leader


def test_no_limit_evicts_nothing_whatever_the_policy():
    assert EvictionPolicy(name="allkeys-lru", maxmemory=0).risk is None


def test_noeviction_evicts_nothing_under_a_limit():
    assert EvictionPolicy(name="noeviction", maxmemory=1 << 30).risk is None


def test_a_volatile_policy_under_a_limit_may_evict_routed_keys():
    risk = EvictionPolicy(name="volatile-lru", maxmemory=1 << 30).risk
    assert risk is not None and risk.startswith("keys with a TTL")


def test_an_allkeys_policy_under_a_limit_may_evict_expiryds_own_records_too():
    risk = EvictionPolicy(name="allkeys-lfu", maxmemory=1 << 30).risk
    assert risk is not None and "term" in risk


class ConfigReplies:
    def __init__(self, reply: dict[Any, Any] | None) -> None:
        self.reply = reply

    async def config_get(self, pattern: str) -> dict[Any, Any]:
        if self.reply is None:
            raise NoPermissionError("this user has no permissions to run the 'config|get' command")
        return self.reply


def test_the_policy_is_read_from_a_reply_in_bytes():
    reply = {b"maxmemory": b"1073741824", b"maxmemory-policy": b"allkeys-lru", b"maxmemory-samples": b"5"}
    policy = asyncio.run(read_eviction_policy(ConfigReplies(reply)))
    assert policy == EvictionPolicy(name="allkeys-lru", maxmemory=1 << 30)


def test_a_refused_config_reads_as_unknown():
    assert asyncio.run(read_eviction_policy(ConfigReplies(None))) is None


@pytest.fixture
def evicting_primary(shared_cluster) -> Iterator[Any]:
    """One primary of the shared cluster with a memory limit and allkeys-lru, put back afterwards."""
    node = shared_cluster.primaries()[0]
    with node.client() as client:
        before = client.config_get("maxmemory*")
        client.config_set("maxmemory", "1gb")
        client.config_set("maxmemory-policy", "allkeys-lru")
        try:
            yield node
        finally:
            client.config_set("maxmemory", before["maxmemory"])
            client.config_set("maxmemory-policy", before["maxmemory-policy"])


def test_check_names_a_primary_that_may_evict_and_exits_1(shared_cluster, evicting_primary, config_for):
    config = config_for(shared_cluster)
    result = subprocess.run(
        [sys.executable, "-m", "expiryd", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("eviction")]
    assert evicting_primary.address in line and "allkeys-lru" in line


def test_a_running_replica_flags_a_node_that_may_evict(shared_cluster, evicting_primary, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster))
    replica.wait_ready()
    wait_for_single_leader([replica])
    flagged = {
        node.address: replica.metric("expiryd_node_eviction_possible", node=node.address)
        for node in shared_cluster.primaries()
    }
    assert flagged.pop(evicting_primary.address) == 1
    assert set(flagged.values()) == {0}
    warnings = [entry for entry in replica.logs() if "maxmemory-policy allkeys-lru" in entry.get("msg", "")]
    assert [entry["node"] for entry in warnings] == [evicting_primary.address]
