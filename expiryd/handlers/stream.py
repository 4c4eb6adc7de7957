"""The ``stream`` handler: ``XADD`` one entry per event to a Redis stream.

It is the durable hand-off for consumers that want their own consumer groups.
Each entry has the fields ``key`` (the raw key bytes), ``kind`` (``expired`` or
``hexpired``), ``node``, ``term``,
``replica``, ``received_at`` and, when the route fetches one and it existed,
``payload``. The stream is trimmed with ``MAXLEN ~``::

    handler = StreamHandler(client=cluster, name="expired:orders", maxlen=1_000_000, owns_client=False)
    await handler.handle(events)        # one round trip for the whole batch

Redis refusing a command (a stream key of another type, a missing ACL
permission) is a :class:`PermanentFailure`; a lost connection is retried.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from ..connections import describe_error
from ..events import Event
from .base import PermanentFailure

__all__ = ["StreamHandler"]


class StreamHandler:
    def __init__(self, *, client: Any, name: str, maxlen: int, owns_client: bool) -> None:
        self._client = client
        self._name = name
        self._maxlen = maxlen
        self._owns_client = owns_client

    async def handle(self, events: list[Event]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self._name, event.to_fields(), maxlen=self._maxlen, approximate=True)
        try:
            await pipe.execute()
        except ResponseError as error:
            raise PermanentFailure(describe_error(error)) from None

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
