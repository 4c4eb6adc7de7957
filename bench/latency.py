"""Added latency, footprint and scaling: expiryd against a bare subscriber at steady rates, in one run.

Keys are written ahead of time, each named with its due time (``lat:<due ms>:<n>``)
and set to expire then (``PXAT``), spread evenly over all primaries. Two
expiryd replicas run (a leader and a follower) beside the bare subscriber of
``bench/bare_subscriber.py``. The leader's log handler writes to a pipe that
this script reads; the time a line arrives here is expiryd's "handled" time. The
bare subscriber records when each key reached it.

For each rate it reports lateness (due time to handled) for both, and the
*added* latency paired key by key: expiryd's time minus the bare subscriber's
time for the same key. Lateness itself is mostly Redis's: ``expired`` fires
when Redis deletes the key, not when its TTL runs out. It also reports the CPU
and resident memory of the leader and the follower while idle and under load.
Rates double until expiryd falls behind (does not hand on every key within
the run plus five seconds) or the list ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from expiryd.localcluster import LocalCluster
from tests.harness import free_port, set_keys_due_at, wait_until, write_config

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def run(*, rates: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        config = write_config(directory, cluster, routes=[{"match": "lat:*", "name": "lat", "log": {}}])
        leader = PipedReplica("leader", config)
        time.sleep(1.0)
        follower = PipedReplica("follower", config)
        try:
            _wait_for_first_to_lead(leader, follower)
            idle = _usage({"leader": leader.process.pid, "follower": follower.process.pid}, seconds=3.0)
            rows.append({"rate": 0, "phase": "idle", **_usage_columns(idle)})
            for rate in rates:
                row = _one_rate(cluster, directory, leader, follower, rate, seconds)
                rows.append(row)
                if row["expiryd_missing"]:
                    break
        finally:
            leader.close()
            follower.close()
    return rows


def _wait_for_first_to_lead(leader: PipedReplica, follower: PipedReplica) -> None:
    wait_until(lambda: leads(leader.port), timeout=30, what="the first replica to lead")
    assert not leads(follower.port)


def _one_rate(cluster: LocalCluster, directory: Path, leader: PipedReplica, follower: PipedReplica,
              rate: int, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    start_ms = int(time.time() * 1000) + 4000 + count // 25
    keys = [f"lat:{start_ms + int(i * 1000 / rate)}:{i}".encode() for i in range(count)]
    times_file = directory / f"bare-{rate}.tsv"
    primaries = [node.address for node in cluster.primaries()]
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_subscriber", "--expect", str(count),
                             "--times", str(times_file), *primaries], stdout=subprocess.PIPE, text=True)
    assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
    leader.handled.clear()
    set_keys_due_at(cluster, keys, lambda key: int(due_time(key) * 1000))
    time.sleep(max(0.0, start_ms / 1000 - time.time()))
    load = _usage({"leader": leader.process.pid, "follower": follower.process.pid}, seconds=seconds)
    deadline = time.time() + 5.0
    while time.time() < deadline and len(leader.handled) < count:
        time.sleep(0.1)
    _stop_after(bare, seconds=10)
    bare_times = _read_times(times_file)
    handled = dict(leader.handled)
    expiryd_late = [(t - due_time(k)) * 1000 for k, t in handled.items()]
    bare_late = [(t - due_time(k)) * 1000 for k, t in bare_times.items()]
    added = [(handled[k] - bare_times[k]) * 1000 for k in handled.keys() & bare_times.keys()]
    return {
        "rate": rate,
        "phase": "load",
        "keys": count,
        "bare_p50_ms": percentile(bare_late, 50), "bare_p99_ms": percentile(bare_late, 99), "bare_max_ms": percentile(bare_late, 100),
        "expiryd_p50_ms": percentile(expiryd_late, 50), "expiryd_p99_ms": percentile(expiryd_late, 99),
        "expiryd_max_ms": percentile(expiryd_late, 100),
        "added_p50_ms": percentile(added, 50), "added_p99_ms": percentile(added, 99), "added_max_ms": percentile(added, 100),
        "expiryd_missing": count - len(handled),
        **_usage_columns(load),
    }


class PipedReplica:
    """An expiryd replica whose event lines are read here, as they are written, and timed."""

    def __init__(self, name: str, config: Path) -> None:
        self.port = free_port()
        self.handled: dict[bytes, float] = {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "expiryd", "--id", name, "--config", str(config), "--listen",
             f"127.0.0.1:{self.port}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            arrived = time.time()
            key = json.loads(line).get("key", "").encode()
            self.handled.setdefault(key, arrived)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def leads(port: int) -> bool:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/leader", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _usage(pids: dict[str, int], *, seconds: float) -> dict[str, dict[str, float]]:
    """CPU (percent of one core) and resident memory of each process, over the same ``seconds``."""
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: {"cpu_percent": round((_cpu_seconds(pid) - before[name]) / seconds * 100, 1),
                   "rss_mb": _rss_mb(pid)} for name, pid in pids.items()}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _usage_columns(usage: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{name}_{metric}": value for name, values in usage.items() for metric, value in values.items()}


def due_time(key: bytes) -> float:
    return int(key.split(b":")[1]) / 1000


def _read_times(path: Path) -> dict[bytes, float]:
    if not path.exists():
        return {}
    times = {}
    for line in path.read_bytes().splitlines():
        key, _, arrived = line.rpartition(b"\t")
        times[key] = float(arrived)
    return times


def _stop_after(process: subprocess.Popen[str], *, seconds: float) -> None:
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

