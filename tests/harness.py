"""Real expiryd replicas as child processes, and ways to watch and hurt them.

A :class:`Replica` runs ``python -m expiryd`` with its standard output (the
log handler's event lines) and standard error (its JSON log) in files, so a
test can read both at any time, and signal the process like an orchestrator
would.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from expiryd.devtools.localcluster import LocalCluster
from expiryd.keys import lease_key

WARMUP = 8.0  # replay.warmup's default


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def rss_mb(pid: int, *, peak: bool = False) -> float:
    """A process's resident memory now, or (``peak``) the most it has been since it started."""
    field = "VmHWM:" if peak else "VmRSS:"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(directory: Path, cluster: LocalCluster, **overrides: Any) -> Path:
    """A config for ``cluster`` with a lock of its own, so tests sharing a cluster never share a leader."""
    document: dict[str, Any] = {
        "redis": {"nodes": cluster.seed_urls[:2]},
        "election": {"lock_name": f"{{t-{uuid.uuid4().hex[:8]}}}:leader"},
        "routes": [{"match": "*", "name": "all", "log": {}}],
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            document.setdefault(section, {}).update(values)
        else:
            document[section] = values
    path = directory / f"expiryd-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


class Replica:
    def __init__(
        self,
        name: str,
        config: Path,
        directory: Path,
        *,
        env: dict[str, str] | None = None,
        group: int | None = None,
        source: Path | None = None,
    ) -> None:
        """``source``: run the expiryd of another checkout (its root), as ``python -m`` finds it there."""
        self.name = name
        self.config: dict[str, Any] = yaml.safe_load(config.read_text(encoding="utf-8"))
        self.port = free_port()
        self.stdout_path = directory / f"replica-{name}-{uuid.uuid4().hex[:6]}.events"
        self.stderr_path = self.stdout_path.with_suffix(".log")
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "expiryd",
                "--id",
                name,
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=self._stdout,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=source,
            group=group,  # a group of its own lets an iptables owner rule single it out (tests/faults.py)
        )

    # Observation

    def events(self) -> list[dict[str, Any]]:
        """Every event the replica's log route has written whole: a line still being written is left out."""
        text = self.stdout_path.read_bytes()
        whole = text[: text.rfind(b"\n") + 1]
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def handled_keys(self) -> list[bytes]:
        return [event_key(event) for event in self.events()]

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.stderr_path.read_bytes().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"msg": line.decode(errors="replace")})
        return entries

    def log_tail(self, lines: int) -> str:
        return b"\n".join(self.stderr_path.read_bytes().splitlines()[-lines:]).decode(errors="replace")

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("msg") == message]

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def leads(self) -> bool:
        try:
            return self.http("/leader")[0] == 200
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when the series does not exist yet)."""
        _, text = self.http("/metrics")
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, label_text = series.partition("{")
            if metric != name:
                continue
            present = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if present == wanted:
                return float(value)
        return 0.0

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            self.assert_running()
            try:
                return self.http("/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=timeout, what=f"replica {self.name} to be ready")

    # Control

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def assert_running(self) -> None:
        if not self.running:
            raise AssertionError(
                f"replica {self.name} exited with {self.process.returncode}:\n"
                + self.stderr_path.read_text(errors="replace")[-3000:]
            )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait()
        self._stdout.close()
        self._stderr.close()


def event_key(event: dict[str, Any]) -> bytes:
    if "key_b64" in event:
        return base64.b64decode(event["key_b64"])
    return str(event["key"]).encode("utf-8")


def leaders(replicas: list[Replica]) -> list[Replica]:
    return [replica for replica in replicas if replica.running and replica.leads()]


def wait_for_single_leader(replicas: list[Replica], timeout: float = 20.0) -> Replica:
    found = wait_until(lambda: leaders(replicas), timeout=timeout, what="a leader")
    assert len(found) == 1, f"more than one leader: {[r.name for r in found]}"
    return found[0]


def expire_keys(cluster: LocalCluster, keys: list[bytes], *, ttl_ms: int = 300) -> None:
    client = cluster.client()
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, b"v", px=ttl_ms)
        pipe.execute()
    finally:
        client.close()


def set_keys_due_at(cluster: LocalCluster, keys: list[bytes], due_ms: int | Callable[[bytes], int]) -> None:
    """Write ``keys`` to expire at ``due_ms`` (Unix milliseconds, or a function of the key), a pipeline per primary."""
    due_of = due_ms if callable(due_ms) else (lambda _key: due_ms)
    owners = cluster.slot_owners()
    by_node: dict[str, list[bytes]] = {}
    for key in keys:
        by_node.setdefault(owners.owner(key).address, []).append(key)
    for address, node_keys in by_node.items():
        client = cluster.node(address).client(timeout=30)
        for start in range(0, len(node_keys), 10_000):
            pipe = client.pipeline(transaction=False)
            for key in node_keys[start : start + 10_000]:
                pipe.execute_command("SET", key, b"v", "PXAT", due_of(key))
            pipe.execute()
        client.close()


def keys_on_every_primary(cluster: LocalCluster, prefix: str, per_node: int) -> dict[str, list[bytes]]:
    """``per_node`` keys for each primary, found by asking the cluster where each key lives."""
    chosen: dict[str, list[bytes]] = {node.address: [] for node in cluster.primaries()}
    owners = cluster.slot_owners()
    index = 0
    while any(len(keys) < per_node for keys in chosen.values()):
        key = f"{prefix}:{index}".encode()
        index += 1
        owner = owners.owner(key).address
        if len(chosen[owner]) < per_node:
            chosen[owner].append(key)
    return chosen


class SteadyStream:
    """Writes keys that expire shortly after, at a steady rate, from a thread, until stopped.

    Every key written is remembered, so a test can check that each was processed. With
    ``hash_fields`` each key is a hash whose one field expires instead (``hexpired``; Redis 7.4+,
    Valkey 9). With a ``payload`` template each key carries its number as a hash tag, and its
    companion key (the key's name as the payload, a day's TTL) is written just before it.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        prefix: str,
        rate: int = 200,
        ttl_ms: int = 400,
        hash_fields: bool = False,
        payload: str | None = None,
    ) -> None:
        import threading

        self.keys: list[bytes] = []
        self._cluster = cluster
        self._prefix = prefix
        self._rate = rate
        self._ttl_ms = ttl_ms
        self._hash_fields = hash_fields
        self._payload = payload
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def __enter__(self) -> SteadyStream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _write(self) -> None:
        client = self._cluster.client()
        tick = 0.05
        per_tick = max(1, int(self._rate * tick))
        next_at = time.monotonic()
        while not self._stop.is_set():
            pipe = client.pipeline(transaction=False)
            for _ in range(per_tick):
                if self._payload is not None:
                    key = f"{self._prefix}:{{{len(self.keys)}}}".encode()
                    companion = self._payload.replace("{key}", key.decode()).encode()
                    pipe.set(companion, key, px=86_400_000)  # first, on the same connection as the key
                    pipe.set(key, b"v", px=self._ttl_ms)
                    self.keys.append(key)
                    continue
                key = f"{self._prefix}:{len(self.keys)}".encode()
                if self._hash_fields:
                    pipe.hset(key, b"f", b"v")
                    pipe.execute_command("HPEXPIRE", key, self._ttl_ms, "FIELDS", 1, b"f")
                else:
                    pipe.set(key, b"v", px=self._ttl_ms)
                self.keys.append(key)
            try:
                pipe.execute()
            except Exception:  # a shard failing over: those keys were not written, so forget them
                del self.keys[-per_tick:]
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))
        client.close()


