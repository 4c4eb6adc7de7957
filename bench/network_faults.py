"""Network faults: how soon each rude fault is found, how soon a successor delivers, what is lost or repeated.

Three replicas deliver one prefix's keys to a webhook receiver under a steady load, on one throwaway
cluster. For each fault (iptables DROP rules on loopback, see ``tests/faults.py``), a fresh set of
replicas; the fault is injected from outside, as an operator's chaos test would:

- the leader's own subscription to a primary silenced both ways, for good;
- a follower's subscription silenced the same way (it must not cost a hand-over);
- the leader cut off from one primary for ``CUT_FOR`` seconds (old connections stall, new ones never open);
- the leader cut off from every node for ``CUT_FOR`` seconds;
- one primary silent to every replica for ``SILENT_FOR`` seconds (a payload route: the sweep delivers what no
  one heard).

"found" is read from the log line of the replica that loses the subscription; "successor" is the arrival at the
receiver of the first batch stamped with a newer term, both from the moment the rule went in. Then, in one run,
lateness (arrival at the receiver against the key's due time) under a leader whose wall clock is 2 s ahead,
one 2 s behind, and one with a true clock (libfaketime, preloaded).

Needs root, iptables and libfaketime (``make setup`` installs the last two).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.faults import (
    Firewall,
    Run,
    detected_after,
    fault_gid,
    faults_unavailable,
    silence_subscription,
    skewed_clock,
    three_replicas,
)
from tests.harness import Replica, SteadyStream, event_key, wait_until, write_config

CUT_FOR = 15.0
SILENT_FOR = 8.0
PAYLOAD = "{key}:payload"


def run(
    *, rate: int, cut_for: float = CUT_FOR, silent_for: float = SILENT_FOR, phase: float = 6.0
) -> list[dict[str, Any]]:
    reason = faults_unavailable()
    if reason is not None:
        raise SystemExit(f"network faults cannot be injected here: {reason}")
    rows = []
    with (
        LocalCluster() as cluster,
        tempfile.TemporaryDirectory() as directory,
        _Replicas(Path(directory)) as replicas,
    ):
        for fault in (
            _silenced_leader_subscription,
            _silenced_follower_subscription,
            _leader_cut_off_from_one_primary,
            _leader_cut_off_from_every_node,
            _node_silent_to_every_replica,
        ):
            rows.append(fault(cluster, replicas, rate=rate, cut_for=cut_for, silent_for=silent_for))
            replicas.stop_all()
        rows.extend(_skewed_leaders(cluster, replicas, rate=rate, phase=phase))
    return rows


class _Replicas:
    """``config_for`` and ``spawn`` as the tests have them, in one directory; every replica killed at the end."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._started: list[Replica] = []

    def __enter__(self) -> _Replicas:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def config_for(self, cluster: LocalCluster, **overrides: Any) -> Path:
        return write_config(self._directory, cluster, **overrides)

    def spawn(self, name: str, config: Path, **kwargs: Any) -> Replica:
        replica = Replica(name, config, self._directory, **kwargs)
        self._started.append(replica)
        return replica

    def stop_all(self) -> None:
        for replica in self._started:
            replica.close()
        self._started.clear()

    @contextmanager
    def three(self, cluster: LocalCluster, **arguments: Any) -> Iterator[Run]:
        with three_replicas(cluster, self.config_for, self.spawn, **arguments) as run:
            yield run


def _row(
    fault: str, run: Run, *, found: float | None, injected_at: float, terms_before: set[int], **extra: Any
) -> dict[str, Any]:
    missing = _wait_for_every_key(run)
    counts = Counter(event_key(event) for event in run.receiver.events())
    successor = _first_delivery_of_a_newer_term(run, terms_before)
    return {
        "fault": fault,
        "keys": len(run.stream.keys) if run.stream else 0,
        "lost": missing,
        "repeated": sum(1 for key in run.stream.keys if counts[key] > 1) if run.stream else 0,
        "found s": "-" if found is None else round(found, 2),
        "successor s": "-" if successor is None else round(successor - injected_at, 2),
        "older term after newer": len(run.late_terms()),
        **extra,
    }


