"""Added latency, footprint and scaling: expiryd against a bare subscriber at steady rates, in one run.

Keys are written ahead of time, each named with its due time (``lat:<due ms>:<n>``)
and set to expire then (``PXAT``), spread evenly over all primaries. Two
expiryd replicas run (a leader and a follower) beside the bare subscriber of
``bench/bare_subscriber.py``. The leader's one route is the ``python`` handler
:mod:`bench.recorder`, which notes inside expiryd when each event reached the
handler; the bare subscriber notes when each key reached it, in its own process.

For each rate, several runs; each reports lateness (due time to handled) for
both, the *added* latency paired key by key (expiryd's time minus the bare
subscriber's for the same key), and expiryd's in-process time from reading the
event off the socket to the handler. Lateness itself is mostly Redis's:
``expired`` fires when Redis deletes the key, not when its TTL runs out. The
CPU and resident memory of the leader and the follower are sampled while idle,
under each rate and during a burst of keys all due at once. Rates go up the
list until expiryd falls behind (does not hand on every key within the run
plus five seconds).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, rss_mb, set_keys_due_at, wait_until, write_config

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROUTE = {"match": "lat:*", "name": "lat", "python": "bench.recorder:record"}


def run(*, rates: list[int], seconds: float, runs: int, burst: int) -> list[dict[str, Any]]:
    rows = []
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        config = write_config(directory, cluster, routes=[ROUTE])
        leader = _recording_replica("leader", config, directory)
        time.sleep(1.0)
        follower = _recording_replica("follower", config, directory)
        try:
            wait_until(leader.leads, timeout=30, what="the first replica to lead")
            assert not follower.leads()
            follower.wait_ready()
            time.sleep(2.0)  # start-up work is not idle
            idle = usage({"leader": leader.process.pid, "follower": follower.process.pid}, seconds=3.0)
            rows.append({"rate": 0, "phase": "idle", **usage_columns(idle)})
            for rate in rates:
                samples = [_one_rate(cluster, directory, leader, follower, rate, seconds) for _ in range(runs)]
                rows.append(_summary(rate, samples))
                if rows[-1]["expiryd_missing"]:
                    break
            rows.append(_burst(cluster, leader, follower, keys=burst))
        finally:
            leader.close()
            follower.close()
    return rows


def _recording_replica(name: str, config: Path, directory: Path) -> Replica:
    return Replica(name, config, directory, env={"EXPIRYD_BENCH_TIMES": str(directory / f"{name}.tsv")})


def _one_rate(
    cluster: LocalCluster, directory: Path, leader: Replica, follower: Replica, rate: int, seconds: float
) -> dict[str, Any]:
    count = int(rate * seconds)
    start_ms = int(time.time() * 1000) + 4000 + count // 25
    keys = [f"lat:{start_ms + int(i * 1000 / rate)}:{i}".encode() for i in range(count)]
    times_file = directory / f"bare-{start_ms}.tsv"
    primaries = [node.address for node in cluster.primaries()]
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_subscriber", "--expect", str(count), "--times", str(times_file), *primaries],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
    set_keys_due_at(cluster, keys, lambda key: int(due_time(key) * 1000))
    time.sleep(max(0.0, start_ms / 1000 - time.time()))
    load = usage({"leader": leader.process.pid, "follower": follower.process.pid}, seconds=seconds)
    wanted = set(keys)
    deadline = time.time() + 5.0
    while time.time() < deadline and len(handler_times(directory / "leader.tsv", wanted)) < count:
        time.sleep(0.2)
    stop_after(bare, seconds=10)
    bare_times = {key: arrived for key, arrived in read_times(times_file).items() if key in wanted}
    handled = handler_times(directory / "leader.tsv", wanted)
    expiryd_late = [(t - due_time(k)) * 1000 for k, (t, _) in handled.items()]
    bare_late = [(t - due_time(k)) * 1000 for k, t in bare_times.items()]
    added = [(handled[k][0] - bare_times[k]) * 1000 for k in handled.keys() & bare_times.keys()]
    inside = [(t - received) * 1000 for t, received in handled.values()]
    return {
        "bare_p50_ms": percentile(bare_late, 50),
        "bare_p99_ms": percentile(bare_late, 99),
        "expiryd_p50_ms": percentile(expiryd_late, 50),
        "expiryd_p99_ms": percentile(expiryd_late, 99),
        "added_p50_ms": percentile(added, 50),
        "added_p99_ms": percentile(added, 99),
        "added_max_ms": percentile(added, 100),
        "inside_p50_ms": percentile(inside, 50),
        "inside_p99_ms": percentile(inside, 99),
        "expiryd_missing": count - len(handled),
        "keys": count,
        **usage_columns(load),
    }


def _summary(rate: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs; min and max too for the added p99."""
    row: dict[str, Any] = {"rate": rate, "phase": "load", "runs": len(samples)}
    for name in samples[0]:
        values = [sample[name] for sample in samples]
        row[name] = sum(values) if name in ("expiryd_missing", "keys") else round(statistics.median(values), 2)
    added_p99 = [sample["added_p99_ms"] for sample in samples]
    row["added_p99_min_ms"], row["added_p99_max_ms"] = min(added_p99), max(added_p99)
    return row


