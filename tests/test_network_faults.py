"""Rude network faults: silent connections, a process cut off from nodes, a skewed clock, a lying topology answer.

Each test runs three real replicas delivering to a real webhook receiver under a steady load, injects the fault
the way an operator's chaos test would (iptables DROP rules on loopback, libfaketime; see tests/faults.py), and
asserts what was lost (nothing), how soon the fault was found, and, from the receiver's side, that no batch with
an older term arrived after the first batch of a newer one.
"""

from __future__ import annotations

import statistics
import time
import uuid

import pytest

from .faults import (
    DETECTION_BOUND,
    Firewall,
    Run,
    detected_after,
    fault_gid,
    silence_subscription,
    skewed_clock,
    skip_unless_faketime,
    skip_unless_faults_can_run,
    three_replicas,
)
from .harness import SteadyStream, tcp_timers, wait_for_single_leader, wait_until
from .receiver import WebhookReceiver

pytestmark = pytest.mark.cluster


def test_a_silenced_leader_subscription_is_found_within_seconds_and_loses_nothing(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    with three_replicas(shared_cluster, config_for, spawn) as run, Firewall() as firewall:
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200) as run.stream:
            time.sleep(1.0)
            leader = run.leader()
            node = run.primary_other_than_the_lease()
            _, detection = silence_subscription(firewall, leader, node)
            wait_until(lambda: len(run.terms()) > 1, timeout=20, what="a hand-over to a replica that heard the gap")
            time.sleep(2.0)
        run.wait_for_every_key()
        print(f"silenced leader subscription: found after {detection:.2f} s, terms {sorted(run.terms())}")
        assert detection < DETECTION_BOUND
        assert run.late_terms() == []


def test_a_silenced_follower_subscription_is_found_and_costs_no_hand_over(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    with three_replicas(shared_cluster, config_for, spawn) as run, Firewall() as firewall:
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200) as run.stream:
            time.sleep(1.0)
            leader = run.leader()
            follower = next(replica for replica in run.replicas if replica is not leader)
            node = run.primary_other_than_the_lease()
            _, detection = silence_subscription(firewall, follower, node)
            wait_until(
                lambda: follower.metric("expiryd_node_subscribed", node=node.address) == 1,
                timeout=20,
                what="resubscribed",
            )
            time.sleep(1.0)
        run.wait_for_every_key()
        print(f"silenced follower subscription: found after {detection:.2f} s")
        assert detection < DETECTION_BOUND
        assert len(run.terms()) == 1, "a follower's lost subscription moved the lease"
        assert run.leader() is leader


def test_a_leader_cut_off_from_one_primary_is_not_ready_hands_over_and_loses_nothing(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    gid = fault_gid()
    with three_replicas(shared_cluster, config_for, spawn, first={"group": gid}) as run, Firewall() as firewall:
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200) as run.stream:
            time.sleep(1.0)
            leader = run.replicas[0]
            assert leader.leads()
            node = run.primary_other_than_the_lease()
            cut_at = time.time()
            firewall.cut_off(gid=gid, port=node.port)
            detection = detected_after(leader, node, cut_at, reason="silent")
            _, text = wait_until(
                lambda: (reply := leader.http("/readyz"))[0] == 503 and reply, timeout=10, what="the leader not ready"
            )
            unheard = leader.metric("expiryd_unheard_slots")
            wait_until(lambda: len(run.terms()) > 1, timeout=20, what="a hand-over")
            time.sleep(max(0.0, cut_at + 8 - time.time()))
            firewall.restore()
            time.sleep(2.0)
        run.wait_for_every_key()
        print(f"leader cut off from one primary: found after {detection:.2f} s; /readyz said {text.strip()!r}")
        assert detection < DETECTION_BOUND
        assert node.address in text and unheard > 0
        assert run.late_terms() == []


def test_a_leader_cut_off_from_every_primary_leaves_one_leader_at_a_time(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    gid = fault_gid()
    with three_replicas(shared_cluster, config_for, spawn, first={"group": gid}) as run, Firewall() as firewall:
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200) as run.stream:
            time.sleep(1.0)
            first_terms = run.terms()
            for node in run.cluster.nodes:
                firewall.cut_off(gid=gid, port=node.port)
            wait_until(lambda: not run.replicas[0].leads(), timeout=20, what="the cut-off leader to step down")
            wait_until(lambda: run.terms() - first_terms, timeout=20, what="a new term's first delivery")
            time.sleep(5.0)  # the new leader at work while the old one, cut off, would still have its lease
            firewall.restore()
            time.sleep(2.0)
        run.wait_for_every_key()
        assert run.late_terms() == []
        assert len(run.terms()) >= 2