def all_handled(replicas: list[Replica]) -> list[dict[str, Any]]:
    return [event for replica in replicas for event in replica.events()]


def handled_counts(replicas) -> Counter[bytes]:
    return Counter(event_key(e) for e in all_handled(replicas))


def wait_for_all(replicas, keys, timeout=30.0) -> Counter[bytes]:
    def done():
        counts = handled_counts(replicas)
        return counts if all(counts[k] for k in keys) else None

    try:
        return wait_until(done, timeout=timeout, interval=0.25, what="every key to be handled")
    except AssertionError:
        counts = handled_counts(replicas)
        missing = [k for k in keys if not counts[k]]
        raise AssertionError(f"{len(missing)} of {len(keys)} keys never handled, e.g. {missing[:5]}") from None


def start_replicas(cluster, config_for, spawn, count=3, **overrides):
    config = config_for(cluster, **overrides)
    replicas = [spawn(str(i), config) for i in range(1, count + 1)]
    for replica in replicas:
        replica.wait_ready()
    return config, replicas


def wait_until_eligible(replicas: list[Replica], timeout: float = 20.0) -> None:
    """Wait until every running follower's replay buffer has warmed up, so any of them may take over."""

    def eligible() -> bool:
        followers = [r for r in replicas if r.running and not r.leads()]
        try:
            return all(r.metric("expiryd_subscriptions_unbroken_seconds") >= WARMUP for r in followers)
        except OSError:
            return False  # a replica still starting: not listening yet

    wait_until(eligible, timeout=timeout, interval=0.2, what="followers to be eligible to lead")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of the process's sockets (from /proc: the tests run on Linux)."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def tcp_timers(pid: int) -> dict[tuple[int, int], str]:
    """The kernel's active timer of each established TCP socket of the process, by (local, remote) port.

    From /proc/net/tcp: "02" is the keepalive timer, which an idle socket has only when SO_KEEPALIVE
    is on; "01" is a retransmission under way, "00" none.
    """
    inodes = _socket_inodes(pid)
    timers = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == "01":  # established
                ports = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
                timers[ports] = fields[5].split(":")[0]
    return timers


