"""On time: lateness from due time to handler, expiryd with its schedule against Redis's own timing, in one run.

One cluster, crowded in steps with keys that carry a one-hour TTL (0, then
100,000, then 1,000,000 of them), which is what makes Redis's sampling expiry
cycle fall behind. At each step and each rate, keys are written ahead with
``PXAT``, named with their due time, in two sets due at the same moments:

* ``ot:<due ms>:<n>``, routed: expiryd (a leader and a follower) schedules and
  fires them; the leader's ``python`` handler (:mod:`bench.recorder`) notes
  when each reached it.
* ``rt:<due ms>:<n>``, a tenth as many, routed nowhere: Redis expires them on
  its own timing, and the bare subscriber of ``bench/bare_subscriber.py`` notes
  when each arrived. That is the lateness any listener without a schedule gets.

Reported per row: lateness p50/p99/max of both, Redis's CPU (all six nodes,
user+sys, percent of one core) over the run, and the replicas' CPU. Then, with
the crowd at its largest: the same 10,000 keys/s run with the schedule off
(Redis's CPU without it), and the leader's resident memory before and after it
learns 1,000,000 routed keys (memory per million scheduled keys)::

    python -m bench ontime
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, rss_mb, set_keys_due_at, wait_until, write_config

from .latency import cpu_seconds, due_time, handler_times, percentile, read_times, stop_after, usage

ROUTE = {"match": "ot:*", "name": "ontime", "python": "bench.recorder:record"}
CONTROL_SHARE = 10  # one unrouted key for every ten routed ones
LEAD_SECONDS = 4.0  # keys are written this far ahead of the first due time


def run(
    *,
    crowds: list[int],
    rates: list[int],
    seconds: float,
    memory_keys: int,
    compare_off: bool,
    redis_slack: float = 12.0,
) -> list[dict[str, Any]]:
    """``redis_slack``: how long past the last due time the bare subscriber waits for Redis's own events."""
    rows: list[dict[str, Any]] = []
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        crowd = 0
        with _Replicas(cluster, directory, schedule=True) as replicas:
            for target in crowds:
                _crowd(cluster, start=crowd, stop=target)
                crowd = target
                for rate in rates:
                    rows.append(
                        _shown(
                            {
                                "crowd": crowd,
                                "rate": rate,
                                "schedule": "on",
                                **_one_run(
                                    cluster, directory, replicas, rate=rate, seconds=seconds, redis_slack=redis_slack
                                ),
                            }
                        )
                    )
        if compare_off:
            with _Replicas(cluster, directory, schedule=False) as replicas:
                rate = max(rates)
                rows.append(
                    _shown(
                        {
                            "crowd": crowd,
                            "rate": rate,
                            "schedule": "off",
                            **_one_run(
                                cluster, directory, replicas, rate=rate, seconds=seconds, redis_slack=redis_slack
                            ),
                        }
                    )
                )
        if memory_keys:
            with _Replicas(cluster, directory, schedule=True) as replicas:
                rows.append(_shown({"crowd": crowd, "schedule": "on", **_memory(cluster, replicas, keys=memory_keys)}))
    return rows


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """Print a row as soon as it is measured: the whole run takes minutes."""
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


class _Replicas:
    """A leader and a follower with the recording route, the schedule on or off."""

    def __init__(self, cluster: LocalCluster, directory: Path, *, schedule: bool) -> None:
        self.directory = directory
        self.times = directory / f"leader-{time.monotonic_ns()}.tsv"
        config = write_config(directory, cluster, routes=[ROUTE], schedule={"enabled": schedule})
        self.leader = Replica("leader", config, directory, env={"EXPIRYD_BENCH_TIMES": str(self.times)})
        time.sleep(1.0)
        self.follower = Replica("follower", config, directory, env={"EXPIRYD_BENCH_TIMES": str(self.times)})

    def __enter__(self) -> _Replicas:
        wait_until(self.leader.leads, timeout=30, what="the first replica to lead")
        self.follower.wait_ready()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.leader.close()
        self.follower.close()

    @property
    def pids(self) -> dict[str, int]:
        return {"leader": self.leader.process.pid, "follower": self.follower.process.pid}


def _crowd(cluster: LocalCluster, *, start: int, stop: int) -> None:
    """Add keys ``crowd:<start>`` .. ``crowd:<stop - 1>`` with a one-hour TTL."""
    due_ms = int(time.time() * 1000) + 3_600_000
    for first in range(start, stop, 100_000):
        keys = [f"crowd:{i}".encode() for i in range(first, min(stop, first + 100_000))]
        set_keys_due_at(cluster, keys, due_ms)