def test_a_node_silent_to_every_replica_is_found_and_its_payload_events_are_swept(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    gid = fault_gid()
    same_group = {"group": gid}
    with (
        three_replicas(
            shared_cluster,
            config_for,
            spawn,
            first=same_group,
            others=[same_group, same_group],
            payload="{key}:payload",
            sweep={"interval": "2s", "confirm_after": "2s"},
        ) as run,
        Firewall() as firewall,
    ):
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200, payload="{key}:payload") as run.stream:
            time.sleep(1.0)
            leader = run.leader()
            node = run.primary_other_than_the_lease()
            cut_at = time.time()
            firewall.cut_off(gid=gid, port=node.port)
            detection = detected_after(leader, node, cut_at, reason="silent")
            time.sleep(max(0.0, cut_at + 8 - time.time()))
            firewall.restore()
            time.sleep(2.0)
        run.wait_for_every_key(timeout=60)
        swept = sum(leader.metric("expiryd_swept_events_total", route="hooks") for leader in run.replicas)
        print(f"node silent to every replica: found after {detection:.2f} s, {swept:.0f} swept")
        assert detection < DETECTION_BOUND
        assert run.late_terms() == []


def test_leaders_with_clocks_two_seconds_off_fire_on_time_and_lose_nothing(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    skip_unless_faketime()
    ahead, behind = {"env": skewed_clock(+2.0)}, {"env": skewed_clock(-2.0)}
    with three_replicas(shared_cluster, config_for, spawn, first=ahead, others=[behind, {}]) as run:
        offsets = [replica.metric("expiryd_clock_offset_seconds") for replica in run.replicas[:2]]
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200, ttl_ms=1500) as run.stream:
            time.sleep(4.0)
            ahead_lateness = run.lateness()
            run.replicas[0].kill()
            wait_until(lambda: run.replicas[1].leads() or run.replicas[2].leads(), timeout=20, what="a successor")
            if run.replicas[2].leads():  # the successor we want runs behind: hand the lease on to it
                run.replicas[2].terminate()
                wait_until(run.replicas[1].leads, timeout=20, what="the replica behind to lead")
            settled = len(run.receiver.requests)
            time.sleep(4.0)
        run.wait_for_every_key()
        behind_lateness = [
            request.arrived - event["due_at"]
            for request in run.receiver.requests[settled:]
            for event in request.events
            if "due_at" in event
        ]
        p50_ahead, p50_behind = statistics.median(ahead_lateness), statistics.median(behind_lateness)
        print(f"clock offsets {offsets}; lateness p50 with a leader 2 s ahead {p50_ahead * 1000:.0f} ms, "
              f"2 s behind {p50_behind * 1000:.0f} ms")  # fmt: skip
        assert offsets[0] == pytest.approx(-2.0, abs=0.25) and offsets[1] == pytest.approx(2.0, abs=0.25)
        # On time is within milliseconds; two seconds off (the skew) would be the clock's fault.
        assert p50_ahead < 0.5 and p50_behind < 0.5
        assert min(ahead_lateness + behind_lateness) > -0.05, "a key fired before its due time"
        assert run.late_terms() == []


def test_a_node_answering_a_view_without_the_others_unsubscribes_no_one(cluster, config_for, spawn):
    skip_unless_faults_can_run()
    liar = cluster.replicas()[0]
    prefix = f"nf-{uuid.uuid4().hex[:6]}"
    with WebhookReceiver() as receiver:
        routes = [{"match": f"{prefix}:*", "name": "hooks", "webhook": {"url": receiver.url}}]
        config = config_for(cluster, routes=routes, redis={"nodes": [f"redis://{liar.address}"]})
        replica = spawn("1", config)
        replica.wait_ready()
        wait_for_single_leader([replica])
        primaries = [node.address for node in cluster.primaries()]
        with liar.client() as client:
            client.execute_command("CLUSTER", "RESET", "SOFT")
        wait_until(
            lambda: replica.metric("expiryd_topology_refreshes_total", result="disputed") > 0,
            timeout=20,
            what="the lying answer to be disputed",
        )
        run = Run(cluster=cluster, receiver=receiver, replicas=[replica], prefix=prefix, config=config)
        with SteadyStream(cluster, prefix=prefix, rate=200) as run.stream:
            time.sleep(3.0)
        run.wait_for_every_key()
        assert [replica.metric("expiryd_node_subscribed", node=address) for address in primaries] == [1, 1, 1]
        assert replica.http("/readyz")[0] == 200
        assert replica.metric("expiryd_unheard_slots") == 0


def test_every_connection_to_the_cluster_carries_tcp_keepalive(shared_cluster, config_for, spawn):
    replica = spawn("1", config_for(shared_cluster))
    replica.wait_ready()
    wait_for_single_leader([replica])
    cluster_ports = {node.port for node in shared_cluster.nodes}
    seen: dict[tuple[int, int], set[str]] = {}
    for _ in range(10):  # a socket busy with a PING shows the retransmission timer for a moment instead
        for ports, timer in tcp_timers(replica.process.pid).items():
            if ports[1] in cluster_ports:
                seen.setdefault(ports, set()).add(timer)
        time.sleep(0.2)
    # Subscriptions and their second connections to all six nodes, the lease, topology and data clients.
    assert len(seen) >= 2 * len(shared_cluster.nodes)
    without = sorted(ports for ports, timers in seen.items() if "02" not in timers)
    assert without == [], f"connections (local, remote port) without a keepalive timer: {without}"
