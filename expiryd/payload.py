"""Payload after expiry: read an expired key's data from its companion key.

An expired key's value is gone by the time Redis announces it. The "shadow
key" pattern keeps the data in a second key without a TTL (or a much longer
one), named from the first by a template. The leader reads it before calling
the handler and deletes it only after the handler succeeded::

    payloads = PayloadKeys(template="{key}:payload", client=cluster)
    payloads.key_for(b"order:{42}")              # b"order:{42}:payload", same hash slot
    values = await payloads.fetch([b"order:{42}"])   # [b'{"amount": 12}'] or [None]
    await payloads.delete([b"order:{42}"])

The key is substituted as raw bytes, once: a key that itself contains
``{key}``, glob characters or invalid UTF-8 names exactly one companion key.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from .connections import describe_error
from .errors import PermanentFailure

__all__ = ["PAYLOAD_KEEP_FOR", "PayloadKeys"]

#: How much longer than its key a companion lives by default (a day): long enough for a delivery
#: or a sweep after an outage, not forever if neither comes.
PAYLOAD_KEEP_FOR = 86400.0


class PayloadKeys:
    def __init__(self, *, template: str, client: Any, keep_for: float = PAYLOAD_KEEP_FOR) -> None:
        self._parts = template.encode("utf-8").split(b"{key}")
        self._client = client
        #: How much longer than its key a companion lives: its expire time less this is the key's due time.
        self.keep_for_ms = max(1, round(keep_for * 1000))

    def key_for(self, key: bytes) -> bytes:
        return key.join(self._parts)

    @property
    def parts(self) -> tuple[bytes, ...]:
        """The template's literal text around each ``{key}``: ``(b"", b":payload")`` for ``{key}:payload``."""
        return tuple(self._parts)

    def key_of(self, companion: bytes) -> bytes | None:
        """The key whose companion is named ``companion``, or None when the name does not fit the template."""
        parts = self._parts
        slots = len(parts) - 1
        fixed = sum(len(part) for part in parts)
        if slots == 0 or len(companion) < fixed or (len(companion) - fixed) % slots:
            return None
        start = len(parts[0])
        key = companion[start : start + (len(companion) - fixed) // slots]
        return key if key.join(parts) == companion else None

    async def fetch(self, keys: list[bytes]) -> list[bytes | None]:
        """Each key's payload, or None where its companion key does not exist."""
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(self.key_for(key))
        try:
            return list(await pipe.execute())
        except ResponseError as error:
            # A companion key of another type, or no permission: retrying cannot help.
            raise PermanentFailure(f"payload: {describe_error(error)}") from None

    async def delete(self, keys: list[bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            # The cluster pipeline's own unlink() is a coroutine (for keys across slots): queue the command.
            pipe.execute_command("UNLINK", self.key_for(key))
        await pipe.execute()
