"""The merged queue: every node subscription puts in, the leader gate takes out.

It is bounded by a count of expirations, not of batches. When it is full, a
subscription may wait a little for room (:meth:`EventQueue.put_within`): while
it waits it does not read, and the burst waits in the kernel's socket buffer
and in Redis's output buffer for that client. That is safe only briefly: Redis
cuts off a subscriber whose buffer stays above 8 MB for 60 s (or passes 32 MB),
and then everything in that buffer is lost. So the wait is bounded, and what
still does not fit is refused and returned as a count, for the caller to count
and log.

    queue = EventQueue(capacity=100_000)
    refused = await queue.put_within(expirations, timeout=5.0)   # from a node subscription
    batch = await queue.get()                                    # in the leader gate
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
        self._room = asyncio.Event()
        self._woken = False
        self._waiting_since: list[float] = []

    def __len__(self) -> int:
        return len(self._items)

    def blocked_for(self) -> float:
        """How long the longest-waiting :meth:`put_within` has waited for room (0 when none waits)."""
        if not self._waiting_since:
            return 0.0
        return asyncio.get_running_loop().time() - min(self._waiting_since)

    def put(self, expirations: list[Expiration]) -> int:
        """Append what fits; return how many expirations did not fit."""
        room = self.capacity - len(self._items)
        accepted = expirations if len(expirations) <= room else expirations[:max(room, 0)]
        self._items.extend(accepted)
        if accepted:
            self._ready.set()
        return len(expirations) - len(accepted)

    async def put_within(self, expirations: list[Expiration], *, timeout: float) -> int:
        """Append all, waiting up to ``timeout`` for room; return how many still did not fit."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused = self.put(expirations)
        if not refused:
            return 0
        self._waiting_since.append(started)
        try:
            while refused:
                remaining = expirations[len(expirations) - refused:]
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), started + timeout - loop.time())
                except TimeoutError:
                    return self.put(remaining)
                expirations = remaining
                refused = self.put(remaining)
            return 0
        finally:
            self._waiting_since.remove(started)

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
        batch = [self._items.popleft() for _ in range(count)]
        if batch:
            self._room.set()
        return batch
