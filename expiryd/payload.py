"""Payload after expiry: read an expired key's data from its companion key.

An expired key's value is gone by the time Redis announces it. The "shadow
key" pattern keeps the data in a second key without a TTL (or a much longer
one), named from the first by a template. The leader reads it before calling
the handler and deletes it only after the handler succeeded::

    payloads = PayloadKeys(template="{key}:payload", client=cluster, max_bytes=4 << 20, batch_bytes=16 << 20)
    payloads.key_for(b"order:{42}")              # b"order:{42}:payload", same hash slot
    values = await payloads.fetch([b"order:{42}"])   # [b'{"amount": 12}'] or [None]
    await payloads.delete([b"order:{42}"])

The key is substituted as raw bytes, once: a key that itself contains
``{key}``, glob characters or invalid UTF-8 names exactly one companion key.

**Bounds.** :meth:`PayloadKeys.fetch` reads the companions' lengths first
(``STRLEN``), then only what fits: a companion longer than ``max_bytes`` comes
back as :class:`Oversized` and is not read, and reading stops before the
payloads of one call pass ``batch_bytes`` (the caller hands the rest over in
another call). A leader never holds a batch of huge payloads, nor does each
successor that replays it. An oversized companion is set aside
(:meth:`PayloadKeys.set_aside`) under a name the sweep does not take for a
companion, in its hash slot, and the dead-letter entry refers to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ResponseError

from .connections import describe_error
from .errors import PermanentFailure

__all__ = ["PAYLOAD_KEEP_FOR", "SET_ASIDE_PREFIX", "Oversized", "PayloadKeys"]

#: How much longer than its key a companion lives by default (a day): long enough for a delivery
#: or a sweep after an outage, not forever if neither comes.
PAYLOAD_KEEP_FOR = 86400.0

#: Companions too large to copy are renamed under this prefix (in their hash slot), out of the sweep's way.
SET_ASIDE_PREFIX = b"expiryd:oversized:"


@dataclass(frozen=True)
class Oversized:
    """A companion longer than ``max_bytes``: not read."""

    size: int


class PayloadKeys:
    def __init__(
        self,
        *,
        template: str,
        client: Any,
        keep_for: float = PAYLOAD_KEEP_FOR,
        max_bytes: int = 4 << 20,
        batch_bytes: int = 16 << 20,
    ) -> None:
        self._parts = template.encode("utf-8").split(b"{key}")
        self._client = client
        self.max_bytes = max_bytes
        self.batch_bytes = batch_bytes
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

    async def fetch(self, keys: list[bytes], *, whole: bool = False) -> list[bytes | None | Oversized]:
        """The payloads of the longest run of ``keys`` whose payloads fit ``batch_bytes`` (one at least).

        Each is the companion's value, None where it does not exist, or :class:`Oversized`. The list
        is shorter than ``keys`` when the rest did not fit, unless ``whole``.
        """
        sizes = await self._execute([("STRLEN", self.key_for(key)) for key in keys])
        taken: list[int | Oversized] = []
        total = 0
        for size in sizes:
            if size > self.max_bytes:
                taken.append(Oversized(size))
                continue
            if taken and total + size > self.batch_bytes and not whole:
                break
            total += size
            taken.append(size)
        read = [key for key, size in zip(keys, taken, strict=False) if not isinstance(size, Oversized)]
        values = iter(await self._execute([("GET", self.key_for(key)) for key in read]) if read else [])
        return [size if isinstance(size, Oversized) else next(values) for size in taken]

    async def set_aside(self, key: bytes) -> bytes | None:
        """Rename ``key``'s companion out of the sweep's way, in its hash slot; its new name, or None if left."""
        companion = self.key_for(key)
        base = _aside_name(companion)
        # Never a name the template could have made: the sweep would take it for an orphan's companion.
        # A template's fixed end cannot end in both "~" and "!".
        names = [] if base is None else [base, base + b"~", base + b"!"]
        aside = next((name for name in names if self.key_of(name) is None), None)
        if aside is None:
            return None
        try:
            await self._execute([("RENAME", companion, aside)])
        except PermanentFailure:
            return None  # gone meanwhile, or renaming refused
        return aside

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
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


def _aside_name(companion: bytes) -> bytes | None:
    """``expiryd:oversized:`` and a hash tag that keeps ``companion``'s slot; None if no such name exists."""
    start = companion.find(b"{")
    end = companion.find(b"}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        tag = companion[start + 1 : end]  # the companion's own hash tag
        name = SET_ASIDE_PREFIX + b"{" + tag + b"}:" + companion
    else:
        name = SET_ASIDE_PREFIX + b"{" + companion + b"}"
    return name if key_slot(name) == key_slot(companion) else None
