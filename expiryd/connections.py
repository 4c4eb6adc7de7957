"""How expiryd reaches Redis: addresses, credentials and timeouts in one place.

Every connection expiryd opens (topology reads, node subscriptions, watchdog
PINGs, the election) is made from one :class:`RedisOptions`, so credentials and
timeouts are applied the same way everywhere::

    options = RedisOptions.from_config(config.redis)
    client = options.client(NodeAddress("127.0.0.1", 7000))
    await client.ping()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .config import RedisConfig

__all__ = ["REDIS_FAILURES", "NodeAddress", "RedisOptions", "describe_redis_error"]

# What a call to Redis raises when the server is down, slow or refuses:
# redis-py's cluster client raises RedisClusterException, which is not a RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)


def describe_redis_error(error: BaseException) -> str:
    """``"NoPermissionError: this user has no permissions to run the 'eval' command"``, for a log line.

    pottery wraps what each master raised in one error of its own; the first
    of those says more than the wrapper. Redis's messages name the command or
    key refused, never a credential.
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


@dataclass(frozen=True)
class RedisOptions:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 2.0
    command_timeout: float = 2.0

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisOptions:
        return cls(
            username=config.username,
            password=config.password,
            connect_timeout=config.connect_timeout,
            command_timeout=config.watchdog_timeout,
        )

    def client(self, address: NodeAddress, *, timeout: float | None = None) -> aioredis.Redis:
        """A client for one node, whose commands fail after ``timeout`` instead of hanging."""
        return aioredis.Redis(
            host=address.host,
            port=address.port,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=timeout or self.command_timeout,
            retry_on_timeout=False,
            single_connection_client=True,
        )

    def client_for_url(self, url: str) -> aioredis.Redis:
        return self.client(NodeAddress.from_url(url))

    def cluster_client(self, seeds: list[NodeAddress]) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(seed.host, seed.port) for seed in seeds],
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.command_timeout,
        )
