"""A stalled lock shard: the primary holding the lease stopped (SIGSTOP) for longer than the replay window.

Three replicas with the default settings deliver one prefix's keys to a webhook receiver at ``rate``
keys a second, all on primaries other than the lease's, so the writes go on. The lease's primary is
then stopped for ``stall`` seconds, with a cluster slow to fail over (``cluster-node-timeout`` 60 s),
as a long fork, a paused VM or a failover slower than the stall would leave it: no one can renew or
take the lease, and no leader moves its progress marks. What matters is what the next leader
replays once the primary comes back: every replica must have kept its history since the last
marks, however long ago, or the events of the stall are lost::

    python -m bench stall          # 25 s, 250 keys/s: the case a user reported losing 296 of 10,050
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.faults import three_replicas
from tests.harness import Replica, SteadyStream, event_key, lease_holder, wait_for_single_leader, write_config


def run(*, rate: int, stall: float) -> list[dict[str, Any]]:
    started: list[Replica] = []
    with LocalCluster(node_timeout_ms=60_000) as cluster, tempfile.TemporaryDirectory() as directory:

        def config_for(cluster: LocalCluster, **overrides: Any) -> Path:
            return write_config(Path(directory), cluster, **overrides)

        def spawn(name: str, config: Path, **kwargs: Any) -> Replica:
            replica = Replica(name, config, Path(directory), **kwargs)
            started.append(replica)
            return replica

        try:
            with three_replicas(cluster, config_for, spawn) as run:
                holder = lease_holder(cluster, run.leader())
                owners = cluster.slot_owners()
                tag = next(
                    tag
                    for tag in (f"{{{run.prefix}-{i}}}" for i in range(1000))
                    if owners.owner(tag.encode()).address != holder.address
                )
                with SteadyStream(cluster, prefix=f"{run.prefix}:{tag}", rate=rate) as stream:
                    run.stream = stream
                    time.sleep(2.0)
                    term_before = max(run.terms(), default=0)
                    cluster.freeze(holder)
                    stalled_at = time.time()
                    try:
                        time.sleep(stall)
                    finally:
                        cluster.thaw(holder)
                    thawed_at = time.time()  # as the receiver stamps arrivals
                    wait_for_single_leader(run.replicas, timeout=60)
                    time.sleep(3.0)
                try:
                    run.wait_for_every_key(timeout=60)
                except AssertionError:
                    pass
                counts = Counter(event_key(event) for event in run.receiver.events())
                newer = [
                    request.arrived
                    for request in list(run.receiver.requests)
                    if int(request.headers["x-expiryd-term"]) > term_before and request.arrived >= stalled_at
                ]
                return [
                    {
                        "stall s": stall,
                        "rate": rate,
                        "keys": len(stream.keys),
                        "lost": len(run.lost()),
                        "repeated": sum(1 for key in stream.keys if counts[key] > 1),
                        "first delivery after the thaw s": round(min(newer) - thawed_at, 2) if newer else "-",
                        "history evicted": sum(r.metric("expiryd_replay_buffer_evicted_total") for r in run.replicas),
                        "oldest history kept s": round(
                            max(r.metric("expiryd_replay_buffer_oldest_seconds") for r in run.replicas), 1
                        ),
                    }
                ]
        finally:
            for replica in started:
                replica.close()
