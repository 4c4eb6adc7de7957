"""Lanes: a route's events split by key into bounded queues, taken out in batches.

The events of one key always go to the same lane, so they reach the handler
one batch after another, in the order they arrived. Each lane holds at most its
share of the route's ``queue_size``::

    lanes = Lanes(count=4, queue_size=10_000, upstream_blocked=queue.blocked_for, shed_after=2.5)
    shed = await lanes.submit(pendings)    # waits for room; returns what had to be shed
    batch = await lanes.take(0, size=100, max_wait=0.05)    # [] once closed and empty

**Backpressure.** When a lane is full, :meth:`Lanes.submit` waits, which holds
back the leader gate, and the merged queue behind it absorbs the burst. Only
when a node subscription has waited for room in the merged queue for
``shed_after`` (half the time it may wait before it drops for every route), so
that the gate is truly stuck behind this route, does the lane shed what does
not fit, and :meth:`Lanes.submit` returns it for the caller to count. So a
burst is absorbed whole as long as the handlers make room for each read within
``shed_after``, and one stuck route cannot make the others lose events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from .completion import Pending

__all__ = ["Lanes"]

# How often a full lane looks again at the merged queue, to decide whether to shed.
_UPSTREAM_CHECK_INTERVAL = 0.1


class _Lane:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[Pending] = deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()


class Lanes:
    def __init__(
        self, *, count: int, queue_size: int, upstream_blocked: Callable[[], float], shed_after: float
    ) -> None:
        share = -(-queue_size // count)
        self._lanes = [_Lane(share) for _ in range(count)]
        self._upstream_blocked = upstream_blocked
        self._shed_after = shed_after
        self._closed = False

    def __len__(self) -> int:
        return len(self._lanes)

    def depth(self) -> int:
        """Events queued in every lane."""
        return sum(len(lane.items) for lane in self._lanes)

    async def submit(self, pendings: list[Pending]) -> list[Pending]:
        """Queue events for their lanes, in order, waiting for room; return those shed."""
        if len(self._lanes) == 1:
            return await self._admit(self._lanes[0], pendings)
        by_lane: dict[int, list[Pending]] = {}
        for pending in pendings:
            by_lane.setdefault(hash(pending.expiration.key) % len(self._lanes), []).append(pending)
        shed: list[Pending] = []
        for index, group in by_lane.items():
            shed += await self._admit(self._lanes[index], group)
        return shed

    async def take(self, index: int, *, size: int, max_wait: float) -> list[Pending]:
        """Lane ``index``'s next batch: up to ``size`` events, waiting up to ``max_wait`` for it to fill.

        Empty only when the lanes are closed and this one has nothing left.
        """
        lane = self._lanes[index]
        while not lane.items:
            if self._closed:
                return []
            lane.ready.clear()
            await lane.ready.wait()
        if max_wait > 0 and len(lane.items) < size:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_wait
            while len(lane.items) < size and not self._closed and (left := deadline - loop.time()) > 0:
                lane.ready.clear()
                try:
                    await asyncio.wait_for(lane.ready.wait(), left)
                except TimeoutError:
                    break
        batch = [lane.items.popleft() for _ in range(min(size, len(lane.items)))]
        lane.room.set()
        return batch

    def close(self) -> None:
        """Take no more events; :meth:`take` returns what is queued, then nothing."""
        self._closed = True
        for lane in self._lanes:
            lane.ready.set()

    def clear(self) -> None:
        """Close, and forget what is queued."""
        self.close()
        for lane in self._lanes:
            lane.items.clear()
            lane.room.set()

    async def _admit(self, lane: _Lane, group: list[Pending]) -> list[Pending]:
        start = 0
        while start < len(group):
            room = lane.capacity - len(lane.items)
            if room > 0:
                accepted = group[start : start + room]
                lane.items.extend(accepted)
                lane.ready.set()
                start += len(accepted)
                continue
            if self._upstream_blocked() >= self._shed_after:
                return group[start:]
            lane.room.clear()
            with contextlib.suppress(TimeoutError):
                # Wake now and then to look at the merged queue again.
                await asyncio.wait_for(lane.room.wait(), _UPSTREAM_CHECK_INTERVAL)
        return []
