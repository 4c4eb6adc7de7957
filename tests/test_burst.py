"""Floods: a 200k-key burst read and handled whole; a 1M-key flood within bounded memory, every event accounted for."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster

from .harness import Replica, rss_mb, set_keys_due_at, wait_for_single_leader, wait_until

BURST = 200_000


def leader_with_keys_due(
    cluster: LocalCluster,
    config_for: Callable[..., Path],
    spawn: Callable[..., Replica],
    *,
    prefix: str,
    count: int,
    lead_ms: int,
    schedule: dict[str, Any] | None = None,
) -> Replica:
    """A leader logging to /dev/null, and ``count`` keys all due ``lead_ms`` from now."""
    routes = [{"match": "*", "name": "all", "log": {"path": "/dev/null"}}]
    replica = spawn("1", config_for(cluster, routes=routes, schedule=schedule or {}))
    replica.wait_ready()
    wait_for_single_leader([replica])
    due_ms = int(time.time() * 1000) + lead_ms
    set_keys_due_at(cluster, [f"{prefix}:{i}".encode() for i in range(count)], due_ms)
    assert time.time() * 1000 < due_ms, f"writing the {prefix} took longer than its TTL"
    return replica


def test_a_200k_key_burst_is_read_without_loss_or_output_buffer_disconnects(cluster, config_for, spawn):
    replica = leader_with_keys_due(cluster, config_for, spawn, prefix="burst", count=BURST, lead_ms=6_000)
    primaries = cluster.primaries()

    def received() -> float:
        return sum(replica.metric("expiryd_events_received_total", node=n.address) for n in primaries)

    wait_until(lambda: received() >= BURST, timeout=90, interval=0.5, what="every expiration to be read")
    wait_until(
        lambda: replica.metric("expiryd_events_processed_total", route="all", outcome="ok") >= BURST,
        timeout=30,
        interval=0.5,
        what="every expiration to be processed",
    )

    assert received() == BURST
    assert replica.metric("expiryd_events_dropped_total", reason="queue_full") == 0
    for node in primaries:
        assert replica.metric("expiryd_node_disconnects_total", node=node.address, reason="closed") == 0
        assert "output buffer limits" not in (node.directory / "redis.log").read_text()


def test_a_million_key_flood_keeps_memory_bounded_and_accounts_for_every_event(cluster, config_for, spawn):
    flood = 1_000_000
    # The schedule is bounded too: 5 MB holds about 100,000 keys.
    replica = leader_with_keys_due(
        cluster, config_for, spawn, prefix="flood", count=flood, lead_ms=25_000, schedule={"max_bytes": "5MB"}
    )
    primaries = cluster.primaries()

    def outcomes() -> float:
        return sum(
            replica.metric("expiryd_events_processed_total", route="all", outcome=outcome)
            for outcome in ("ok", "dropped")
        ) + replica.metric("expiryd_events_dropped_total", reason="queue_full")

    wait_until(lambda: outcomes() >= flood, timeout=180, interval=0.5, what="every event handled or counted")

    assert outcomes() == flood  # handled, or shed and counted: none unaccounted for
    assert sum(replica.metric("expiryd_events_received_total", node=n.address) for n in primaries) == flood
    peak_rss_mb = rss_mb(replica.process.pid, peak=True)
    assert peak_rss_mb < 300, f"peak RSS {peak_rss_mb} MB"
    assert replica.metric("expiryd_schedule_admissions_total", result="full") > 0  # the bound was reached
    for node in primaries:
        assert "output buffer limits" not in (node.directory / "redis.log").read_text()
