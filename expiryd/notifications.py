"""Make sure a primary publishes ``expired`` keyevents.

``notify-keyspace-events`` is a per-node, runtime setting: a restarted node
comes back with whatever its config file says (often nothing), and a promoted
replica may never have had it. expiryd needs the ``E`` (keyevent) and ``x``
(expired) classes. This module reads the setting and, when asked to, adds what
is missing while keeping every class already set::

    status = await ensure_notifications(client, repair=True)
    status.ok          # True when E and x are on (now)
    status.refused     # True when the server does not allow CONFIG

Managed Redis services often refuse ``CONFIG``; that is reported, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

__all__ = ["NotificationStatus", "ensure_notifications", "merged_classes"]

REQUIRED = "Ex"


@dataclass(frozen=True)
class NotificationStatus:
    before: str | None
    after: str | None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.after is not None and _has_required(self.after)

    @property
    def repaired(self) -> bool:
        return self.ok and self.before != self.after


def merged_classes(current: str) -> str:
    """``current`` with ``E`` and ``x`` added where missing (``A`` already implies ``x``)."""
    merged = current
    if "E" not in merged:
        merged += "E"
    if "x" not in merged and "A" not in merged:
        merged += "x"
    return merged


async def ensure_notifications(client: aioredis.Redis, *, repair: bool) -> NotificationStatus:
    try:
        current = await _read(client)
    except (ResponseError, NoPermissionError):
        return NotificationStatus(before=None, after=None, refused=True)
    if _has_required(current) or not repair:
        return NotificationStatus(before=current, after=current)
    try:
        await client.config_set("notify-keyspace-events", merged_classes(current))
        after = await _read(client)
    except (ResponseError, NoPermissionError):
        return NotificationStatus(before=current, after=current, refused=True)
    return NotificationStatus(before=current, after=after)


async def _read(client: aioredis.Redis) -> str:
    reply = await client.config_get("notify-keyspace-events")
    value = next(iter(reply.values()), b"") if reply else b""
    return value.decode() if isinstance(value, bytes) else str(value)


def _has_required(classes: str) -> bool:
    return "E" in classes and ("x" in classes or "A" in classes)
