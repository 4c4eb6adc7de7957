"""Make sure a primary publishes ``expired`` keyevents.

``notify-keyspace-events`` is a per-node, runtime setting: a restarted node
comes back with whatever its config file says (often nothing), and a promoted
replica may never have had it. expiryd needs the ``E`` (keyevent) and ``x``
(expired) classes, and ``h`` (hash) too when a route takes ``hexpired``
events. This module reads the setting and, when asked to, adds what is missing
while keeping every class already set::

    status = await ensure_notifications(client, repair=True)
    status.ok          # True when E and x are on (now)
    status.refused     # True when the server does not allow CONFIG
    await ensure_notifications(client, repair=True, required="Exh")   # hexpired too

``h`` makes the server publish every hash command's keyevent (hset, hdel...),
not only ``hexpired``; nobody subscribes to those channels, but publishing
them costs the server a little on every hash write, so it is asked for only
when a route needs it.

Managed Redis services often refuse ``CONFIG``; that is reported, not raised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

__all__ = ["NotificationStatus", "ensure_notifications", "merged_classes", "required_classes"]

REQUIRED = "Ex"


# "A" is an alias for these classes (not for E or K).
_ALL = "g$lshzxetd"


@dataclass(frozen=True)
class NotificationStatus:
    before: str | None
    after: str | None
    refused: bool = False
    required: str = REQUIRED

    @property
    def ok(self) -> bool:
        return self.after is not None and _has_required(self.after, self.required)

    @property
    def repaired(self) -> bool:
        return self.ok and self.before != self.after


def required_classes(kinds: Iterable[str]) -> str:
    """The classes the keyevents in ``kinds`` need: ``Ex`` for expired, plus ``h`` for hexpired."""
    return REQUIRED + ("h" if "hexpired" in kinds else "")


def merged_classes(current: str, required: str = REQUIRED) -> str:
    """``current`` with each class of ``required`` added where missing (``A`` already implies ``x`` and ``h``)."""
    merged = current
    for wanted in required:
        if not _has_class(merged, wanted):
            merged += wanted
    return merged


async def ensure_notifications(client: aioredis.Redis, *, repair: bool, required: str = REQUIRED) -> NotificationStatus:
    try:
        current = await _read(client)
    except (ResponseError, NoPermissionError):
        return NotificationStatus(before=None, after=None, refused=True, required=required)
    if _has_required(current, required) or not repair:
        return NotificationStatus(before=current, after=current, required=required)
    try:
        await client.config_set("notify-keyspace-events", merged_classes(current, required))
        after = await _read(client)
    except (ResponseError, NoPermissionError):
        return NotificationStatus(before=current, after=current, refused=True, required=required)
    return NotificationStatus(before=current, after=after, required=required)


async def _read(client: aioredis.Redis) -> str:
    reply = await client.config_get("notify-keyspace-events")
    value = next(iter(reply.values()), b"") if reply else b""
    return value.decode() if isinstance(value, bytes) else str(value)


def _has_required(classes: str, required: str) -> bool:
    return all(_has_class(classes, wanted) for wanted in required)


def _has_class(classes: str, wanted: str) -> bool:
    return wanted in classes or (wanted in _ALL and "A" in classes)
