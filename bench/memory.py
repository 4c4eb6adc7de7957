"""Memory: a follower's resident memory per million scheduled keys, under a flood of keys of no route, and
how fast it learns TTL writes; the code before a change against the code now, in one run on one cluster.

A leader (the code now) and two followers, one running the code now and one a checkout of ``--before``
(a git revision), on one cluster. First, in this process, each schedule's operations (add, reschedule,
fire, settle) over as many keys, the old module against the new; then three phases:

* **Schedule.** 1,000,000 routed keys with 25-byte names and a one-hour TTL, written in batches of
  50,000, each once both followers have scheduled the last: RSS before and after, in MB per million.
* **Unrouted flood.** 300,000 keys of another application, 200-byte names, expiring at once (read by
  that application once due, which makes Redis expire them then): each follower's peak RSS growth.
* **Learning.** 500,000 routed keys written as fast as raw pipelined RESP goes: how many each follower
  scheduled per second of the burst, and how many overflowed its lookup queue (found by a later rescan).

    python -m bench memory                    # before: the revision before the compact schedule
    python -m bench memory --before <rev>
"""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from expiryd.schedule import Schedule
from tests.harness import Replica, rss_mb, send_raw, wait_until, write_config

from .latency import cpu_seconds

BEFORE = "8c7d212"  # the last revision with a schedule of Python objects and unrouted events kept
ROUTE = {"match": "mem:*", "name": "memory", "log": {"path": "/dev/null"}}
NAME_LENGTH = 25


def run(*, keys: int, flood: int, burst: int, before: str = BEFORE) -> list[dict[str, Any]]:
    repository = Path(__file__).resolve().parent.parent
    with (
        LocalCluster() as cluster,
        tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir,
        _checkout(repository, before, Path(workdir) / "before") as old_source,
    ):
        directory = Path(workdir)
        election = {"lock_name": "{bench-memory}:leader"}  # one election: the old code follows too
        now_config = write_config(directory, cluster, election=election, routes=[ROUTE], memory={"budget": "1GB"})
        before_config = write_config(
            directory,
            cluster,
            election=election,
            routes=[ROUTE],
            schedule={"max_keys": 10_000_000},
            replay={"max_bytes": "256MB"},
        )
        leader = Replica("leader", now_config, directory)
        replicas: dict[str, Replica] = {}
        try:
            wait_until(leader.leads, timeout=30, what="the leader")
            replicas["now"] = Replica("now", now_config, directory)
            replicas["before"] = Replica("before", before_config, directory, source=old_source)
            for replica in replicas.values():
                replica.wait_ready()
                wait_until(
                    lambda replica=replica: replica.metric("expiryd_schedule_scans_total", result="complete") >= 3,
                    timeout=120,
                    what=f"{replica.name}'s start-up scans",
                )
            rows = [{"phase": "operations", **_operations(old_source, keys=keys)}]
            print(rows[-1], flush=True)
            rows.append({"phase": "schedule", **_schedule(cluster, replicas, keys=keys)})
            print(rows[-1], flush=True)
            rows.append({"phase": "unrouted flood", **_flood(cluster, replicas, keys=flood)})
            print(rows[-1], flush=True)
            rows.append({"phase": "learning", **_learning(cluster, replicas, keys=burst)})
            print(rows[-1], flush=True)
            return rows
        finally:
            leader.close()
            for replica in replicas.values():
                replica.close()


class _checkout:
    """A detached worktree of ``revision``, removed afterwards."""

    def __init__(self, repository: Path, revision: str, path: Path) -> None:
        self.repository, self.revision, self.path = repository, revision, path

    def __enter__(self) -> Path:
        subprocess.run(
            ["git", "-C", str(self.repository), "worktree", "add", "--detach", str(self.path), self.revision],
            check=True,
            capture_output=True,
        )
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        subprocess.run(
            ["git", "-C", str(self.repository), "worktree", "remove", "--force", str(self.path)], capture_output=True
        )


