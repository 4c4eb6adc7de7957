"""The merged queue: every node subscription puts in, the leader gate takes out.

It is bounded by a count of expirations (not of batches) and by their
estimated bytes (:func:`expiryd.events.event_bytes`). When it is full, a
subscription may wait a little for room (:meth:`EventQueue.put_within`): while
it waits it does not read, and the burst waits in the kernel's socket buffer
and in Redis's output buffer for that client. That is safe only briefly: Redis
cuts off a subscriber whose buffer stays above 8 MB for 60 s (or passes 32 MB),
and then everything in that buffer is lost. So the wait is bounded, and what
still does not fit is refused and returned as a count, for the caller to count
and log.

Waiting puts are served first come, first served: room that :meth:`get` makes
goes to the oldest waiter, and a new put never overtakes one that waits. Were
room a free-for-all, the subscription that won it once would win it again
with its next read, and a busy node would starve the others until their wait
ran out.

    queue = EventQueue(capacity=100_000, max_bytes=64 << 20)
    refused = await queue.put_within(expirations, timeout=5.0)   # from a node subscription
    batch = await queue.get()                                    # in the leader gate
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from .events import Expiration, event_bytes

__all__ = ["EventQueue"]


class _Waiter:
    """A put_within waiting for room: what is left of its expirations, and when it began to wait."""

    __slots__ = ("remaining", "since", "served")

    def __init__(self, remaining: list[Expiration], since: float) -> None:
        self.remaining = remaining
        self.since = since
        self.served = asyncio.Event()


class EventQueue:
    def __init__(self, *, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[Expiration] = deque()
        self._ready = asyncio.Event()
        self._woken = False
        self._waiters: deque[_Waiter] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def blocked_for(self) -> float:
        """How long the longest-waiting :meth:`put_within` has waited for room (0 when none waits)."""
        if not self._waiters:
            return 0.0
        return asyncio.get_running_loop().time() - self._waiters[0].since

    def keys(self) -> set[bytes]:
        """The keys of every expiration queued or waiting for room."""
        keys = {expiration.key for expiration in self._items}
        for waiter in self._waiters:
            keys.update(expiration.key for expiration in waiter.remaining)
        return keys

    def oldest(self) -> float | None:
        """When the oldest expiration queued or waiting for room was received (epoch seconds); None if none is."""
        queued = self._items[0].received_at if self._items else None
        return min((at for at in (queued, self.oldest_waiting()) if at is not None), default=None)

    def oldest_waiting(self) -> float | None:
        """When the oldest expiration still waiting for room was received (epoch seconds); None if none waits."""
        return min((waiter.remaining[0].received_at for waiter in self._waiters if waiter.remaining), default=None)

    def put(self, expirations: list[Expiration]) -> int:
        """Append what fits; return how many expirations did not fit."""
        accepted = self._take_room(expirations)
        if accepted:
            self._ready.set()
        return len(expirations) - accepted

    def _take_room(self, expirations: list[Expiration]) -> int:
        """Append the first of ``expirations`` that fit, in order; return how many."""
        room = self.capacity - len(self._items)
        free = self.max_bytes - self.bytes
        taken = 0
        for expiration in expirations[: max(room, 0)]:
            size = event_bytes(expiration)
            if size > free:
                break
            free -= size
            taken += 1
        self._items.extend(expirations[:taken])
        self.bytes = self.max_bytes - free
        return taken

    async def put_within(self, expirations: list[Expiration], *, timeout: float) -> int:
        """Append all, waiting up to ``timeout`` for room; return how many still did not fit."""
        refused = self.put(expirations)
        if not refused:
            return 0
        waiter = _Waiter(expirations[len(expirations) - refused :], asyncio.get_running_loop().time())
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.served.wait(), timeout)
        finally:
            if not waiter.served.is_set():
                self._waiters.remove(waiter)
        return len(waiter.remaining)

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
        self.bytes -= sum(event_bytes(expiration) for expiration in batch)
        self._serve_waiters()
        return batch

    def _serve_waiters(self) -> None:
        """Hand the room there is to the waiting puts, oldest first.

        Done here, as the room is made, so that while any put waits the queue
        stays full and a later put finds no room to take.
        """
        while self._waiters:
            waiter = self._waiters[0]
            taken = self._take_room(waiter.remaining)
            if taken:
                self._ready.set()
                waiter.remaining = waiter.remaining[taken:]
            if waiter.remaining:
                return
            self._waiters.popleft()
            waiter.served.set()