def _wait_for_every_key(run: Run) -> int:
    try:
        run.wait_for_every_key(timeout=60)
    except AssertionError:
        pass
    return len(run.lost())


def _first_delivery_of_a_newer_term(run: Run, terms_before: set[int]) -> float | None:
    newest = max(terms_before, default=0)
    arrivals = [
        request.arrived for request in list(run.receiver.requests) if int(request.headers["x-expiryd-term"]) > newest
    ]
    return min(arrivals, default=None)


def _silenced_leader_subscription(cluster: LocalCluster, replicas: _Replicas, **settings: Any) -> dict[str, Any]:
    with replicas.three(cluster) as run, Firewall() as firewall:
        with SteadyStream(cluster, prefix=run.prefix, rate=settings["rate"]) as run.stream:
            time.sleep(1.0)
            leader, node = run.leader(), run.primary_other_than_the_lease()
            terms_before = run.terms()
            injected_at, found = silence_subscription(firewall, leader, node)
            _wait_for_a_newer_term(run, terms_before)
            time.sleep(2.0)
        return _row(
            "leader's subscription silenced", run, found=found, injected_at=injected_at, terms_before=terms_before
        )


def _silenced_follower_subscription(cluster: LocalCluster, replicas: _Replicas, **settings: Any) -> dict[str, Any]:
    with replicas.three(cluster) as run, Firewall() as firewall:
        with SteadyStream(cluster, prefix=run.prefix, rate=settings["rate"]) as run.stream:
            time.sleep(1.0)
            leader, node = run.leader(), run.primary_other_than_the_lease()
            follower = next(replica for replica in run.replicas if replica is not leader)
            terms_before = run.terms()
            injected_at, found = silence_subscription(firewall, follower, node)
            time.sleep(3.0)
        return _row(
            "a follower's subscription silenced", run, found=found, injected_at=injected_at, terms_before=terms_before
        )


def _leader_cut_off_from_one_primary(cluster: LocalCluster, replicas: _Replicas, **settings: Any) -> dict[str, Any]:
    return _leader_cut_off(cluster, replicas, every_node=False, **settings)


def _leader_cut_off_from_every_node(cluster: LocalCluster, replicas: _Replicas, **settings: Any) -> dict[str, Any]:
    return _leader_cut_off(cluster, replicas, every_node=True, **settings)


def _leader_cut_off(cluster: LocalCluster, replicas: _Replicas, *, every_node: bool, **settings: Any) -> dict[str, Any]:
    gid = fault_gid()
    with replicas.three(cluster, first={"group": gid}) as run, Firewall() as firewall:
        with SteadyStream(cluster, prefix=run.prefix, rate=settings["rate"]) as run.stream:
            time.sleep(1.0)
            leader, node = run.replicas[0], run.primary_other_than_the_lease()
            terms_before, injected_at = run.terms(), time.time()
            for each in cluster.nodes if every_node else [node]:
                firewall.cut_off(gid=gid, port=each.port)
            found = detected_after(leader, node, injected_at, reason="silent")
            time.sleep(max(0.0, injected_at + settings["cut_for"] - time.time()))
            firewall.restore()
            time.sleep(2.0)
        return _row(
            f"leader cut off from {'every node' if every_node else 'one primary'} for {settings['cut_for']:g} s",
            run,
            found=found,
            injected_at=injected_at,
            terms_before=terms_before,
        )


