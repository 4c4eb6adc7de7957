"""The leader gate: events leave the merged queue, and only the leader hands them on.

The :class:`Dispatcher` takes batches from the merged queue. While this
replica follows, it keeps each batch in the replay buffer and lets it go.
While it leads, it stamps each expiration with the current term (the fencing
token), routes it and hands it to the route's handler, then moves its progress
mark for the expiration's node. Every ``record_interval`` it writes the marks
to Redis, so that the next leader knows where this one stopped.

When this replica becomes leader, it first replays what its buffer holds
beyond the last recorded marks (see :mod:`expiryd.replay`), then goes on with
the queue, so per-node order is kept across the change::

    dispatcher = Dispatcher(queue=queue, leadership=elector, router=router, replica="1", metrics=metrics,
                            replay=Replay(buffer=..., store=..., tolerance=2.0, record_interval=1.0))
    dispatcher.start()
    ...
    await dispatcher.stop(grace=10.0)    # finish the batch in hand, record progress, stop

The term is read again before every handler call, so a leader that loses its
lease mid-batch stops at the next route, and a paused leader that wakes up
stops at its first look.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from .connections import REDIS_FAILURES
from .eventqueue import EventQueue
from .events import Event, Expiration
from .metrics import Metrics
from .progress import ProgressStore
from .replay import ProgressMark, ReplayBuffer
from .routing import Route, Router

__all__ = ["Dispatcher", "Leadership", "Replay"]

log = logging.getLogger("expiryd.dispatch")

_REPLAY_CHUNK = 1024


class Leadership(Protocol):
    def term(self) -> int | None: ...


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
        internal_keys: frozenset[bytes] = frozenset(),
    ) -> None:
        self._queue = queue
        self._leadership = leadership
        self._router = router
        self._replica = replica
        self._metrics = metrics
        self._replay = replay
        self._internal_keys = internal_keys
        self._active_term: int | None = None
        self._marks: dict[str, ProgressMark] = {}
        self._unrecorded = False
        self._buffer_nodes: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = False
        self._stopping = False

    def start(self) -> asyncio.Task[None]:
        """Start the gate (and the progress recorder); return the gate's task, which ends only on failure."""
        self._tasks = [asyncio.create_task(self._run(), name="dispatcher")]
        if self._replay is not None:
            self._tasks.append(asyncio.create_task(self._record_progress(), name="progress recorder"))
        return self._tasks[0]

    async def stop(self, *, grace: float) -> None:
        """Take no new batch; give the batch in hand up to ``grace`` seconds; record the final progress."""
        self._stopping = True
        if not self._tasks:
            return
        run = self._tasks[0]
        if not self._busy:
            run.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(run), grace)
        except TimeoutError:
            log.warning("shutdown grace period over: abandoning the batch in hand", extra={"grace": grace})
        except asyncio.CancelledError:
            pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._write_progress()

    async def _run(self) -> None:
        while not self._stopping:
            batch = await self._queue.get()
            self._metrics.queue_depth.set(len(self._queue))
            self._busy = True
            try:
                await self._dispatch(batch)
            finally:
                self._busy = False
            # A get() from a non-empty queue does not suspend, nor does a handler that
            # never waits (log): without this, a backlog would hold the event loop until
            # it is drained, starving lease renewals, the watchdogs and /metrics.
            await asyncio.sleep(0)

    async def _dispatch(self, batch: list[Expiration]) -> None:
        term = self._leadership.term()
        if term is None:
            self._active_term = None
            self._remember(batch)
            self._metrics.events_skipped.inc(len(batch))
            return
        if term != self._active_term:
            self._active_term = term
            await self._take_over(term)
        self._remember(batch)
        await self._process(batch, term)

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
            await self._process(pending[start:start + _REPLAY_CHUNK], term)

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

    async def _process(self, batch: list[Expiration], term: int) -> None:
        by_route: dict[Route, list[Expiration]] = {}
        unrouted = 0
        for expiration in batch:
            if expiration.key in self._internal_keys:
                continue
            route = self._router.match(expiration.key)
            if route is None:
                unrouted += 1
            else:
                by_route.setdefault(route, []).append(expiration)
        if unrouted:
            self._metrics.events_unrouted.inc(unrouted)
        for route, expirations in by_route.items():
            if self._leadership.term() != term:
                # Lost the lease mid-batch: the rest stays in the buffer for the next leader.
                self._metrics.events_skipped.inc(len(expirations))
                return
            events = [Event(e.key, e.node, e.received_at, term, self._replica) for e in expirations]
            await self._handle(route, events)
        last_per_node = {expiration.node: expiration for expiration in batch}
        for node, expiration in last_per_node.items():
            self._marks[node] = ProgressMark.of(expiration, term)
            self._unrecorded = True

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

    async def _record_progress(self) -> None:
        assert self._replay is not None
        while True:
            await asyncio.sleep(self._replay.record_interval)
            self._replay.buffer.trim()
            self._report_buffer()
            if self._leadership.term() is not None:
                await self._write_progress()

    async def _write_progress(self) -> None:
        term = self._active_term
        if self._replay is None or term is None or not self._unrecorded:
            return
        self._unrecorded = False
        try:
            written = await asyncio.wait_for(self._replay.store.write(term=term, marks=dict(self._marks)),
                                             self._replay.record_interval)
        except REDIS_FAILURES as error:
            self._unrecorded = True
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
