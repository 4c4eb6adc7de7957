"""Delivery: a route's events go from its queue to its handler, with batching, retries and a dead-letter.

A :class:`RouteDelivery` serves one route for one leadership term. It splits
the route's events over ``concurrency`` lanes by key, so the events of one key
always go through the same lane, one batch after another, in the order they
arrived. Each lane takes up to ``batch.size`` events, waiting up to
``batch.max_wait`` for the batch to fill, and calls the handler::

    delivery = RouteDelivery(route=route, term=7, leadership=elector, completion=completion,
                             dead_letters=dead_letters, metrics=metrics, upstream_blocked=queue.blocked_for,
                             shed_after=2.5)
    delivery.start()
    await delivery.submit(pendings)      # waits for room; sheds only when the subscriptions are stuck
    ...
    await delivery.drain(grace=10.0)     # shutting down: finish what is queued
    await delivery.abandon(grace=10.0)   # stepped down: leave the queue to the next leader

**Failures.** A failed attempt is retried after an exponential backoff with
full jitter (``retry.backoff`` doubling up to ``retry.max_backoff``), up to
``retry.max_attempts`` attempts; then the batch goes to the dead-letter stream
with the error and the attempt count. A :class:`PermanentFailure` goes there at
once. If even the dead-letter stream cannot be written, each event is logged
at error level as JSON and counted as ``dropped``: never lost silently.

**Backpressure.** A lane holds at most its share of ``queue_size``. When it is
full, :meth:`submit` waits, which holds back the leader gate, and the merged
queue behind it absorbs the burst. Only when a node subscription has waited
for room in the merged queue for ``shed_after`` (half the time it may wait
before it drops for every route), so that the gate is truly stuck behind this
route, does the lane shed what does not fit: counted as ``dropped`` for the
route, and logged. So a burst is absorbed whole as long as the handlers make
room for each read within ``shed_after``, and one stuck route cannot make the
others lose events.

**Leadership.** The term is read before every attempt: a lane whose leader
stepped down stops, and what it had not finished stays unfinished, for the
next leader to replay. Every event carries the term, so a receiver can refuse
a stale leader's late calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .completion import Completion, Pending
from .connections import REDIS_FAILURES, describe_error
from .deadletter import DeadLetters
from .events import EXPIRED, Event
from .handlers import PermanentFailure, RetryLater
from .metrics import Metrics
from .routing import Route

__all__ = ["Leadership", "RouteDelivery"]

log = logging.getLogger("expiryd.delivery")

_DEAD_LETTER_ATTEMPTS = 3
_SHED_LOG_INTERVAL = 1.0
_UPSTREAM_CHECK_INTERVAL = 0.1


class Leadership(Protocol):
    def term(self) -> int | None: ...


class _Lane:
    """A queue of events for one lane."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[Pending] = deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()