def _node_silent_to_every_replica(cluster: LocalCluster, replicas: _Replicas, **settings: Any) -> dict[str, Any]:
    gid = fault_gid()
    group = {"group": gid}
    sweep = {"interval": "2s", "confirm_after": "2s"}
    with (
        replicas.three(cluster, first=group, others=[group, group], payload=PAYLOAD, sweep=sweep) as run,
        Firewall() as firewall,
    ):
        with SteadyStream(cluster, prefix=run.prefix, rate=settings["rate"], payload=PAYLOAD) as run.stream:
            time.sleep(1.0)
            leader, node = run.leader(), run.primary_other_than_the_lease()
            terms_before, injected_at = run.terms(), time.time()
            firewall.cut_off(gid=gid, port=node.port)
            found = detected_after(leader, node, injected_at, reason="silent")
            time.sleep(max(0.0, injected_at + settings["silent_for"] - time.time()))
            firewall.restore()
            time.sleep(2.0)
        row = _row(
            f"a primary silent to every replica for {settings['silent_for']:g} s (payload route)",
            run,
            found=found,
            injected_at=injected_at,
            terms_before=terms_before,
        )
        row["swept"] = int(sum(r.metric("expiryd_swept_events_total", route="hooks") for r in run.replicas))
        return row


def _wait_for_a_newer_term(run: Run, terms_before: set[int]) -> None:
    wait_until(lambda: run.terms() - terms_before, timeout=30, what="a newer term's first delivery")


def _skewed_leaders(cluster: LocalCluster, replicas: _Replicas, *, rate: int, phase: float) -> list[dict[str, Any]]:
    """One run, three leaders in turn: 2 s ahead, then 2 s behind and true (in the order the lease falls)."""
    clocks = {"1": "2 s ahead", "2": "2 s behind", "3": "true"}
    ahead, behind = {"env": skewed_clock(+2.0)}, {"env": skewed_clock(-2.0)}
    with replicas.three(cluster, first=ahead, others=[behind, {}]) as run:
        offsets = {replica.name: replica.metric("expiryd_clock_offset_seconds") for replica in run.replicas}
        windows: list[tuple[str, int, float]] = []  # (leader's name, its term, when its keys start to count)
        with SteadyStream(cluster, prefix=run.prefix, rate=rate, ttl_ms=1500) as run.stream:
            for _ in range(3):
                leader = _current_leader(run)
                term = int(leader.metric("expiryd_leader_term"))
                wait_until(lambda t=term: t in run.terms(), timeout=20, what=f"term {term}'s first delivery")
                # Keys due once the leader has settled: a successor's replay of the gap is the takeover's cost.
                windows.append((leader.name, term, time.time() + 1.0))
                time.sleep(phase)
                if len(windows) < 3:
                    leader.terminate()
                    wait_until(lambda r=leader: _someone_else_leads(run, r), timeout=20, what="a successor")
        _wait_for_every_key(run)
        rows = []
        for name, term, since in windows:
            lateness = sorted(
                request.arrived - event["due_at"]
                for request in list(run.receiver.requests)
                if int(request.headers["x-expiryd-term"]) == term and 200 <= request.status < 300
                for event in request.events
                if event.get("due_at", 0) >= since
            )
            rows.append(
                {
                    "fault": f"leader's clock {clocks[name]}",
                    "keys": len(lateness),
                    "clock offset read s": round(offsets[name], 3),
                    "lateness p50 ms": _ms(_quantile(lateness, 0.50)),
                    "lateness p99 ms": _ms(_quantile(lateness, 0.99)),
                    "early": sum(1 for late in lateness if late < 0),
                    "lost": len(run.lost()),
                }
            )
        return rows


def _current_leader(run: Run) -> Replica:
    return wait_until(
        lambda: next((r for r in run.replicas if r.running and r.leads()), None), timeout=20, what="a leader"
    )


def _someone_else_leads(run: Run, old: Replica) -> bool:
    return any(r.running and r is not old and r.leads() for r in run.replicas)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _ms(seconds: float | None) -> Any:
    return "-" if seconds is None else round(seconds * 1000)
