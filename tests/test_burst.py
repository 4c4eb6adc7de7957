"""Floods: a 200k-key burst read and handled whole; a 1M-key flood within bounded memory, every event accounted for."""

from __future__ import annotations

import time

from .harness import set_keys_due_at, wait_for_single_leader, wait_until

BURST = 200_000


def test_a_200k_key_burst_is_read_without_loss_or_output_buffer_disconnects(cluster, config_for, spawn):
    routes = [{"match": "*", "name": "all", "log": {"path": "/dev/null"}}]
    replica = spawn("1", config_for(cluster, routes=routes))
    replica.wait_ready()
    wait_for_single_leader([replica])

    due_ms = int(time.time() * 1000) + 10_000
    set_keys_due_at(cluster, [f"burst:{i}".encode() for i in range(BURST)], due_ms)
    assert time.time() * 1000 < due_ms, "writing the burst took longer than its TTL"

    primaries = cluster.primaries()

    def received() -> float:
        return sum(replica.metric("expiryd_events_received_total", node=n.address) for n in primaries)
    wait_until(lambda: received() >= BURST, timeout=90, interval=0.5, what="every expiration to be read")
    wait_until(lambda: replica.metric("expiryd_events_processed_total", route="all", outcome="ok") >= BURST,
               timeout=30, interval=0.5, what="every expiration to be processed")

    assert received() == BURST
    assert replica.metric("expiryd_events_dropped_total", reason="queue_full") == 0
    for node in primaries:
        assert replica.metric("expiryd_node_disconnects_total", node=node.address, reason="closed") == 0
        assert "output buffer limits" not in (node.directory / "redis.log").read_text()


def test_a_million_key_flood_keeps_memory_bounded_and_accounts_for_every_event(cluster, config_for, spawn):
    flood = 1_000_000
    routes = [{"match": "*", "name": "all", "log": {"path": "/dev/null"}}]
    replica = spawn("1", config_for(cluster, routes=routes))
    replica.wait_ready()
    wait_for_single_leader([replica])
    due_ms = int(time.time() * 1000) + 45_000
    set_keys_due_at(cluster, [f"flood:{i}".encode() for i in range(flood)], due_ms)
    assert time.time() * 1000 < due_ms, "writing the flood took longer than its TTL"

    primaries = cluster.primaries()
    peak_rss_mb = 0

    def outcomes() -> float:
        nonlocal peak_rss_mb
        peak_rss_mb = max(peak_rss_mb, _rss_mb(replica.process.pid))
        return sum(replica.metric("expiryd_events_processed_total", route="all", outcome=outcome)
                   for outcome in ("ok", "dropped")) + replica.metric("expiryd_events_dropped_total",
                                                                      reason="queue_full")
    wait_until(lambda: outcomes() >= flood, timeout=180, interval=0.5, what="every event handled or counted")

    assert outcomes() == flood  # handled, or shed and counted: none unaccounted for
    assert sum(replica.metric("expiryd_events_received_total", node=n.address) for n in primaries) == flood
    assert peak_rss_mb < 300, f"peak RSS {peak_rss_mb} MB"
    for node in primaries:
        assert "output buffer limits" not in (node.directory / "redis.log").read_text()


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024