def _one_run(
    cluster: LocalCluster, directory: Path, replicas: _Replicas, *, rate: int, seconds: float, redis_slack: float
) -> dict[str, Any]:
    count = int(rate * seconds)
    start_ms = int(time.time() * 1000) + int(LEAD_SECONDS * 1000) + count // 10
    routed = [f"ot:{start_ms + int(i * 1000 / rate)}:{i}".encode() for i in range(count)]
    control = [
        f"rt:{start_ms + int(i * CONTROL_SHARE * 1000 / rate)}:{i}".encode() for i in range(count // CONTROL_SHARE)
    ]
    times_file = directory / f"bare-{start_ms}.tsv"
    primaries = [node.address for node in cluster.primaries()]
    listen_for = LEAD_SECONDS + count / 10_000 + seconds + redis_slack
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bare_subscriber",
            "--expect",
            str(10**9),
            "--seconds",
            str(listen_for),
            "--times",
            str(times_file),
            *primaries,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
    set_keys_due_at(cluster, routed + control, lambda key: int(due_time(key) * 1000))
    time.sleep(max(0.0, start_ms / 1000 - time.time()))
    redis_before = _redis_cpu(cluster)
    load = usage(replicas.pids, seconds=seconds)
    redis_percent = round((_redis_cpu(cluster) - redis_before) / seconds * 100, 1)
    wanted = set(routed)
    deadline = time.time() + 10.0
    while time.time() < deadline and len(handler_times(replicas.times, wanted)) < count:
        time.sleep(0.2)
    stop_after(bare, seconds=30)  # it stops by itself once its listening time is over
    handled = handler_times(replicas.times, wanted)
    arrived = read_times(times_file)
    expiryd_late = [(t - due_time(k)) * 1000 for k, (t, _) in handled.items()]
    control_late = [(arrived[k] - due_time(k)) * 1000 for k in control if k in arrived]
    return {
        "keys": count,
        "expiryd_p50_ms": percentile(expiryd_late, 50),
        "expiryd_p99_ms": percentile(expiryd_late, 99),
        "expiryd_max_ms": percentile(expiryd_late, 100),
        "expiryd_missing": count - len(handled),
        "redis_p50_ms": percentile(control_late, 50),
        "redis_p99_ms": percentile(control_late, 99),
        "redis_max_ms": percentile(control_late, 100),
        # Control keys Redis had not expired by the end of the run: later than max, at least.
        "redis_not_yet": len(control) - len(control_late),
        "redis_cpu_percent": redis_percent,
        "leader_cpu_percent": load["leader"]["cpu_percent"],
        "follower_cpu_percent": load["follower"]["cpu_percent"],
    }


def _memory(cluster: LocalCluster, replicas: _Replicas, *, keys: int) -> dict[str, Any]:
    """The leader's resident memory before and after it schedules ``keys`` routed keys due in 30 minutes.

    The keys are written in batches of 50,000, each once the last is scheduled: a faster writer
    outruns the lookups, and what overflows waits for the next rescan (counted, not measured here).
    """
    leader = replicas.leader
    wait_until(
        lambda: leader.metric("expiryd_schedule_scans_total", result="complete") >= 3,
        timeout=300,
        interval=0.5,
        what="the leader's start-up scans",
    )
    before = rss_mb(leader.process.pid)
    scheduled_before = leader.metric("expiryd_schedule_keys")
    due_ms = int(time.time() * 1000) + 1_800_000
    started = time.time()
    for first in range(0, keys, 50_000):
        batch = [f"ot:{due_ms}:m{i}".encode() for i in range(first, min(keys, first + 50_000))]
        set_keys_due_at(cluster, batch, due_ms)
        target = first + len(batch)
        wait_until(
            lambda: leader.metric("expiryd_schedule_keys") - scheduled_before >= target,
            timeout=60,
            interval=0.2,
            what="the leader to schedule the batch",
        )
    learned_in = time.time() - started
    time.sleep(2.0)
    after = rss_mb(leader.process.pid)
    return {
        "scheduled_keys": keys,
        "learned_per_second": round(keys / learned_in),
        "leader_rss_before_mb": before,
        "leader_rss_after_mb": after,
        "rss_mb_per_million_keys": round((after - before) * 1_000_000 / keys, 1),
    }


def _redis_cpu(cluster: LocalCluster) -> float:
    """CPU seconds (user and system) used by every node of the cluster so far."""
    return sum(cpu_seconds(node.process.pid) for node in cluster.nodes if node.process is not None)