def logged_at(entry: dict[str, Any]) -> float:
    """When a JSON log line was written (epoch seconds, by the replica's own clock)."""
    stamp = datetime.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def lease_holder(cluster: LocalCluster, replica: Replica) -> Any:
    """The primary that holds ``replica``'s lease (the slot of its lock key)."""
    return cluster.node_for_key(lease_key(replica.config["election"]["lock_name"]))


def primary_away_from_the_lease(cluster: LocalCluster, replica: Replica) -> Any:
    """A primary whose loss does not also cost the lease (and an election on top of what a test measures)."""
    holder = lease_holder(cluster, replica).address
    return next(node for node in cluster.primaries() if node.address != holder)


def subscription_port(node: Any, replica: Replica) -> int:
    """The local port of ``replica``'s Pub/Sub connection to ``node`` (a cluster node)."""
    client = node.client()
    try:
        ports = local_ports(replica.process.pid)
        found = [
            port
            for entry in client.client_list(_type="pubsub")
            if (port := int(entry["addr"].rsplit(":", 1)[1])) in ports
        ]
    finally:
        client.close()
    assert len(found) == 1, f"replica {replica.name} has {len(found)} subscriptions on {node.address}"
    return found[0]


def kill_subscriptions(node: Any, *, of: Replica | None = None) -> int:
    """CLIENT KILL the Pub/Sub connections on ``node`` (a cluster node): every one, or only ``of`` a replica's."""
    client = node.client()
    try:
        ports = None if of is None else local_ports(of.process.pid)
        killed = 0
        for entry in client.client_list(_type="pubsub"):
            if ports is None or int(entry["addr"].rsplit(":", 1)[1]) in ports:
                killed += client.client_kill_filter(_id=entry["id"])
        return killed
    finally:
        client.close()


def send_raw(cluster: LocalCluster, names: list[bytes], command: Callable[[bytes], bytes]) -> None:
    """``command(name)`` (raw RESP) for each name, pipelined to the name's primary: a writer as fast as Redis."""
    owners = cluster.slot_owners()
    by_node: dict[str, list[bytes]] = {}
    for name in names:
        by_node.setdefault(owners.owner(name).address, []).append(name)
    for address, node_names in by_node.items():
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as connection:
            for start in range(0, len(node_names), 20_000):
                chunk = node_names[start : start + 20_000]
                connection.sendall(b"".join(command(name) for name in chunk))
                replies, buffered = 0, b""
                while replies < len(chunk):  # one line a reply: +OK, :1
                    data = connection.recv(1 << 20)
                    if not data:
                        raise ConnectionError("the node closed the connection")
                    buffered += data
                    replies += buffered.count(b"\r\n")
                    buffered = buffered[buffered.rfind(b"\r\n") + 2 :]
