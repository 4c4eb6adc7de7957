"""The leader gate: events leave the merged queue, and only the leader hands them on.

The :class:`LeaderGate` takes batches from the merged queue. While this
replica follows, it remembers each batch for replay and lets it go. While it
leads, it routes each expiration and submits it to the route's delivery (see
:mod:`expiryd.delivery`), which batches, retries and dead-letters.
:class:`~expiryd.completion.Completion` follows which expirations are
finished, and every ``replay.record_interval`` the gate records the resulting
per-node marks, so that the next leader knows where this one stopped.

When this replica becomes leader, it starts a delivery per route for the new
term, replays what the last leader left unfinished (see :mod:`expiryd.replay`),
then goes on with the queue, so per-node order is kept across the change. When
it stops leading, the term's deliveries are abandoned in the background: their
queued events stay unfinished, for the next leader::

    gate = LeaderGate(queue=queue, leadership=elector, router=router, replica="1", metrics=metrics,
                      replay=Replay(...) or NoReplay(), dead_letters=dead_letters, overflow_wait=5.0,
                      grace=10.0, due_times=scheduler, now=clock.now, read_through=fanin.read_through,
                      coverage_since=fanin.coverage_since, covered_elsewhere=succession.covered_elsewhere)
    gate.start()
    ...
    await gate.aclose()    # finish what the routes hold within the grace period, record progress
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from .completion import Completion, Pending
from .deadletter import DeadLetters
from .delivery import RouteDelivery
from .eventqueue import EventQueue
from .events import Expiration
from .leadership import LeadershipHandOver
from .metrics import Metrics
from .progress import ProgressMark
from .routing import Route, Router
from .scheduler import DueTimes
from .succession import Accept, HandOver, decide_on_gaps, gaps_to_thaw_at_once
from .tasks import Service, until_first_failure

__all__ = ["LeaderGate", "ReplayLike"]

log = logging.getLogger("expiryd.gate")

# Replayed events go to the routes in chunks of this size, as if read from the queue.
_REPLAY_CHUNK = 1024
# How long one snapshot of the keys in flight answers the sweep's questions.
_IN_FLIGHT_SNAPSHOT_FOR = 0.05


class ReplayLike(Protocol):
    """:class:`~expiryd.replay.Replay`, or :class:`~expiryd.replay.NoReplay` when replay is off."""

    record_interval: float

    def remember(self, batch: list[Expiration]) -> None: ...

    async def unfinished(
        self, *, term: int, own: dict[str, ProgressMark]
    ) -> tuple[list[Expiration], dict[str, ProgressMark]]: ...

    async def record(self, *, term: int, marks: dict[str, ProgressMark] | None) -> None: ...

    def report(self) -> None: ...


class LeaderGate(Service):
    name = "leader gate"

    def __init__(
        self,
        *,
        queue: EventQueue,
        leadership: LeadershipHandOver,
        router: Router,
        replica: str,
        metrics: Metrics,
        replay: ReplayLike,
        dead_letters: DeadLetters,
        overflow_wait: float,
        grace: float,
        due_times: DueTimes,
        now: Callable[[], float],
        read_through: Callable[[], dict[str, float | None]],
        coverage_since: Callable[[], dict[str, float | None]],
        covered_elsewhere: Callable[[dict[str, ProgressMark], float], Awaitable[bool | None]],
        internal_keys: frozenset[bytes] = frozenset(),
        idle_after: float = 2.0,
    ) -> None:
        self._queue = queue
        self._leadership = leadership
        self._router = router
        self._replica = replica
        self._metrics = metrics
        self._replay = replay
        self._dead_letters = dead_letters
        self._overflow_wait = overflow_wait
        self._grace = grace
        self._due_times = due_times
        self._now = now
        self._read_through = read_through
        self._internal_keys = internal_keys
        self._coverage_since = coverage_since
        self._idle_after = idle_after
        self._covered_elsewhere = covered_elsewhere
        # The newest receive time the gate has taken from the queue: everything received before it has been seen.
        self._dispatched_through = 0.0
        # The oldest receive time of the batch taken from the queue and not yet in the completion.
        self._in_hand: float | None = None
        # What a takeover has still to hand to the routes.
        self._replaying: list[Expiration] = []
        self._in_flight: tuple[float, set[bytes]] = (0.0, set())
        self._active_term: int | None = None
        self._shift: _Shift | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # The marks this replica's last term ended with: a new term starts from them.
        self._own_marks: dict[str, ProgressMark] = {}

    async def _run(self) -> None:
        await until_first_failure(self._take_batches(), self._record_progress())

    async def _close(self) -> None:
        """Take no new batch; let the routes finish what they hold within the grace period; record progress."""
        shift = self._shift
        if shift is not None:
            await _close_all(shift.deliveries.values())
            await self._replay.record(term=shift.term, marks=shift.completion.take_marks())
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _take_batches(self) -> None:
        while True:
            batch = await self._queue.get()
            self._metrics.queue_depth.set(len(self._queue))
            self._in_hand = min((expiration.received_at for expiration in batch), default=None)
            try:
                await self._dispatch(batch)
            finally:
                self._in_hand = None
            # A get() from a non-empty queue does not suspend: without this, a backlog
            # would hold the event loop until it is drained, starving lease renewals,
            # the watchdogs, the route lanes and /metrics.
            await asyncio.sleep(0)

    def in_flight(self, key: bytes) -> bool:
        """Whether an expiration of ``key`` waits in the merged queue, in a takeover, or in a route."""
        now = time.monotonic()
        taken_at, keys = self._in_flight
        # The sweep asks for many keys at once: one snapshot serves them all.
        if now - taken_at > _IN_FLIGHT_SNAPSHOT_FOR:
            keys = self._queue.keys() | {expiration.key for expiration in self._replaying}
            if self._shift is not None:
                keys |= self._shift.completion.keys()
            self._in_flight = (now, keys)
        return key in keys

    async def emit_swept(self, route: Route, expirations: list[Expiration]) -> None:
        """Hand expirations found by the sweep to ``route``, as this term's leader; they are not remembered."""
        shift = self._shift
        if shift is None or self._leadership.term() != shift.term:
            raise RuntimeError("not leading")
        self._in_flight = (0.0, set())
        await shift.deliveries[route].submit([shift.completion.add(expiration) for expiration in expirations])

    def subscription_lost(self, node: str, *, heard_until: float) -> None:
        """This replica may have missed what ``node`` published after ``heard_until``: hold its mark there.

        Only a primary publishes expirations: a replica's subscription (kept for a failover) is not a gap.
        """
        if self._shift is not None and node in self._coverage_since():
            self._shift.completion.freeze(node, heard_until=heard_until)

    async def _dispatch(self, batch: list[Expiration]) -> None:
        term = self._leadership.term()
        if term != self._active_term:
            self._end_shift()
            self._active_term = term
            if term is not None:
                self._begin_shift(term)
                await self._take_over(term)
        # Every replica settles its schedule as the keys expire, so a follower's is current when it takes over.
        self._due_times.settle(batch)
        self._replay.remember(batch)
        if term is None:
            self._metrics.events_skipped.inc(len(batch))
            return
        await self._process(batch)
        if batch:  # only now is all of it in the completion, finished or not
            self._dispatched_through = max(self._dispatched_through, batch[-1].received_at)

    def _begin_shift(self, term: int) -> None:
        completion = Completion(term=term, marks=self._own_marks)
        deliveries = {
            route: RouteDelivery(
                route=route,
                term=term,
                replica=self._replica,
                leadership=self._leadership,
                completion=completion,
                dead_letters=self._dead_letters,
                metrics=self._metrics,
                upstream_blocked=self._queue.blocked_for,
                shed_after=self._overflow_wait / 2,
                grace=self._grace,
                now=self._now,
            )
            for route in self._router.routes
        }
        for delivery in deliveries.values():
            delivery.start()
        self._shift = _Shift(term=term, completion=completion, deliveries=deliveries)

    def _end_shift(self) -> None:
        shift, self._shift = self._shift, None
        if shift is None:
            return
        self._own_marks = shift.completion.close()
        for delivery in shift.deliveries.values():
            delivery.abandon()
        task = asyncio.create_task(_close_all(shift.deliveries.values()), name=f"term {shift.term} step-down")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _take_over(self, term: int) -> None:
        assert self._shift is not None
        pending, marks = await self._replay.unfinished(term=term, own=self._own_marks)
        self._replaying = pending
        # From where the last leader got to, not from this replica's own older marks.
        self._shift.completion.start_from(marks)
        for start in range(0, len(pending), _REPLAY_CHUNK):
            await self._process(pending[start : start + _REPLAY_CHUNK])
        self._replaying = []

    async def _process(self, batch: list[Expiration]) -> None:
        assert self._shift is not None
        completion = self._shift.completion
        by_route: dict[Route, list[Pending]] = {}
        settled: list[Pending] = []
        unrouted = 0
        for expiration in batch:
            pending = completion.add(expiration)
            if expiration.key in self._internal_keys:
                settled.append(pending)
                continue
            route = self._router.match(expiration.key, expiration.kind)
            if route is None:
                unrouted += 1
                settled.append(pending)
            else:
                by_route.setdefault(route, []).append(pending)
        if unrouted:
            self._metrics.events_unrouted.inc(unrouted)
        if settled:
            completion.finish(settled)
        for route, pendings in by_route.items():
            await self._shift.deliveries[route].submit(pendings)

    async def _record_progress(self) -> None:
        while True:
            await asyncio.sleep(self._replay.record_interval)
            self._replay.report()
            shift = self._shift
            if shift is None or self._leadership.term() != shift.term:
                continue
            completion = shift.completion
            if not self._replaying:  # a node's replayed events may not be in the completion yet
                subscribed = [node for node, since in self._coverage_since().items() if since is not None]
                completion.quiet(subscribed, through=self._quiet_through(subscribed), idle_for=self._idle_after)
            hand_over = bool(completion.frozen()) and await self._resolve_gaps(completion)
            await self._replay.record(term=shift.term, marks=completion.take_marks())
            if hand_over:
                # The final marks are recorded: the replica that heard the gap replays it from them.
                self._leadership.hand_over("gap in the subscription history")

    def _quiet_through(self, nodes: list[str]) -> float:
        """Up to when everything received from ``nodes`` has reached the completion (epoch seconds)."""
        waiting = self._queue.oldest_waiting()
        taken = self._dispatched_through if waiting is None else min(self._dispatched_through, waiting)
        read_through = self._read_through()
        read = [read_through.get(node) for node in nodes]
        if not read or any(at is None for at in read):
            return taken
        # Everything these subscriptions read before then is in the queue, in the batch in hand, or past
        # both; so a primary that publishes nothing moves on with its PINGs, not only with others' events.
        limits = [at for at in read if at is not None]
        limits += [at for at in (self._queue.oldest(), self._in_hand) if at is not None]
        return max(taken, min(limits))

    async def _resolve_gaps(self, completion: Completion) -> bool:
        """Whether to hand over to a replica that heard what this one missed (see :func:`decide_on_gaps`)."""
        for node in gaps_to_thaw_at_once(completion.frozen(), self._coverage_since()):
            completion.thaw(node)
        frozen = completion.frozen()
        if not frozen:
            return False
        heard_elsewhere = await self._covered_elsewhere(completion.marks(), max(frozen.values()))
        # Read again: a primary may have been subscribed anew while the coverage reports were read.
        verdict = decide_on_gaps(frozen=frozen, since=self._coverage_since(), heard_elsewhere=heard_elsewhere)
        if isinstance(verdict, HandOver):
            log.warning(
                "this leader missed events another replica heard: handing over", extra={"nodes": list(verdict.nodes)}
            )
            self._metrics.history_gaps.labels(outcome="handed_over").inc(len(verdict.nodes))
            return True
        if isinstance(verdict, Accept):
            for node, unheard in verdict.unheard.items():
                completion.thaw(node)
                self._metrics.history_gaps.labels(outcome="uncovered").inc()
                self._metrics.unheard_seconds.inc(unheard)
                log.error(
                    "events published while this leader was cut off from a node may be lost: no replica heard them",
                    extra={"node": node, "seconds": round(unheard, 3)},
                )
        return False


async def _close_all(deliveries: Iterable[RouteDelivery]) -> None:
    await asyncio.gather(*(delivery.aclose() for delivery in deliveries))


@dataclass
class _Shift:
    """One leadership term's work: what is finished, and a delivery per route."""

    term: int
    completion: Completion
    deliveries: dict[Route, RouteDelivery]
