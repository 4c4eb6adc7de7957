"""Writing keys whose expiration carries a payload: the application's side of a payload route."""

from __future__ import annotations

from typing import Any

from redis.crc import key_slot

from .payload import PAYLOAD_KEEP_FOR, PayloadKeys

__all__ = ["Companions"]

# The key's own value carries nothing: the data is in the companion.
_KEY_VALUE = b"1"

# One script rather than MULTI/EXEC: equally atomic, one round trip, and it works the same through
# redis-py 8.1's asyncio RedisCluster, whose transaction pipeline runs each queued command on a new
# event loop in a thread and fails with "Event loop is closed".
# The companion is written first, so that no moment exists where the key is there without it.
_SCHEDULE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""
_CANCEL = """
local existed = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[1])
return existed
"""


class Companions:
    """Writes a key that will expire together with the payload its expiration carries, and cancels both.

    A route with ``payload: "{key}:payload"`` hands its handler the value of the
    key's *companion* key, read after the key expired. That works only if the
    companion is there when the key expires: :meth:`schedule` writes both at
    once, the companion first and living ``keep_for`` seconds (a day) longer
    than the key, long enough for expiryd to deliver it or for its sweep to find
    it after an outage, and not forever if neither happens. The route's
    ``payload_keep_for`` must be the same: the sweep reads the key's due time
    from the companion's expire time, and delivers no key gone before it. :meth:`cancel`
    deletes both at once. Each is one Lua script, as atomic as a
    ``MULTI``/``EXEC``. Both keys must be in one hash slot: put the key's variable part in a hash tag (``order:{42}``, whose
    companion is ``order:{42}:payload``); a key whose companion would land in
    another slot is refused with a ValueError.

    An example of scheduling and cancelling an order's timeout:

        from redis.asyncio.cluster import RedisCluster
        from expiryd.companions import Companions

        cluster = RedisCluster(host="redis-0", port=6379)
        companions = Companions(client=cluster, template="{key}:payload")
        await companions.schedule("order:{42}", b'{"customer": 7}', ttl=900)  # fires in 15 minutes
        await companions.cancel("order:{42}")                                  # True: it had not fired

    ``client`` is a ``redis.asyncio`` client: a ``RedisCluster``, or a plain
    ``Redis`` for a single server, where the slot check applies all the same so
    that what works there keeps working on a cluster. ``template`` must be the
    route's ``payload`` setting.
    """

    def __init__(self, *, client: Any, template: str = "{key}:payload", keep_for: float = PAYLOAD_KEEP_FOR) -> None:
        if "{key}" not in template:
            raise ValueError(f"template {template!r} has no {{key}}: it would name one companion for every key")
        if keep_for <= 0:
            raise ValueError("keep_for must be positive: the companion has to outlive its key")
        self._client = client
        self._payloads = PayloadKeys(template=template, client=client, keep_for=keep_for)
        self._keep_for_ms = self._payloads.keep_for_ms

    def companion_of(self, key: bytes | str) -> bytes:
        """The companion's name; ValueError if it is not in ``key``'s hash slot."""
        raw = _raw(key)
        companion = self._payloads.key_for(raw)
        if key_slot(raw) != key_slot(companion):
            raise ValueError(
                f"the companion {companion!r} of {raw!r} is in hash slot {key_slot(companion)}, the key in "
                f"{key_slot(raw)}: one script cannot write both. Put the key's variable part in a hash tag "
                f"(order:{{42}} rather than order:42) and keep braces out of the template's own text"
            )
        return companion

    async def schedule(self, key: bytes | str, payload: bytes | str, *, ttl: float) -> None:
        """Write ``payload`` to the companion and make ``key`` expire in ``ttl`` seconds, atomically.

        Writing an existing key again replaces its payload and restarts its TTL.
        """
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        raw = _raw(key)
        companion = self.companion_of(raw)
        ttl_ms = _milliseconds(ttl)
        await self._client.eval(_SCHEDULE, 2, companion, raw, payload, ttl_ms + self._keep_for_ms, _KEY_VALUE, ttl_ms)

    async def cancel(self, key: bytes | str) -> bool:
        """Delete ``key`` and its companion together; True if the key still existed (had not expired)."""
        raw = _raw(key)
        companion = self.companion_of(raw)
        return bool(await self._client.eval(_CANCEL, 2, companion, raw))


def _raw(key: bytes | str) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
