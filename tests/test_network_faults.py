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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from .faults import Firewall, fault_gid, skewed_clock, skip_unless_faketime, skip_unless_faults_can_run
from .harness import (
    Replica,
    SteadyStream,
    event_key,
    logged_at,
    subscription_port,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)
from .receiver import WebhookReceiver

pytestmark = pytest.mark.cluster

# Found within watchdog_interval + watchdog_timeout (3 s by default); a test bounds it only ten times over.
DETECTION_BOUND = 30.0


@dataclass
class Run:
    """Three replicas delivering one prefix's keys to a webhook receiver."""

    cluster: Any
    receiver: WebhookReceiver
    replicas: list[Replica]
    prefix: str
    config: Any
    stream: SteadyStream | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def leader(self) -> Replica:
        return wait_for_single_leader(self.replicas)

    def primary_other_than_the_lease(self) -> Any:
        lock = self.replicas[0].config["election"]["lock_name"]
        lease_owner = self.cluster.slot_owners().owner(f"redlock:{lock}".encode()).address
        return next(node for node in self.cluster.primaries() if node.address != lease_owner)

    def lost(self) -> list[bytes]:
        assert self.stream is not None
        handled = {event_key(event) for event in self.receiver.events()}
        return [key for key in self.stream.keys if key not in handled]

    def wait_for_every_key(self, timeout: float = 40.0) -> None:
        try:
            wait_until(lambda: not self.lost(), timeout=timeout, interval=0.25, what="every key to reach the receiver")
        except AssertionError:
            missing = self.lost()
            raise AssertionError(f"{len(missing)} of {len(self.stream.keys)} keys lost, e.g. {missing[:3]}") from None

    def late_terms(self) -> list[tuple[int, int]]:
        """(term, newest term seen before it) for each batch that arrived after a newer term's first batch."""
        newest, late = 0, []
        for request in list(self.receiver.requests):
            term = int(request.headers["x-expiryd-term"])
            if term < newest:
                late.append((term, newest))
            newest = max(newest, term)
        return late

    def terms(self) -> set[int]:
        return {int(request.headers["x-expiryd-term"]) for request in list(self.receiver.requests)}

    def lateness(self) -> list[float]:
        """Seconds from each routed key's due time (the cluster's clock) to its arrival at the receiver (true)."""
        return [
            request.arrived - event["due_at"]
            for request in list(self.receiver.requests)
            if 200 <= request.status < 300
            for event in request.events
            if "due_at" in event
        ]


@contextmanager
def three_replicas(
    cluster: Any,
    config_for: Callable[..., Any],
    spawn: Callable[..., Replica],
    *,
    first: dict[str, Any] | None = None,
    others: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> Iterator[Run]:
    """Replica 1 starts first and leads; 2 and 3 follow. ``first``/``others``: spawn arguments (group, env)."""
    prefix = f"nf-{uuid.uuid4().hex[:6]}"
    with WebhookReceiver() as receiver:
        routes = [{"match": f"{prefix}:*", "name": "hooks", "webhook": {"url": receiver.url}}]
        if "payload" in overrides:
            routes[0]["payload"] = overrides.pop("payload")
        config = config_for(cluster, routes=routes, **overrides)
        leader = spawn("1", config, **(first or {}))
        leader.wait_ready()
        wait_for_single_leader([leader])
        followers = [spawn(str(i), config, **arguments) for i, arguments in zip((2, 3), others or [{}, {}])]
        replicas = [leader, *followers]
        for replica in followers:
            replica.wait_ready()
        wait_until_eligible(replicas)
        yield Run(cluster=cluster, receiver=receiver, replicas=replicas, prefix=prefix, config=config)


def detected_after(replica: Replica, node: Any, since: float, *, reason: str) -> float:
    """Seconds from ``since`` until ``replica`` logged losing its subscription to ``node`` for ``reason``."""

    def found() -> float | None:
        for entry in replica.logged("subscription lost"):
            if entry.get("node") == node.address and str(entry.get("reason", "")).startswith(reason):
                at = logged_at(entry)
                if at >= since - 0.5:
                    return at - since
        return None

    return float(
        wait_until(lambda: found() is not None, timeout=DETECTION_BOUND, what=f"{reason} on {node.address}") and found()
    )


def test_a_silenced_leader_subscription_is_found_within_seconds_and_loses_nothing(shared_cluster, config_for, spawn):
    skip_unless_faults_can_run()
    with three_replicas(shared_cluster, config_for, spawn) as run, Firewall() as firewall:
        with SteadyStream(run.cluster, prefix=run.prefix, rate=200) as run.stream:
            time.sleep(1.0)
            leader = run.leader()
            node = run.primary_other_than_the_lease()
            silenced_at = time.time()
            firewall.silence(local_port=subscription_port(node, leader), remote_port=node.port)
            detection = detected_after(leader, node, silenced_at, reason="silent")
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
            silenced_at = time.time()
            firewall.silence(local_port=subscription_port(node, follower), remote_port=node.port)
            detection = detected_after(follower, node, silenced_at, reason="silent")
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
            status, text = wait_until(
                lambda: (reply := leader.http("/readyz"))[0] == 503 and reply, timeout=10, what="the leader not ready"
            )
            unheard = leader.metric("expiryd_unheard_slots")
            wait_until(lambda: len(run.terms()) > 1, timeout=20, what="a hand-over")
            time.sleep(max(0.0, cut_at + 15 - time.time()))
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
            time.sleep(12.0)
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
        # Not asserted here: the term order. Each replica finds the silence at its own PING, so a leader that
        # finds it first may hand over to a follower that has not found it yet, and a batch of the old term
        # can reach the receiver after the new term's first (seen here; see the README's "Still not covered").


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
