"""The leader gate: events leave the merged queue, and only the leader hands them on.

The :class:`Dispatcher` takes batches from the merged queue. While this
replica leads, it stamps each expiration with the current term, routes it and
hands it to the route's handler; while it follows, it counts the batch as
skipped and lets it go. The term is read again before every handler call, so a
leader that loses its lease mid-batch stops at the next route::

    dispatcher = Dispatcher(queue=queue, leadership=elector, router=router, replica="1", metrics=metrics)
    dispatcher.start()
    ...
    await dispatcher.stop(grace=10.0)    # finish the batch in hand, then stop
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from .eventqueue import EventQueue
from .events import Event, Expiration
from .metrics import Metrics
from .routing import Route, Router

__all__ = ["Dispatcher", "Leadership"]

log = logging.getLogger("expiryd.dispatch")


class Leadership(Protocol):
    def term(self) -> int | None: ...


class Dispatcher:
    def __init__(
        self,
        *,
        queue: EventQueue,
        leadership: Leadership,
        router: Router,
        replica: str,
        metrics: Metrics,
    ) -> None:
        self._queue = queue
        self._leadership = leadership
        self._router = router
        self._replica = replica
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self, *, grace: float) -> None:
        """Take no new batch; give the batch in hand up to ``grace`` seconds to finish."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        if not self._busy:
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            log.warning("shutdown grace period over: abandoning the batch in hand", extra={"grace": grace})
            task.cancel()
        except asyncio.CancelledError:
            pass
        await asyncio.gather(task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            batch = await self._queue.get()
            self._metrics.queue_depth.set(len(self._queue))
            self._busy = True
            try:
                await self._dispatch(batch)
            finally:
                self._busy = False

    async def _dispatch(self, batch: list[Expiration]) -> None:
        if self._leadership.term() is None:
            self._metrics.events_skipped.inc(len(batch))
            return
        by_route: dict[Route, list[Expiration]] = {}
        unrouted = 0
        for expiration in batch:
            route = self._router.match(expiration.key)
            if route is None:
                unrouted += 1
            else:
                by_route.setdefault(route, []).append(expiration)
        if unrouted:
            self._metrics.events_unrouted.inc(unrouted)
        for route, expirations in by_route.items():
            term = self._leadership.term()
            if term is None:
                self._metrics.events_skipped.inc(len(expirations))
                continue
            events = [Event(e.key, e.node, e.received_at, term, self._replica) for e in expirations]
            await self._handle(route, events)

    async def _handle(self, route: Route, events: list[Event]) -> None:
        started = time.perf_counter()
        try:
            await route.handler.handle(events)
        except Exception:
            log.exception("handler failed", extra={"route": route.name, "events": len(events)})
            self._metrics.events_processed.labels(route=route.name, outcome="error").inc(len(events))
            return
        finally:
            self._metrics.event_handle_seconds.labels(route=route.name).observe(time.perf_counter() - started)
        self._metrics.events_processed.labels(route=route.name, outcome="ok").inc(len(events))
