"""Make sure a primary publishes ``expired`` keyevents.

``notify-keyspace-events`` is a per-node, runtime setting: a restarted node
comes back with whatever its config file says (often nothing), and a promoted
replica may never have had it. expiryd needs the ``E`` (keyevent) and ``x``
(expired) classes, ``g`` for the ``expire`` events that tell the schedule when
a key is due, and ``h`` (hash) when a route takes ``hexpired`` events. This
module reads the setting and, when asked to, adds what is missing while keeping
every class already set::

    status = await ensure_notifications(client, repair=True, required="Exg")
    status.ok          # True when E, x and g are on (now)
    status.missing     # "g" when only that class is off
    status.refused     # True when the server does not allow CONFIG

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

__all__ = [
    "EXPIRED_CLASSES",
    "SCHEDULE_CLASS",
    "NotificationStatus",
    "ensure_notifications",
    "merged_classes",
    "missing_classes",
    "required_classes",
]

# The classes for expired keyevents, and those the schedule adds (``expire`` is a generic command event).
EXPIRED_CLASSES = "Ex"
SCHEDULE_CLASS = "g"
# The classes that "A" stands for, in Redis and Valkey alike.
_ALL = frozenset("g$lshzxetd")


def required_classes(*, schedule: bool, kinds: Iterable[str] = ("expired",)) -> str:
    """The classes expiryd needs: expired keyevents, ``expire`` events for the schedule, ``h`` for hexpired."""
    return EXPIRED_CLASSES + (SCHEDULE_CLASS if schedule else "") + ("h" if "hexpired" in kinds else "")


@dataclass(frozen=True)
class NotificationStatus:
    before: str | None
    after: str | None
    required: str = EXPIRED_CLASSES
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.after is not None and not missing_classes(self.after, self.required)

    @property
    def missing(self) -> str:
        """The required classes known to be off, or all of them when the setting could not be read."""
        return self.required if self.after is None else missing_classes(self.after, self.required)

    @property
    def expired_missing(self) -> bool:
        """True when ``expired`` events themselves are off (or unknown): no events at all from this node."""
        return any(c in self.missing for c in EXPIRED_CLASSES)

    @property
    def repaired(self) -> bool:
        return self.ok and self.before != self.after


def missing_classes(current: str, required: str) -> str:
    """The classes of ``required`` that ``current`` lacks (``A`` stands for every class but ``K``, ``E``)."""
    return "".join(c for c in required if c not in current and not (c in _ALL and "A" in current))


def merged_classes(current: str, required: str = EXPIRED_CLASSES) -> str:
    """``current`` with the missing classes of ``required`` added."""
    return current + missing_classes(current, required)


async def ensure_notifications(
    client: aioredis.Redis, *, repair: bool, required: str = EXPIRED_CLASSES
) -> NotificationStatus:
    try:
        current = await _read(client)
    except (ResponseError, NoPermissionError):
        return NotificationStatus(before=None, after=None, required=required, refused=True)
    if not missing_classes(current, required) or not repair:
        return NotificationStatus(before=current, after=current, required=required)
    try:
        await client.config_set("notify-keyspace-events", merged_classes(current, required))
        after = await _read(client)
    except (ResponseError, NoPermissionError):
        return NotificationStatus(before=current, after=current, required=required, refused=True)
    return NotificationStatus(before=current, after=after, required=required)


async def _read(client: aioredis.Redis) -> str:
    reply = await client.config_get("notify-keyspace-events")
    value = next(iter(reply.values()), b"") if reply else b""
    return value.decode() if isinstance(value, bytes) else str(value)
