"""The leader gate: events leave the merged queue, and only the leader hands them on.

The :class:`Dispatcher` takes batches from the merged queue. While this
replica follows, it keeps each batch in the replay buffer and lets it go.
While it leads, it routes each expiration and submits it to the route's
delivery (see :mod:`expiryd.delivery`), which batches, retries and
dead-letters. :class:`~expiryd.completion.Completion` follows which
expirations are finished, and every ``record_interval`` the gate writes the
resulting per-node marks to Redis, so that the next leader knows where this
one stopped.

When this replica becomes leader, it starts a delivery per route for the new
term, replays what its buffer holds beyond the last recorded marks (see
:mod:`expiryd.replay`), then goes on with the queue, so per-node order is kept
across the change. When it stops leading, the term's deliveries are abandoned
in the background: their queued events stay unfinished, for the next leader::

    dispatcher = Dispatcher(queue=queue, leadership=elector, router=router, replica="1", metrics=metrics,
                            dead_letters=dead_letters, overflow_wait=5.0, grace=10.0, due_times=scheduler,
                            replay=Replay(buffer=..., store=..., tolerance=2.0, record_interval=1.0))
    dispatcher.start()
    ...
    await dispatcher.stop()    # finish what the routes hold within the grace period, record progress
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .completion import Completion, Pending
from .connections import REDIS_FAILURES
from .deadletter import DeadLetters
from .delivery import Leadership, RouteDelivery
from .eventqueue import EventQueue
from .events import Expiration
from .metrics import Metrics
from .progress import ProgressStore
from .replay import ProgressMark, ReplayBuffer
from .routing import Route, Router
from .scheduler import DueTimes

__all__ = ["Dispatcher", "Replay"]

log = logging.getLogger("expiryd.dispatch")

_REPLAY_CHUNK = 1024


@dataclass
class Replay:
    buffer: ReplayBuffer
    store: ProgressStore
    tolerance: float
    record_interval: float


class Dispatcher:
    def __init__(
        self,
        *,
        queue: EventQueue,
        leadership: Leadership,
        router: Router,
        replica: str,
        metrics: Metrics,
        replay: Replay | None,
        dead_letters: DeadLetters,
        overflow_wait: float,
        grace: float,
        due_times: DueTimes,
        internal_keys: frozenset[bytes] = frozenset(),
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
        self._internal_keys = internal_keys
        self._active_term: int | None = None
        self._shift: _Shift | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._marks: dict[str, ProgressMark] = {}
        self._buffer_nodes: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> asyncio.Task[None]:
        """Start the gate (and the progress recorder); return the gate's task, which ends only on failure."""
        self._tasks = [asyncio.create_task(self._run(), name="dispatcher")]
        if self._replay is not None:
            self._tasks.append(asyncio.create_task(self._record_progress(), name="progress recorder"))
        return self._tasks[0]

    async def stop(self) -> None:
        """Take no new batch; let the routes finish what they hold within the grace period; record progress."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._shift is not None:
            await asyncio.gather(*(delivery.drain(grace=self._grace) for delivery in self._shift.deliveries.values()))
        await self._write_progress()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = await self._queue.get()
            self._metrics.queue_depth.set(len(self._queue))
            await self._dispatch(batch)
            # A get() from a non-empty queue does not suspend: without this, a backlog
            # would hold the event loop until it is drained, starving lease renewals,
            # the watchdogs, the route lanes and /metrics.
            await asyncio.sleep(0)

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
        self._remember(batch)
        if term is None:
            self._metrics.events_skipped.inc(len(batch))
            return
        await self._process(batch)

    def _begin_shift(self, term: int) -> None:
        completion = Completion(term=term, marks=self._marks)
        deliveries = {
            route: RouteDelivery(route=route, term=term, replica=self._replica, leadership=self._leadership,
                                 completion=completion, dead_letters=self._dead_letters, metrics=self._metrics,
                                 upstream_blocked=self._queue.blocked_for, shed_after=self._overflow_wait / 2)
            for route in self._router.routes
        }
        for delivery in deliveries.values():
            delivery.start()
        self._shift = _Shift(term=term, completion=completion, deliveries=deliveries)

    def _end_shift(self) -> None:
        shift, self._shift = self._shift, None
        if shift is None:
            return
        shift.completion.close()
        task = asyncio.create_task(self._abandon(shift), name=f"term {shift.term} step-down")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _abandon(self, shift: _Shift) -> None:
        await asyncio.gather(*(delivery.abandon(grace=self._grace) for delivery in shift.deliveries.values()))

    def _remember(self, batch: list[Expiration]) -> None:
        if self._replay is not None and batch:
            self._replay.buffer.append(batch)

    async def _take_over(self, term: int) -> None:
        if self._replay is None:
            return
        marks = await self._read_marks()
        pending = self._replay.buffer.after(marks, tolerance=self._replay.tolerance)
        log.warning("replaying events no leader finished", extra={
            "term": term, "events": len(pending), "progress": "unreadable" if marks is None else "read"})
        self._metrics.replayed_events.inc(len(pending))
        for start in range(0, len(pending), _REPLAY_CHUNK):
            await self._process(pending[start:start + _REPLAY_CHUNK])

    async def _read_marks(self) -> dict[str, ProgressMark] | None:
        """The recorded marks, each replaced by this replica's own where that is newer; None if unreadable."""
        assert self._replay is not None
        try:
            marks = await asyncio.wait_for(self._replay.store.read(), self._replay.record_interval * 2)
        except (*REDIS_FAILURES, ValueError, KeyError) as error:
            log.error("cannot read the last leader's progress: replaying the whole buffer",
                      extra={"reason": error.__class__.__name__})
            return None
        for node, own in self._marks.items():
            if node not in marks or own.term >= marks[node].term:
                marks[node] = own
        return marks

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
        assert self._replay is not None
        while True:
            await asyncio.sleep(self._replay.record_interval)
            self._replay.buffer.trim()
            self._report_buffer()
            if self._leadership.term() is not None:
                await self._write_progress()

    async def _write_progress(self) -> None:
        shift = self._shift
        if self._replay is None or shift is None or not shift.completion.changed:
            return
        shift.completion.changed = False
        term = shift.term
        try:
            written = await asyncio.wait_for(self._replay.store.write(term=term, marks=dict(self._marks)),
                                             self._replay.record_interval)
        except REDIS_FAILURES as error:
            shift.completion.changed = True
            self._metrics.progress_writes.labels(result="error").inc()
            log.warning("cannot record progress", extra={"term": term, "reason": error.__class__.__name__})
            return
        self._metrics.progress_writes.labels(result="ok" if written else "stale_term").inc()

    def _report_buffer(self) -> None:
        assert self._replay is not None
        buffer = self._replay.buffer
        for node in self._buffer_nodes - buffer.per_node.keys():
            self._metrics.replay_buffer_events.labels(node=node).set(0)
        self._buffer_nodes = set(buffer.per_node)
        for node, count in buffer.per_node.items():
            self._metrics.replay_buffer_events.labels(node=node).set(count)
        self._metrics.replay_buffer_oldest_seconds.set(buffer.oldest_age())
        evicted, buffer.evicted = buffer.evicted, 0
        if evicted:
            self._metrics.replay_buffer_evicted.inc(evicted)
            log.warning("replay buffer full: oldest events evicted before the window ended",
                        extra={"evicted": evicted, "max_events": buffer.max_events})


@dataclass
class _Shift:
    """One leadership term's work: what is finished, and a delivery per route."""

    term: int
    completion: Completion
    deliveries: dict[Route, RouteDelivery]
