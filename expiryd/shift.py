"""A shift: one leadership term's work, from taking over to stepping down.

When this replica becomes leader for a term, the leader gate opens a :class:`Shift`: a
:class:`~expiryd.completion.Completion` that follows which of the term's expirations are
finished, and a :class:`~expiryd.delivery.RouteDelivery` per route. The shift first replays
what the last leader left unfinished (:meth:`Shift.take_over`), then takes the queue's batches
(:meth:`Shift.process`) and the sweep's finds (:meth:`Shift.submit_swept`). When the term ends,
:meth:`Shift.retire` closes the completion and leaves the deliveries' queued events to the next
leader; on shutdown, :meth:`Shift.aclose` lets the deliveries finish within the grace period::

    shift = Shift(term=8, router=router, settings=settings)
    await shift.take_over(pending, marks=last_leaders_marks)
    await shift.process(batch)
    marks, closing = shift.retire()     # the marks the next term of this replica starts from
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from .completion import Completion, Pending
from .deadletter import DeadLetters
from .delivery import RouteDelivery
from .events import Expiration
from .leadership import Leadership
from .metrics import Metrics
from .progress import ProgressMark
from .routing import Route, Router

__all__ = ["Shift", "ShiftSettings"]

# Replayed events go to the routes in chunks of this size, as if read from the queue.
_REPLAY_CHUNK = 1024


@dataclass(frozen=True)
class ShiftSettings:
    """What every shift of one replica shares: who it is, its routes' collaborators, and its limits."""

    replica: str
    router: Router
    leadership: Leadership
    dead_letters: DeadLetters
    metrics: Metrics
    #: How long the merged queue's writers have waited for room: deliveries shed only while they wait.
    upstream_blocked: Callable[[], float]
    overflow_wait: float
    grace: float
    now: Callable[[], float]
    #: expiryd's own keys (the lease, the term, ...): their expirations finish without a handler.
    internal_keys: frozenset[bytes]


class Shift:
    def __init__(self, *, term: int, marks: dict[str, ProgressMark], settings: ShiftSettings) -> None:
        self.term = term
        self.completion = Completion(term=term, marks=marks)
        self._settings = settings
        self._deliveries = {
            route: RouteDelivery(
                route=route,
                term=term,
                replica=settings.replica,
                leadership=settings.leadership,
                completion=self.completion,
                dead_letters=settings.dead_letters,
                metrics=settings.metrics,
                upstream_blocked=settings.upstream_blocked,
                shed_after=settings.overflow_wait / 2,
                grace=settings.grace,
                now=settings.now,
            )
            for route in settings.router.routes
        }
        for delivery in self._deliveries.values():
            delivery.start()
        # What the takeover has still to hand to the routes.
        self._replaying: list[Expiration] = []
        # The newest receive time taken into the completion: everything received before it has been seen.
        self.taken_through = 0.0
        # The oldest receive time of the batch being taken in, until all of it is in the completion.
        self.in_hand: float | None = None

    @property
    def replaying(self) -> bool:
        """Whether the takeover is still handing the last leader's unfinished events to the routes."""
        return bool(self._replaying)

    async def take_over(self, pending: list[Expiration], *, marks: dict[str, ProgressMark]) -> None:
        """Start from the last leader's ``marks`` and hand ``pending`` (what it left unfinished) to the routes."""
        self.completion.start_from(marks)
        self._replaying = pending
        for start in range(0, len(pending), _REPLAY_CHUNK):
            await self._route(pending[start : start + _REPLAY_CHUNK])
        self._replaying = []

    async def process(self, batch: list[Expiration]) -> None:
        """Route a batch taken from the merged queue; return once each event is in its route's delivery."""
        if not batch:
            return
        self.in_hand = min(expiration.received_at for expiration in batch)
        try:
            await self._route(batch)
        finally:
            self.in_hand = None
        self.taken_through = max(self.taken_through, batch[-1].received_at)

    async def submit_swept(self, route: Route, expirations: list[Expiration]) -> None:
        await self._deliveries[route].submit([self.completion.add(expiration) for expiration in expirations])

    def keys_in_flight(self) -> set[bytes]:
        """The keys of the takeover's events and of every unfinished one."""
        return {expiration.key for expiration in self._replaying} | self.completion.keys()

    def retire(self) -> tuple[dict[str, ProgressMark], asyncio.Task[None]]:
        """End the term: stop moving marks, leave the queued events to the next leader.

        Returns the marks reached, and the task that gives the calls in flight the grace period.
        """
        marks = self.completion.close()
        for delivery in self._deliveries.values():
            delivery.abandon()
        return marks, asyncio.create_task(self.aclose(), name=f"term {self.term} step-down")

    async def aclose(self) -> None:
        """Let the deliveries finish what they hold within the grace period."""
        await asyncio.gather(*(delivery.aclose() for delivery in self._deliveries.values()))

    async def _route(self, batch: list[Expiration]) -> None:
        completion = self.completion
        by_route: dict[Route, list[Pending]] = {}
        settled: list[Pending] = []
        unrouted = 0
        for expiration in batch:
            pending = completion.add(expiration)
            if expiration.key in self._settings.internal_keys:
                settled.append(pending)
                continue
            route = self._settings.router.match(expiration.key, expiration.kind)
            if route is None:
                unrouted += 1
                settled.append(pending)
            else:
                by_route.setdefault(route, []).append(pending)
        if unrouted:
            self._settings.metrics.events_unrouted.inc(unrouted)
        if settled:
            completion.finish(settled)
        for route, pendings in by_route.items():
            await self._deliveries[route].submit(pendings)
