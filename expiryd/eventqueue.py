"""The merged queue: every node subscription puts in, the leader gate takes out.

It is bounded by a count of expirations, not of batches. A subscription must
never wait on it: a reader that stops reading lets Redis's output buffer fill
until the server cuts the subscriber off and everything in that buffer is lost.
So :meth:`EventQueue.put` never blocks. When the queue is full it takes what
fits and returns how many it had to refuse, for the caller to count and log.

    queue = EventQueue(capacity=100_000)
    refused = queue.put(expirations)       # from a node subscription
    batch = await queue.get()              # in the leader gate: all that is waiting
"""

from __future__ import annotations

import asyncio
from collections import deque

from .events import Expiration

__all__ = ["EventQueue"]


class EventQueue:
    def __init__(self, *, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Expiration] = deque()
        self._ready = asyncio.Event()
        self._woken = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, expirations: list[Expiration]) -> int:
        """Append what fits; return how many expirations did not fit."""
        room = self.capacity - len(self._items)
        accepted = expirations if len(expirations) <= room else expirations[:max(room, 0)]
        self._items.extend(accepted)
        if accepted:
            self._ready.set()
        return len(expirations) - len(accepted)

    def wake(self) -> None:
        """Make a waiting :meth:`get` return, with an empty batch if nothing is queued."""
        self._woken = True
        self._ready.set()

    async def get(self, *, limit: int = 1024) -> list[Expiration]:
        """Wait for at least one expiration, or for :meth:`wake`; return up to ``limit``, oldest first."""
        while not self._items and not self._woken:
            self._ready.clear()
            await self._ready.wait()
        self._woken = False
        count = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(count)]