def _operations(old_source: Path, *, keys: int) -> dict[str, Any]:
    """Microseconds per key of each schedule operation, in this process: the old module against the new."""
    spec = importlib.util.spec_from_file_location("schedule_before", old_source / "expiryd" / "schedule.py")
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    names = [_name("op", n) for n in range(keys)]
    now = 1_800_000_000.0
    row: dict[str, Any] = {"keys": keys}
    for version, schedule in (
        ("before", old.Schedule(max_keys=10 * keys, horizon=3600.0, keep_due_for=15.0)),
        ("now", Schedule(max_bytes=1 << 34, horizon=3600.0, keep_due_for=15.0)),
    ):
        timings = {}
        pairs = [(name, now + 10 + n % 600_000 / 1000) for n, name in enumerate(names)]
        started = time.perf_counter()
        _add_all(schedule, pairs, now=now)
        timings["add"] = time.perf_counter() - started
        pairs = [(name, now + 700 + n % 600_000 / 1000) for n, name in enumerate(names[: keys // 5])]
        started = time.perf_counter()
        _add_all(schedule, pairs, now=now)
        timings["reschedule"] = (time.perf_counter() - started) * 5
        started, second, fired = time.perf_counter(), now + 10, 0
        while second < now + 1400:
            fired += len(schedule.pop_due(second, limit=10 * keys))
            second += 1
        timings["fire"] = time.perf_counter() - started
        started = time.perf_counter()
        for name in names:
            schedule.settle(name)
        timings["settle"] = time.perf_counter() - started
        for operation, seconds in timings.items():
            row[f"{version}_{operation}_us"] = round(seconds / keys * 1e6, 2)
        del schedule
    return row


def _add_all(schedule: Any, pairs: list[tuple[bytes, float]], *, now: float) -> None:
    """As learning adds: a batch a call where the schedule takes one (``add_many``), else a key a call."""
    add_many = getattr(schedule, "add_many", None)
    if add_many is not None:
        add_many(pairs, now=now)
        return
    for key, due in pairs:
        schedule.add(key, due, now=now)


def _scheduled(replica: Replica) -> float:
    return replica.metric("expiryd_schedule_keys")


def _schedule(cluster: LocalCluster, replicas: dict[str, Replica], *, keys: int) -> dict[str, Any]:
    before = {name: rss_mb(replica.process.pid) for name, replica in replicas.items()}
    counted = {name: _scheduled(replica) for name, replica in replicas.items()}
    due_ms = int(time.time() * 1000) + 3_600_000
    for first in range(0, keys, 50_000):
        names = [_name("mem:s", n) for n in range(first, min(keys, first + 50_000))]
        _write(cluster, names, due_ms=due_ms)
        target = first + len(names)
        for name, replica in replicas.items():
            wait_until(
                lambda replica=replica, name=name: _scheduled(replica) - counted[name] >= target,
                timeout=120,
                interval=0.2,
                what=f"{name} to schedule the batch",
            )
    time.sleep(2.0)
    row: dict[str, Any] = {"keys": keys}
    for name, replica in replicas.items():
        after = rss_mb(replica.process.pid)
        row[f"{name}_rss_before_mb"] = before[name]
        row[f"{name}_rss_after_mb"] = after
        row[f"{name}_mb_per_million"] = round((after - before[name]) * 1_000_000 / keys, 1)
    return row


def _flood(cluster: LocalCluster, replicas: dict[str, Replica], *, keys: int) -> dict[str, Any]:
    """``keys`` keys of no route, 200-byte names, due 3 s from now: the peak RSS growth of each follower."""
    before = {name: rss_mb(replica.process.pid) for name, replica in replicas.items()}
    peak = dict(before)
    due_ms = int(time.time() * 1000) + 3_000
    names = [("other:" + "x" * 180 + f"{n:014d}").encode() for n in range(keys)]
    heard_before = {name: _heard(cluster, replica) for name, replica in replicas.items()}
    _write(cluster, names, due_ms=due_ms)
    time.sleep(max(0.0, due_ms / 1000 - time.time()) + 0.1)
    # Another application reading its keys: each read of an expired key deletes it and publishes
    # expired at once, where Redis's own cycle would take minutes over 300,000 keys.
    send_raw(cluster, names, lambda name: b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(name), name))
    ends = time.time() + 180.0
    received = {name: 0.0 for name in replicas}
    while time.time() < ends and min(received.values()) < keys:
        for name, replica in replicas.items():
            peak[name] = max(peak[name], rss_mb(replica.process.pid))
            received[name] = _heard(cluster, replica) - heard_before[name]
        time.sleep(0.2)
    time.sleep(2.0)
    for name, replica in replicas.items():
        peak[name] = max(peak[name], rss_mb(replica.process.pid))
    row: dict[str, Any] = {"keys": keys}
    for name in replicas:
        row[f"{name}_rss_growth_mb"] = round(peak[name] - before[name], 1)
        row[f"{name}_events_heard"] = int(received[name])
    return row


def _heard(cluster: LocalCluster, replica: Replica) -> float:
    return sum(replica.metric("expiryd_events_received_total", node=node.address) for node in cluster.primaries())


def _learning(cluster: LocalCluster, replicas: dict[str, Replica], *, keys: int) -> dict[str, Any]:
    """``keys`` routed keys written as fast as the writer goes: keys each follower scheduled per second."""
    counted = {name: _scheduled(replica) for name, replica in replicas.items()}
    overflow = {
        name: replica.metric("expiryd_schedule_admissions_total", result="overflow")
        for name, replica in replicas.items()
    }
    errors = {
        name: replica.metric("expiryd_schedule_admissions_total", result="error") for name, replica in replicas.items()
    }
    cpu = {name: cpu_seconds(replica.process.pid) for name, replica in replicas.items()}
    due_ms = int(time.time() * 1000) + 3_000_000
    names = [_name("mem:l", n) for n in range(keys)]
    started = time.time()
    _write(cluster, names, due_ms=due_ms)
    written_in = time.time() - started

    def counts(name: str, replica: Replica) -> tuple[float, float, float]:
        return (
            _scheduled(replica) - counted[name],
            replica.metric("expiryd_schedule_admissions_total", result="overflow") - overflow[name],
            replica.metric("expiryd_schedule_admissions_total", result="error") - errors[name],
        )

    # Until every key is scheduled or counted as not looked up, or nothing moved for 10 s.
    last: dict[str, tuple[float, float, float]] = {name: (0.0, 0.0, 0.0) for name in replicas}
    last_change = {name: started for name in replicas}
    while time.time() - max(last_change.values()) < 10.0:
        settled = True
        for name, replica in replicas.items():
            now_counts = counts(name, replica)
            if now_counts != last[name]:
                last[name], last_change[name] = now_counts, time.time()
            settled = settled and sum(now_counts) >= keys
        if settled:
            break
        time.sleep(0.05)
    row: dict[str, Any] = {"keys": keys, "written_per_second": round(keys / written_in)}
    for name, replica in replicas.items():
        scheduled, overflowed, failed = counts(name, replica)
        seconds = max(last_change[name] - started, 1e-3)  # until its last key was scheduled or counted
        row[f"{name}_scheduled"] = int(scheduled)
        row[f"{name}_learned_per_second"] = round(scheduled / seconds)
        row[f"{name}_overflow"] = int(overflowed)
        row[f"{name}_lookup_errors"] = int(failed)
        row[f"{name}_cpu_seconds"] = round(cpu_seconds(replica.process.pid) - cpu[name], 1)
    return row


def _name(prefix: str, number: int) -> bytes:
    name = f"{prefix}:{number}"
    return (name + "-" * (NAME_LENGTH - len(name))).encode()


def _write(cluster: LocalCluster, names: list[bytes], *, due_ms: int) -> None:
    """SET each name to expire at ``due_ms``, as raw pipelined RESP to its primary: no client in the way."""
    due = str(due_ms).encode()
    tail = b"\r\n$1\r\nv\r\n$4\r\nPXAT\r\n$%d\r\n%s\r\n" % (len(due), due)
    send_raw(cluster, names, lambda name: b"*5\r\n$3\r\nSET\r\n$%d\r\n%s%s" % (len(name), name, tail))
