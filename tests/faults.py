"""Rude network faults, injected as an operator's chaos test would: iptables DROP rules on loopback, a skewed clock.

Both need root (and ``iptables``, and Debian's ``faketime`` for the clock); :func:`skip_unless_faults_can_run`
skips a test, with the reason, where they cannot run::

    with Firewall() as firewall:
        firewall.silence(local_port=51234, remote_port=7000)     # that one connection, both ways, for good
        firewall.cut_off(gid=FAULT_GID, port=7000)               # a process from a node, new connections too
        firewall.restore()                                       # every rule gone, the connections carry on
    # every rule and chain removed, even when the test failed

    Replica(..., group=FAULT_GID)                                # a replica the owner match can single out
    Replica(..., env=skewed_clock(+2.0))                         # its wall clock 2 s ahead

Silenced connections are not closed: TCP retransmits into the void, exactly as when a NAT or a
conntrack table forgets a flow. A process is singled out by its group id rather than its user, so
that it keeps root's access to the interpreter; the ``owner`` match works only in chains reached from
OUTPUT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from .harness import (
    Replica,
    SteadyStream,
    event_key,
    logged_at,
    primary_away_from_the_lease,
    subscription_port,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)
from .receiver import WebhookReceiver

# Found within watchdog_interval + watchdog_timeout (3 s by default); a test bounds it only ten times over.
DETECTION_BOUND = 30.0

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faults_unavailable() -> str | None:
    """Why the fault tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "iptables rules and group switches need root"
    if shutil.which("iptables") is None:
        return "iptables is not installed (make setup installs it)"
    probe = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"iptables does not work here: {probe.stderr.strip()}"
    return None


def skip_unless_faults_can_run() -> None:
    reason = faults_unavailable()
    if reason is not None:
        pytest.skip(reason)


def skip_unless_faketime() -> None:
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} is missing (Debian's faketime; make setup installs it)")


def skewed_clock(seconds: float) -> dict[str, str]:
    """The environment that moves a process's wall clock by ``seconds`` (its monotonic clock stays true)."""
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{seconds:+g}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def fault_gid() -> int:
    """A group id no one uses, for one process the owner match can single out."""
    return 40_000 + uuid.uuid4().int % 20_000


def _iptables(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *arguments], capture_output=True, text=True, check=check)


class Firewall:
    """Two chains of this test's own, one reached from INPUT and one from OUTPUT, removed on exit."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6].upper()
        self._chains = {"INPUT": f"XPD-IN-{tag}", "OUTPUT": f"XPD-OUT-{tag}"}

    def __enter__(self) -> Firewall:
        for hook, chain in self._chains.items():
            _iptables("-N", chain)
            _iptables("-I", hook, "1", "-j", chain)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for hook, chain in self._chains.items():
            _iptables("-D", hook, "-j", chain, check=False)
            _iptables("-F", chain, check=False)
            _iptables("-X", chain, check=False)

    def silence(self, *, local_port: int, remote_port: int) -> None:
        """Drop every packet of one loopback connection, both ways; neither end is told."""
        chain = self._chains["INPUT"]
        for source, destination in ((remote_port, local_port), (local_port, remote_port)):
            _iptables(
                "-A", chain, "-p", "tcp", "-s", "127.0.0.1", "--sport", str(source), "--dport", str(destination),
                "-j", "DROP",
            )  # fmt: skip

    def cut_off(self, *, gid: int, port: int) -> None:
        """Drop what the processes of group ``gid`` send to ``port``: old connections stall, new ones never open."""
        _iptables(
            "-A", self._chains["OUTPUT"], "-p", "tcp", "--dport", str(port), "-m", "owner", "--gid-owner", str(gid),
            "-j", "DROP",
        )  # fmt: skip

    def restore(self) -> None:
        for chain in self._chains.values():
            _iptables("-F", chain)


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
        return primary_away_from_the_lease(self.cluster, self.replicas[0])

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


def silence_subscription(firewall: Firewall, replica: Replica, node: Any) -> tuple[float, float]:
    """Silence ``replica``'s subscription to ``node`` both ways: (when, seconds until the replica found it)."""
    silenced_at = time.time()
    firewall.silence(local_port=subscription_port(node, replica), remote_port=node.port)
    return silenced_at, detected_after(replica, node, silenced_at, reason="silent")


def evict(
    node: Any, keys: list[bytes], *, policy: str, tag: str, filler_ttl: int | None = None, timeout: float = 30.0
) -> None:
    """Make ``node`` evict every one of ``keys`` under ``policy``, as a node at its ``maxmemory`` would.

    The node's ``maxmemory`` is set a little above what it uses, then filler values in hash tag
    ``tag``, which must be in the node's slots, are written until Redis has evicted the keys. Under
    a ``volatile-*`` policy the filler needs a TTL (``filler_ttl`` seconds) to be evictable itself;
    under ``volatile-ttl``, one longer than the keys' makes Redis evict them before the filler, and
    what lives longer after it. The limit, the policy and the filler are gone afterwards.
    """
    fillers: list[bytes] = []
    with node.client(timeout=5.0) as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", policy)
        client.config_set("maxmemory", used + (2 << 20))
        try:
            deadline = time.monotonic() + timeout
            while client.exists(*keys):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{policy} did not evict {keys!r} within {timeout} s")
                filler = f"filler:{{{tag}}}:{len(fillers)}".encode()
                try:
                    client.set(filler, b"x" * (64 << 10), ex=filler_ttl)
                except redis.ResponseError as error:  # OOM: nothing left that the policy may evict
                    raise AssertionError(f"{policy} would evict nothing more, and {keys!r} remain") from error
                fillers.append(filler)
        finally:
            client.config_set("maxmemory", 0)
            client.config_set("maxmemory-policy", "noeviction")
            for start in range(0, len(fillers), 500):
                client.unlink(*fillers[start : start + 500])


class MemoryLimit:
    """A memory cgroup holding processes to ``limit`` bytes, as a container's limit does; the kernel's OOM
    killer ends a process that passes it. cgroup v2 where mounted, else v1's memory controller::

        with MemoryLimit(200 << 20) as limit:
            limit.add(replica.process.pid)
            ...
            assert limit.oom_kills() == 0
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        root = Path("/sys/fs/cgroup") if self._v2 else Path("/sys/fs/cgroup/memory")
        self._root = root
        self.path = root / f"expiryd-test-{uuid.uuid4().hex[:8]}"
        self._pids: list[int] = []

    def __enter__(self) -> MemoryLimit:
        self.path.mkdir()
        (self.path / ("memory.max" if self._v2 else "memory.limit_in_bytes")).write_text(str(self.limit))
        if not self._v2:
            (self.path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))  # no swap to hide in
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))
        self._pids.append(pid)

    def peak(self) -> int:
        """The most the group has held, in bytes (v1; v2 kernels from 5.19)."""
        name = "memory.peak" if self._v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.events" if self._v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            field_name, _, value = line.partition(" ")
            if field_name == "oom_kill":
                return int(value)
        return 0

    def __exit__(self, *exc_info: object) -> None:
        for pid in self._pids:
            with contextlib.suppress(OSError):
                (self._root / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            self.path.rmdir()


def memory_limits_unavailable() -> str | None:
    """Why a memory cgroup cannot be made here, or None."""
    if os.geteuid() != 0:
        return "memory limits need root"
    for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            return None
    return "no writable memory cgroup hierarchy"