class RouteDelivery:
    def __init__(
        self,
        *,
        route: Route,
        term: int,
        replica: str,
        leadership: Leadership,
        completion: Completion,
        dead_letters: DeadLetters,
        metrics: Metrics,
        upstream_blocked: Callable[[], float],
        shed_after: float,
    ) -> None:
        self.route = route
        self._term = term
        self._replica = replica
        self._leadership = leadership
        self._completion = completion
        self._dead_letters = dead_letters
        self._upstream_blocked = upstream_blocked
        self._shed_after = shed_after
        share = -(-route.queue_size // route.concurrency)
        self._lanes = [_Lane(share) for _ in range(route.concurrency)]
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._abandoned = asyncio.Event()
        self._shed_unlogged = 0
        self._shed_logged_at = 0.0
        name = route.name
        self._depth = metrics.route_queue_depth.labels(route=name)
        self._ok = metrics.events_processed.labels(route=name, outcome="ok")
        self._retried = metrics.events_processed.labels(route=name, outcome="retried")
        self._dead_lettered = metrics.events_processed.labels(route=name, outcome="dead_lettered")
        self._dropped = metrics.events_processed.labels(route=name, outcome="dropped")
        self._attempts_ok = metrics.handler_attempts.labels(route=name, result="ok")
        self._attempts_failed = metrics.handler_attempts.labels(route=name, result="error")
        self._handle_seconds = metrics.event_handle_seconds.labels(route=name)
        self._lag_seconds = metrics.event_lag_seconds.labels(route=name)
        self._lateness_seconds = metrics.event_lateness_seconds.labels(route=name)
        self._unscheduled = metrics.events_unscheduled.labels(route=name)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(lane), name=f"route {self.route.name} lane {i}")
                       for i, lane in enumerate(self._lanes)]

    async def submit(self, pendings: list[Pending]) -> None:
        """Queue events for their lanes, in order, waiting for room as described above."""
        if len(self._lanes) == 1:
            await self._admit(self._lanes[0], pendings)
            return
        by_lane: dict[int, list[Pending]] = {}
        for pending in pendings:
            by_lane.setdefault(hash(pending.expiration.key) % len(self._lanes), []).append(pending)
        for index, group in by_lane.items():
            await self._admit(self._lanes[index], group)

    async def drain(self, *, grace: float) -> None:
        """Take no more events; finish the queued ones within ``grace``, then stop."""
        self._closing = True
        for lane in self._lanes:
            lane.ready.set()
        await self._stop_within(grace)

    async def abandon(self, *, grace: float) -> None:
        """Drop the queued events unfinished; give calls in flight up to ``grace``, then stop."""
        self._closing = True
        self._abandoned.set()
        for lane in self._lanes:
            lane.items.clear()
            lane.ready.set()
            lane.room.set()
        self._report_depth()
        await self._stop_within(grace)

    async def _stop_within(self, grace: float) -> None:
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            if late:
                log.warning("grace period over: abandoning batches in flight",
                            extra={"route": self.route.name, "lanes": len(late), "grace": grace})
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _admit(self, lane: _Lane, group: list[Pending]) -> None:
        start = 0
        while start < len(group):
            room = lane.capacity - len(lane.items)
            if room > 0:
                accepted = group[start:start + room]
                lane.items.extend(accepted)
                lane.ready.set()
                start += len(accepted)
                self._report_depth()
                continue
            if self._upstream_blocked() >= self._shed_after:
                self._shed(group[start:])
                return
            lane.room.clear()
            with contextlib.suppress(TimeoutError):
                # Wake now and then to look at the merged queue again.
                await asyncio.wait_for(lane.room.wait(), _UPSTREAM_CHECK_INTERVAL)

    def _shed(self, pendings: list[Pending]) -> None:
        self._dropped.inc(len(pendings))
        self._completion.finish(pendings)
        self._shed_unlogged += len(pendings)
        now = time.monotonic()
        if now - self._shed_logged_at >= _SHED_LOG_INTERVAL:
            log.warning("route queue full and the subscriptions stuck behind it: dropping events", extra={
                "route": self.route.name, "dropped": self._shed_unlogged, "queue_size": self.route.queue_size})
            self._shed_unlogged = 0
            self._shed_logged_at = now

    def _report_depth(self) -> None:
        self._depth.set(sum(len(lane.items) for lane in self._lanes))

    async def _work(self, lane: _Lane) -> None:
        while True:
            batch = await self._take(lane)
            if not batch:
                return
            await self._deliver(batch)
            # A handler that never waits (log) would otherwise hold the event loop
            # for as long as its lane has events.
            await asyncio.sleep(0)

    async def _take(self, lane: _Lane) -> list[Pending]:
        """The next batch: up to batch.size events, waiting up to batch.max_wait for it to fill."""
        size, max_wait = self.route.batch.size, self.route.batch.max_wait
        while not lane.items:
            if self._closing:
                return []
            lane.ready.clear()
            await lane.ready.wait()
        if max_wait > 0 and len(lane.items) < size:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_wait
            while len(lane.items) < size and not self._closing and (left := deadline - loop.time()) > 0:
                lane.ready.clear()
                try:
                    await asyncio.wait_for(lane.ready.wait(), left)
                except TimeoutError:
                    break
        batch = [lane.items.popleft() for _ in range(min(size, len(lane.items)))]
        self._report_depth()
        lane.room.set()
        return batch

    async def _deliver(self, batch: list[Pending]) -> None:
        keys = [pending.expiration.key for pending in batch]
        payloads: list[bytes | None] | None = None
        events = self._events(batch, payloads)
        self._observe_lateness(batch)
        attempt = 0
        while self._leading():
            attempt += 1
            try:
                if self.route.payload is not None and payloads is None:
                    payloads = await self.route.payload.fetch(keys)
                    events = self._events(batch, payloads)
                await self._call(events)
            except PermanentFailure as error:
                await self._dead_letter(batch, events, error, attempt)
                return
            except Exception as error:
                if attempt >= self.route.retry.max_attempts:
                    await self._dead_letter(batch, events, error, attempt)
                    return
                self._retried.inc(len(batch))
                log.warning("handler failed: retrying", extra={
                    "route": self.route.name, "events": len(batch), "attempt": attempt, "error": describe_error(error)})
                await self._pause(self._backoff(attempt, error))
                continue
            await self._delete_payloads(keys)
            self._ok.inc(len(batch))
            self._finish(batch)
            return

    def _events(self, batch: list[Pending], payloads: list[bytes | None] | None) -> list[Event]:
        term, replica = self._term, self._replica
        if payloads is None:
            return [Event(e.key, e.node, e.received_at, term, replica, None, False, e.kind, e.due_at)
                    for e in (p.expiration for p in batch)]
        return [Event(e.key, e.node, e.received_at, term, replica, payload, True, e.kind, e.due_at)
                for e, payload in zip((p.expiration for p in batch), payloads, strict=True)]

    def _observe_lateness(self, batch: list[Pending]) -> None:
        """How late each event reaches its first handler call, measured from its key's due time."""
        now = time.time()
        unscheduled = 0
        observe = self._lateness_seconds.observe
        for pending in batch:
            due_at = pending.expiration.due_at
            if due_at is not None:
                observe(now - due_at)
            elif pending.expiration.kind == EXPIRED:  # hash fields are never scheduled
                unscheduled += 1
        if unscheduled:
            self._unscheduled.inc(unscheduled)

    async def _call(self, events: list[Event]) -> None:
        started = time.perf_counter()
        try:
            await self.route.handler.handle(events)
        except BaseException:
            self._attempts_failed.inc()
            raise
        else:
            self._attempts_ok.inc()
        finally:
            self._handle_seconds.observe(time.perf_counter() - started)

    def _leading(self) -> bool:
        return not self._abandoned.is_set() and self._leadership.term() == self._term

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry = self.route.retry
        delay = random.uniform(0, min(retry.max_backoff, retry.backoff * 2 ** (attempt - 1)))
        if isinstance(error, RetryLater) and error.after is not None:
            delay = max(delay, min(error.after, retry.max_backoff))
        return delay

    async def _pause(self, seconds: float) -> None:
        """Sleep between attempts, waking at once if this term's work is abandoned."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._abandoned.wait(), seconds)

    async def _delete_payloads(self, keys: list[bytes]) -> None:
        if self.route.payload is None:
            return
        try:
            await self.route.payload.delete(keys)
        except REDIS_FAILURES as error:
            log.warning("cannot delete payload keys after handling: they stay until their own TTL", extra={
                "route": self.route.name, "events": len(keys), "error": describe_error(error)})

    async def _dead_letter(self, batch: list[Pending], events: list[Event], error: Exception, attempts: int) -> None:
        reason = describe_error(error)
        for attempt in range(1, _DEAD_LETTER_ATTEMPTS + 1):
            if not self._leading():
                return
            try:
                await self._dead_letters.write(route=self.route.name, events=events, error=reason, attempts=attempts)
            except REDIS_FAILURES as write_error:
                log.warning("cannot write to the dead-letter stream", extra={
                    "route": self.route.name, "attempt": attempt, "error": describe_error(write_error)})
                await self._pause(self.route.retry.backoff * attempt)
                continue
            log.warning("events dead-lettered", extra={
                "route": self.route.name, "events": len(events), "attempts": attempts, "error": reason,
                "stream": self._dead_letters.stream})
            self._dead_lettered.inc(len(batch))
            self._finish(batch)
            return
        for event in events:
            log.error("event dropped: handler failed and the dead-letter stream cannot be written", extra={
                "route": self.route.name, "event": event.to_json(), "error": reason})
        self._dropped.inc(len(batch))
        self._finish(batch)

    def _finish(self, batch: list[Pending]) -> None:
        # One observation per batch, for its oldest event: per event it was a
        # sixth of the leader's time at 10,000 events/s.
        oldest = min(pending.expiration.received_at for pending in batch)
        self._lag_seconds.observe(time.time() - oldest)
        self._completion.finish(batch)
