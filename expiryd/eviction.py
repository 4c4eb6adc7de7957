"""Whether a node may evict keys: an evicted key publishes ``evicted``, never ``expired``.

Redis and Valkey evict only once ``maxmemory`` is set and reached, and then pick by
``maxmemory-policy``: a ``volatile-*`` policy among keys with a TTL, which every key a route
serves has; an ``allkeys-*`` policy among all keys, expiryd's own records included (the term, the
progress marks, the coverage reports, payload companions). Either way the evicted key's expiration
never comes::

    policy = await read_eviction_policy(client)    # None when the node refuses CONFIG
    if policy is not None and policy.risk is not None:
        print(f"{policy.name} with maxmemory {policy.maxmemory}: may evict {policy.risk}")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

__all__ = ["EvictionPolicy", "read_eviction_policy"]


@dataclass(frozen=True)
class EvictionPolicy:
    """A node's ``maxmemory-policy`` and ``maxmemory`` (bytes; 0 is no limit)."""

    name: str
    maxmemory: int

    @property
    def risk(self) -> str | None:
        """What the node may evict, in words; None when it evicts nothing."""
        if self.maxmemory == 0 or self.name == "noeviction":
            return None
        if self.name.startswith("volatile-"):
            return "keys with a TTL: a routed key evicted is lost, not expired"
        return "any key: a routed key evicted is lost, not expired, and so may be expiryd's term and progress"


async def read_eviction_policy(client: Any) -> EvictionPolicy | None:
    """The node's policy, or None when CONFIG is refused (an ACL without ``+config|get``)."""
    try:
        reply = await client.config_get("maxmemory*")
    except (ResponseError, NoPermissionError):
        return None
    settings = {_text(name): _text(value) for name, value in reply.items()}
    return EvictionPolicy(
        name=settings.get("maxmemory-policy", "noeviction"), maxmemory=int(settings.get("maxmemory", "0") or 0)
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
