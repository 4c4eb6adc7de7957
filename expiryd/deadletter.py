"""The dead-letter stream: where events go that a handler could not finish.

After a route's last attempt, or at once on a permanent failure, each event of
the batch becomes one entry of a Redis stream on the cluster, trimmed with
``MAXLEN ~``. An entry holds the event's stream fields (``key`` as raw bytes,
``node``, ``term``, ``replica``, ``received_at``, ``payload`` when fetched)
and why it is there: ``route``, ``error`` and ``attempts``::

    dead_letters = DeadLetters(client=cluster, stream="{expiryd}:dead-letter", maxlen=100_000)
    await dead_letters.write(route="orders", events=events, error="HTTP 400", attempts=1)

Inspect them with ``XRANGE {expiryd}:dead-letter - +``; re-drive them by
reading entries and calling the receiver yourself.
"""

from __future__ import annotations

from typing import Any

from .events import Event

__all__ = ["DeadLetters"]

_MAX_ERROR_LENGTH = 1000


class DeadLetters:
    def __init__(self, *, client: Any, stream: str, maxlen: int) -> None:
        self.stream = stream
        self._client = client
        self._maxlen = maxlen

    async def write(self, *, route: str, events: list[Event], error: str, attempts: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for event in events:
            fields = {**event.to_fields(), "route": route, "error": error[:_MAX_ERROR_LENGTH],
                      "attempts": str(attempts)}
            pipe.xadd(self.stream, fields, maxlen=self._maxlen, approximate=True)
        await pipe.execute()