def _burst(cluster: LocalCluster, leader: Replica, follower: Replica, *, keys: int) -> dict[str, Any]:
    """CPU, peak memory and queue depth of both replicas while the leader works through a burst."""
    done_before = leader.metric("expiryd_events_processed_total", route="lat", outcome="ok")
    due_ms = int(time.time() * 1000) + max(3000, keys // 20)
    set_keys_due_at(cluster, [f"lat:{due_ms}:b{i}".encode() for i in range(keys)], due_ms)
    time.sleep(max(0.0, due_ms / 1000 - time.time()))
    pids = {"leader": leader.process.pid, "follower": follower.process.pid}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started, deepest = time.time(), 0.0

    def finished() -> bool:
        nonlocal deepest
        deepest = max(deepest, leader.metric("expiryd_queue_depth"))
        return leader.metric("expiryd_events_processed_total", route="lat", outcome="ok") - done_before >= keys

    wait_until(finished, timeout=180, interval=0.1, what="the leader to finish the burst")
    elapsed = time.time() - started
    row: dict[str, Any] = {
        "rate": f"burst {keys}",
        "phase": "burst",
        "keys": keys,
        "burst_seconds": round(elapsed, 2),
        "leader_queue_depth_max": deepest,
    }
    for name, pid in pids.items():
        row[f"{name}_cpu_percent"] = round((cpu_seconds(pid) - before[name]) / elapsed * 100, 1)
        row[f"{name}_rss_peak_mb"] = rss_mb(pid, peak=True)
    return row


def handler_times(path: Path, wanted: set[bytes]) -> dict[bytes, tuple[float, float]]:
    """What the recorder wrote: key -> (handler time, received_at), first sighting only."""
    handled: dict[bytes, tuple[float, float]] = {}
    if not path.exists():
        return handled
    for line in path.read_bytes().splitlines():
        key, at, received = line.split(b"\t")
        if key in wanted and key not in handled:
            handled[key] = (float(at), float(received))
    return handled


def usage(pids: dict[str, int], *, seconds: float) -> dict[str, dict[str, float]]:
    """CPU (percent of one core) and resident memory of each process, over the same ``seconds``."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {
        name: {"cpu_percent": round((cpu_seconds(pid) - before[name]) / seconds * 100, 1), "rss_mb": rss_mb(pid)}
        for name, pid in pids.items()
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def usage_columns(usage: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{name}_{metric}": value for name, values in usage.items() for metric, value in values.items()}


def due_time(key: bytes) -> float:
    return int(key.split(b":")[1]) / 1000


def read_times(path: Path) -> dict[bytes, float]:
    if not path.exists():
        return {}
    times = {}
    for line in path.read_bytes().splitlines():
        key, _, arrived = line.rpartition(b"\t")
        times[key] = float(arrived)
    return times


def stop_after(process: subprocess.Popen[str], *, seconds: float) -> None:
    """Let the bare subscriber finish (it exits once it has every key), or stop it."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(values: list[float], rank: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(rank / 100 * len(ordered)) - 1))
    return round(ordered[index], 2)
