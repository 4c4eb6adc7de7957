"""A rescan over a large keyspace: the commands and the CPU one pass costs, and who pays it.

A cluster holds ``keys`` keys, ``routed`` of them routed (with a TTL), the rest another application's
(no TTL). A leader and a follower run with ``schedule.rescan_interval`` of ``interval``. After both have
scanned every primary as they subscribed, one periodic pass is measured: SCAN, PEXPIRETIME and EVAL
calls on the primaries (INFO commandstats), the primaries' CPU, the leader's and the follower's CPU, and
how long the pass took against its interval::

    python -m bench rescan          # 10,000,000 keys, 100,000 routed, a 60 s interval
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, send_raw, wait_until, write_config

from .latency import cpu_seconds

ROUTE = {"match": "rs:*", "name": "rescan", "log": {"path": "/dev/null"}}
COMMANDS = ("scan", "pexpiretime", "eval", "dbsize")


def run(*, keys: int, routed: int, interval: float) -> list[dict[str, Any]]:
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        filled_in = _fill(cluster, keys=keys, routed=routed)
        config = write_config(
            directory,
            cluster,
            routes=[ROUTE],
            schedule={"rescan_interval": f"{interval}s", "horizon": f"{4 * interval}s"},
        )
        leader = Replica("leader", config, directory)
        follower: Replica | None = None
        try:
            wait_until(leader.leads, timeout=60, what="the leader")
            follower = Replica("follower", config, directory)
            primaries = len(cluster.primaries())
            for replica in (leader, follower):
                wait_until(
                    lambda replica=replica: (
                        replica.metric("expiryd_schedule_scans_total", result="complete") >= primaries
                    ),
                    timeout=20 * interval,
                    interval=1.0,
                    what=f"{replica.name}'s scans as it subscribed",
                )
            passes = leader.metric("expiryd_schedule_scans_total", result="complete")
            follower_passes = follower.metric("expiryd_schedule_scans_total", result="complete")
            calls, redis_cpu = _command_calls(cluster), _redis_cpu(cluster)
            cpu = {replica.name: cpu_seconds(replica.process.pid) for replica in (leader, follower)}
            started = time.time()
            wait_until(
                lambda: leader.metric("expiryd_schedule_scans_total", result="complete") >= passes + primaries,
                timeout=20 * interval,
                interval=0.5,
                what="one periodic pass of the leader",
            )
            ended = time.time()
            after = _command_calls(cluster)
            pass_seconds = max(
                leader.metric("expiryd_schedule_scan_seconds", node=node.address) for node in cluster.primaries()
            )
            row: dict[str, Any] = {
                "keys": keys,
                "routed": routed,
                "fill_seconds": round(filled_in, 1),
                "interval_s": interval,
                "pass_s": round(pass_seconds, 1),
                "wall_s": round(ended - started, 1),
                **{f"{name}_calls": after[name] - calls[name] for name in COMMANDS},
                "redis_cpu_s": round(_redis_cpu(cluster) - redis_cpu, 1),
                "leader_cpu_s": round(cpu_seconds(leader.process.pid) - cpu["leader"], 1),
                "follower_cpu_s": round(cpu_seconds(follower.process.pid) - cpu["follower"], 1),
                "follower_scans": int(
                    follower.metric("expiryd_schedule_scans_total", result="complete") - follower_passes
                ),
            }
            print(row, flush=True)
            return [row]
        finally:
            leader.close()
            if follower is not None:
                follower.close()


def _fill(cluster: LocalCluster, *, keys: int, routed: int) -> float:
    """``keys - routed`` keys of no route without a TTL, and ``routed`` routed keys due in 30 minutes."""
    started = time.time()
    due = str(int(time.time() * 1000) + 1_800_000).encode()
    for first in range(0, keys - routed, 1_000_000):
        names = [b"bg:%d" % n for n in range(first, min(keys - routed, first + 1_000_000))]
        send_raw(cluster, names, lambda name: b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(name), name))
    names = [b"rs:%d" % n for n in range(routed)]
    tail = b"\r\n$1\r\nv\r\n$4\r\nPXAT\r\n$%d\r\n%s\r\n" % (len(due), due)
    send_raw(cluster, names, lambda name: b"*5\r\n$3\r\nSET\r\n$%d\r\n%s%s" % (len(name), name, tail))
    return time.time() - started


def _command_calls(cluster: LocalCluster) -> dict[str, int]:
    calls = dict.fromkeys(COMMANDS, 0)
    for node in cluster.primaries():
        with node.client() as client:
            stats = client.info("commandstats")
        for name in COMMANDS:
            calls[name] += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
    return calls


def _redis_cpu(cluster: LocalCluster) -> float:
    total = 0.0
    for node in cluster.primaries():
        with node.client() as client:
            info = client.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total
