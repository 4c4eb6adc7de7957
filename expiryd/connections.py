"""How expiryd reaches Redis: addresses, credentials and timeouts in one place.

Every connection expiryd opens (topology reads, node subscriptions, watchdog
PINGs, the election) is made from one :class:`RedisOptions`, so credentials and
timeouts are applied the same way everywhere::

    options = RedisOptions.from_config(config.redis)
    client = options.client(NodeAddress("127.0.0.1", 7000))
    await client.ping()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from .config import KeepaliveConfig, RedisConfig, StreamConfig, TlsConfig

__all__ = [
    "REDIS_FAILURES",
    "NodeAddress",
    "NodeClients",
    "RedisOptions",
    "describe_error",
    "keepalive_options",
    "keepalive_socket_options",
    "set_keepalive",
    "tls_context",
]

# What a call to Redis raises when the server is down, slow or refuses:
# redis-py's cluster client raises RedisClusterException, which is not a RedisError.
# (ssl.SSLError, a failed handshake, is an OSError.)
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)


def describe_error(error: BaseException) -> str:
    """``"NoPermissionError: this user has no permissions to run the 'eval' command"``, for a log line.

    The class name, and the message when there is one. pottery wraps what each
    master raised in one error of its own; the first of those says more than
    the wrapper. Redis's messages name the command or key refused, never a
    credential.
    """
    inner = list(getattr(error, "redis_errors", None) or [])
    if inner:
        error = inner[0]
    text = str(error)
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


@dataclass(frozen=True, order=True)
class NodeAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> NodeAddress:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379)

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """``host:port`` as Redis writes it in ``CLUSTER NODES`` (IPv6 hosts keep their colons)."""
        host, _, port = text.rpartition(":")
        return cls(host, int(port))


# A node client reconnects once, at once, when its connection turns out broken (a server that closed an
# idle connection). redis-py 8's default retries ten times with backoff up to 1 s, timeouts included: a
# refused password or certificate took 4.4 s to report, and a command to a silent node eleven timeouts.
# Every caller here has a loop of its own that tries again.
_RECONNECT_ONCE = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def keepalive_options(keepalive: KeepaliveConfig) -> dict[int, int]:
    """The TCP-level options (level ``IPPROTO_TCP``) that make ``keepalive`` so; SO_KEEPALIVE turns it on."""
    return {
        socket.TCP_KEEPIDLE: max(1, round(keepalive.idle)),
        socket.TCP_KEEPINTVL: max(1, round(keepalive.interval)),
        socket.TCP_KEEPCNT: keepalive.count,
    }


def keepalive_socket_options(keepalive: KeepaliveConfig) -> list[tuple[int, int, int]]:
    """Every ``setsockopt`` (level, option, value) that turns ``keepalive`` on, as httpx's transport takes them."""
    return [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] + [
        (socket.IPPROTO_TCP, option, value) for option, value in keepalive_options(keepalive).items()
    ]


def set_keepalive(sock: socket.socket, keepalive: KeepaliveConfig) -> None:
    """Turn TCP keepalive on for a socket opened by hand (redis-py's clients take :func:`keepalive_options`)."""
    for level, option, value in keepalive_socket_options(keepalive):
        sock.setsockopt(level, option, value)


@functools.cache
def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """An SSL context for connections opened by hand (the node subscriptions), built once and shared."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    context.check_hostname = tls.check_hostname
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _tls_client_arguments(tls: TlsConfig | None) -> dict[str, Any]:
    """The same settings as redis-py's connection arguments (``ssl`` itself aside: a rediss:// URL implies it)."""
    if tls is None:
        return {}
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_check_hostname": tls.check_hostname,
        "ssl_cert_reqs": "required",
    }


@dataclass(frozen=True)
class RedisOptions:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 2.0
    command_timeout: float = 2.0
    # None: plain connections (the URLs say redis://).
    tls: TlsConfig | None = None
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)

    @classmethod
    def for_stream(cls, stream: StreamConfig, *, keepalive: KeepaliveConfig) -> RedisOptions:
        """The options for a route's stream on another server: its own credentials and TLS settings."""
        uses_tls = urlsplit(stream.url or "").scheme == "rediss"
        return cls(
            username=stream.username,
            password=stream.password,
            tls=stream.tls if uses_tls else None,
            keepalive=keepalive,
        )

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisOptions:
        uses_tls = any(urlsplit(url).scheme == "rediss" for url in config.nodes)
        tls = config.tls if uses_tls else None
        return cls(
            username=config.username,
            password=config.password,
            connect_timeout=config.connect_timeout,
            command_timeout=config.watchdog_timeout,
            tls=tls,
            keepalive=config.keepalive,
        )

    def client(self, address: NodeAddress, *, timeout: float | None = None, pipelined: bool = False) -> aioredis.Redis:
        """A client for one node, whose commands fail after ``timeout`` instead of hanging.

        ``pipelined``: for a caller that sends pipelines. redis-py runs a pipeline on a
        connection from the client's pool, never on a single-connection client's own, so
        such a client would hold two connections; this one keeps its pool.
        """
        return aioredis.Redis(
            host=address.host,
            port=address.port,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=timeout or self.command_timeout,
            **self._keepalive_arguments(),
            single_connection_client=not pipelined,
            retry=_RECONNECT_ONCE,
            ssl=self.tls is not None,
            **_tls_client_arguments(self.tls),
        )

    def client_for_url(self, url: str) -> aioredis.Redis:
        return self.client(NodeAddress.from_url(url))

    def pooled_client(self, url: str) -> aioredis.Redis:
        """A client with a connection pool for a standalone server, the URL's database number included.

        For a route's stream on another server, where several lanes write at once.
        """
        return aioredis.Redis.from_url(
            url,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.command_timeout,
            **self._keepalive_arguments(),
            **_tls_client_arguments(self.tls),  # the rediss:// scheme picks the TLS connection
        )

    def cluster_client(self, seeds: list[NodeAddress]) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(seed.host, seed.port) for seed in seeds],
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.command_timeout,
            **self._keepalive_arguments(),
            ssl=self.tls is not None,
            **_tls_client_arguments(self.tls),
        )

    def _keepalive_arguments(self) -> dict[str, Any]:
        return {"socket_keepalive": True, "socket_keepalive_options": keepalive_options(self.keepalive)}


class NodeClients:
    """One pooled client per node, made on first use, for a part that sends pipelines to many nodes.

    A client that failed is dropped, so that the next use connects afresh::

        clients = NodeClients(options=options)
        await clients.get(node).pexpiretime(key)
        await clients.drop(node)      # after a failure
        await clients.aclose()        # every client
    """

    def __init__(self, *, options: RedisOptions) -> None:
        self._options = options
        self._clients: dict[NodeAddress, aioredis.Redis] = {}

    def get(self, node: NodeAddress) -> aioredis.Redis:
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = self._options.client(node, pipelined=True)
        return client

    def nodes(self) -> list[NodeAddress]:
        return list(self._clients)

    async def drop(self, node: NodeAddress) -> None:
        client = self._clients.pop(node, None)
        if client is not None:
            with contextlib.suppress(*REDIS_FAILURES):
                await client.aclose()

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
