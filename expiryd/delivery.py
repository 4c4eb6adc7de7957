"""Delivery: a route's events go from its queue to its handler, with batching, retries and a dead-letter.

A :class:`RouteDelivery` serves one route for one leadership term. Its
events wait in the route's lanes (see :mod:`expiryd.lanes`: split by key,
bounded, shed only when the subscriptions are stuck); one worker per lane takes
up to ``batch.size`` events, waiting up to ``batch.max_wait`` for the batch to
fill, and calls the handler::

    delivery = RouteDelivery(route=route, term=7, replica="1", leadership=elector, completion=completion,
                             dead_letters=dead_letters, metrics=metrics, upstream_blocked=queue.blocked_for,
                             shed_after=2.5, grace=10.0)
    delivery.start()
    await delivery.submit(pendings)      # waits for room; sheds only when the subscriptions are stuck
    ...
    await delivery.aclose()              # shutting down: finish what is queued within the grace period
    delivery.abandon()                   # or, stepped down: leave the queue to the next leader,
    await delivery.aclose()              # and give the calls in flight the grace period

**Failures.** A failed attempt is retried after :func:`backoff`: exponential
with full jitter (``retry.backoff`` doubling up to ``retry.max_backoff``). The
first ``retry.in_memory`` attempts happen here, in the lane; if they all fail,
the batch's events are parked in the route's retry set in Redis (see
:mod:`expiryd.retries`) and are finished as far as the progress marks go. The
delivery's retry worker takes them again when due, under the current term,
until ``retry.max_attempts``; then they go to the dead-letter stream with the
error and the attempt count (see :mod:`expiryd.deadletter`). A
:class:`PermanentFailure` goes there at once. Where the retry set cannot be
written, the lane goes on retrying in memory.

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
from collections.abc import Callable

from .completion import Completion, Pending
from .config import RetryConfig
from .connections import REDIS_FAILURES, describe_error
from .deadletter import DeadLetters, Outcome
from .events import EXPIRED, Event, Expiration
from .handlers import PermanentFailure, RetryLater
from .lanes import Lanes
from .leadership import Leadership
from .metrics import Metrics
from .payload import Oversized
from .retries import KeyQueue, Parked, RetrySet
from .routing import Route
from .tasks import cancel_and_wait

__all__ = ["RouteDelivery", "backoff", "handler_error"]

log = logging.getLogger("expiryd.delivery")

_SHED_LOG_INTERVAL = 1.0
# How often the retry worker looks for due entries, and reports the retry set's size.
_RETRY_POLL = 0.5
_RETRY_REPORT_EVERY = 10
# An entry taken for an attempt is claimed this long: if this leader dies meanwhile, the next takes it
# then. A leader's retry worker waits for each attempt before it takes more, so the claim only keeps
# two leaders apart, and a short one delays no event of a dead leader for long.
_RETRY_CLAIM_FOR = 10.0


def handler_error(error: BaseException) -> str:
    """What a handler's failure says, for a log line and a dead letter.

    A :class:`RetryLater` or :class:`PermanentFailure` carries the handler's own words (a webhook's
    ``HTTP 503: <the start of its answer>``): their class names say nothing a reader needs. Any
    other exception is named with its class, as the handler's author will look for it.
    """
    if isinstance(error, RetryLater | PermanentFailure) and str(error):
        return str(error)
    return describe_error(error)


def backoff(attempt: int, *, retry: RetryConfig, error: Exception, jitter: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based); ``jitter`` is uniform in [0, 1).

    Full jitter over ``retry.backoff`` doubling per attempt, capped at
    ``retry.max_backoff``; a :class:`RetryLater` with ``after`` is waited for at
    least that long (within the cap)::

        backoff(3, retry=RetryConfig(backoff=0.2, max_backoff=5.0), error=err, jitter=random.random())
    """
    delay = jitter * min(retry.max_backoff, retry.backoff * 2 ** (attempt - 1))
    if isinstance(error, RetryLater) and error.after is not None:
        delay = max(delay, min(error.after, retry.max_backoff))
    return delay


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
        grace: float,
        now: Callable[[], float],
    ) -> None:
        self.route = route
        self._now = now
        self._term = term
        self._replica = replica
        self._leadership = leadership
        self._completion = completion
        self._dead_letters = dead_letters
        self._grace = grace
        self._lanes = Lanes(
            count=route.concurrency,
            queue_size=route.queue_size,
            upstream_blocked=upstream_blocked,
            shed_after=shed_after,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._abandoned = asyncio.Event()
        self._closing = asyncio.Event()
        # Whether the retry set may hold a queue: until it is read empty, every batch asks which keys wait.
        self._retries_may_hold = True
        self._parks = 0
        # Whether the handler's last call succeeded: a receiver that is back drains the retry set at once,
        # instead of each queue waiting out a backoff that may have grown to minutes.
        self._answering = False
        self._shed_unlogged = 0
        self._shed_logged_at = 0.0
        name = route.name
        self._depth = metrics.route_queue_depth.labels(route=name)
        self._ok = metrics.events_processed.labels(route=name, outcome="ok")
        self._retried = metrics.events_processed.labels(route=name, outcome="retried")
        self._outcomes = {
            outcome: metrics.events_processed.labels(route=name, outcome=outcome.value)
            for outcome in (Outcome.DEAD_LETTERED, Outcome.DROPPED)
        }
        self._dropped = self._outcomes[Outcome.DROPPED]
        self._parked = metrics.events_processed.labels(route=name, outcome="parked")
        self._retry_entries = metrics.retry_set_entries.labels(route=name)
        self._retry_oldest = metrics.retry_set_oldest_seconds.labels(route=name)
        self._attempts_ok = metrics.handler_attempts.labels(route=name, result="ok")
        self._attempts_failed = metrics.handler_attempts.labels(route=name, result="error")
        self._handle_seconds = metrics.event_handle_seconds.labels(route=name)
        self._lag_seconds = metrics.event_lag_seconds.labels(route=name)
        self._lateness_seconds = metrics.event_lateness_seconds.labels(route=name)
        self._unscheduled = metrics.events_unscheduled.labels(route=name)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(index), name=f"route {self.route.name} lane {index}")
            for index in range(len(self._lanes))
        ]
        if self.route.retries is not None:
            self._tasks.append(
                asyncio.create_task(self._retry_due(self.route.retries), name=f"route {self.route.name} retries")
            )

    async def submit(self, pendings: list[Pending]) -> None:
        """Queue events for their lanes, in order, waiting for room (see :mod:`expiryd.lanes`)."""
        shed = await self._lanes.submit(pendings)
        self._depth.set(self._lanes.depth())
        if shed:
            self._shed(shed)

    def abandon(self) -> None:
        """Stepped down: forget the queued events, unfinished, and stop every attempt at its next look."""
        self._abandoned.set()
        self._lanes.clear()
        self._depth.set(0)

    async def aclose(self) -> None:
        """Take no more events; finish the queued ones (none, if abandoned) within the grace period, then stop.

        The retry worker takes no new entries; one it has taken is finished within the grace period.
        """
        self._lanes.close()
        self._closing.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self._grace)
            if late:
                log.warning(
                    "grace period over: abandoning batches in flight",
                    extra={"route": self.route.name, "lanes": len(late), "grace": self._grace},
                )
            await cancel_and_wait(self._tasks)
        self._tasks = []

    def _shed(self, pendings: list[Pending]) -> None:
        self._dropped.inc(len(pendings))
        self._completion.finish(pendings)
        self._shed_unlogged += len(pendings)
        now = time.monotonic()
        if now - self._shed_logged_at >= _SHED_LOG_INTERVAL:
            log.warning(
                "route queue full and the subscriptions stuck behind it: dropping events",
                extra={"route": self.route.name, "dropped": self._shed_unlogged, "queue_size": self.route.queue_size},
            )
            self._shed_unlogged = 0
            self._shed_logged_at = now

    async def _work(self, lane: int) -> None:
        size, max_wait = self.route.batch.size, self.route.batch.max_wait
        while True:
            batch = await self._lanes.take(lane, size=size, max_wait=max_wait)
            if not batch:
                return
            self._depth.set(self._lanes.depth())
            await self._deliver(batch)
            # A handler that never waits (log) would otherwise hold the event loop
            # for as long as its lane has events.
            await asyncio.sleep(0)

    async def _deliver(self, batch: list[Pending]) -> None:
        batch = await self._behind_their_keys(batch)
        while batch:
            batch = await self._deliver_part(batch)

    async def _deliver_part(self, batch: list[Pending]) -> list[Pending]:
        """Deliver ``batch``, or as much of it as its payloads allow; return the rest, for another call."""
        rest: list[Pending] = []
        keys = [pending.expiration.key for pending in batch]
        payloads: list[bytes | None] | None = None
        events = self._events(batch, payloads)
        self._observe_lateness(batch)
        attempt = 0
        while self._leading():
            attempt += 1
            try:
                if self.route.payload is not None and payloads is None:
                    fetched = await self.route.payload.fetch(keys)
                    rest, batch = batch[len(fetched) :], batch[: len(fetched)]
                    batch, payloads = await self._set_aside_oversized(batch, fetched)
                    if not batch:
                        return rest
                    keys = [pending.expiration.key for pending in batch]
                    events = self._events(batch, payloads)
                    if not self._leading():
                        # Stepped down while a node was slow to answer: a call now would reach the
                        # receiver after the next leader's, under the older term.
                        return []
                await self._call(events)
            except PermanentFailure as error:
                await self._dead_letter(batch, events, error, attempt)
                return rest
            except Exception as error:
                if attempt >= self.route.retry.max_attempts:
                    await self._dead_letter(batch, events, error, attempt)
                    return rest
                if attempt >= self.route.retry.in_memory and await self._park(batch, events, error, attempt):
                    return rest
                self._retried.inc(len(batch))
                log.warning(
                    "handler failed: retrying",
                    extra={
                        "route": self.route.name,
                        "events": len(batch),
                        "attempt": attempt,
                        "error": handler_error(error),
                    },
                )
                await self._pause(backoff(attempt, retry=self.route.retry, error=error, jitter=random.random()))
                continue
            await self._delete_payloads([p.expiration.key for p in batch if p.expiration.kind == EXPIRED])
            self._ok.inc(len(batch))
            self._finish(batch)
            return rest
        return []

    async def _set_aside_oversized(
        self, batch: list[Pending], fetched: list[bytes | None | Oversized]
    ) -> tuple[list[Pending], list[bytes | None]]:
        """Dead-letter the events whose payload is too large to copy, by reference; return the others.

        Each such companion is renamed out of the sweep's way first (see PayloadKeys.set_aside), so that
        no sweep finds it and delivers its key again; the entry names it, and ``expiryd dlq`` shows it.
        """
        oversized = [(p, f) for p, f in zip(batch, fetched, strict=True) if isinstance(f, Oversized)]
        if not oversized:
            return batch, [f for f in fetched if not isinstance(f, Oversized)]
        payload = self.route.payload
        assert payload is not None  # only a payload route fetches
        events = self._events([pending for pending, _ in oversized], None)
        for event, (pending, found) in zip(events, oversized, strict=True):
            event.payload_bytes = found.size
            event.payload_ref = await payload.set_aside(pending.expiration.key)
        error = PermanentFailure(
            f"payload over routes[].payload_max_bytes ({payload.max_bytes} bytes): not copied, set aside"
        )
        await self._dead_letter([pending for pending, _ in oversized], events, error, 0)
        kept = [(p, f) for p, f in zip(batch, fetched, strict=True) if not isinstance(f, Oversized)]
        return [p for p, _ in kept], [f for _, f in kept if not isinstance(f, Oversized)]

    async def _behind_their_keys(self, batch: list[Pending]) -> list[Pending]:
        """Park at once the events whose key has a queue in the retry set; return the others.

        Per-key order: an event of a key whose earlier events wait in the retry set waits behind them.
        """
        retries = self.route.retries
        if retries is None or not self._retries_may_hold:
            return batch
        try:
            held = await retries.held(list({pending.expiration.key for pending in batch}))
        except REDIS_FAILURES as error:
            # Unknown: sent at once. Order may then break for a key that waits, never an event get lost.
            log.warning("cannot read the retry set", extra={"route": self.route.name, "error": describe_error(error)})
            return batch
        if not held:
            return batch
        behind = [pending for pending in batch if pending.expiration.key in held]
        now = self._now()
        reason = "parked behind an earlier event of its key"
        entries = [
            Parked.of(event, attempts=0, error=reason, failed_at=now, due_at=now)
            for event in self._events(behind, None)
        ]
        try:
            parked = await retries.park(entries)
        except REDIS_FAILURES as error:
            log.warning("cannot park behind a key", extra={"route": self.route.name, "error": describe_error(error)})
            return batch
        self._parked.inc(parked)
        self._finish(behind[:parked])
        return [pending for pending in batch if pending.expiration.key not in held] + behind[parked:]

    async def _park(self, batch: list[Pending], events: list[Event], error: Exception, attempts: int) -> bool:
        """Park the batch's events in the retry set for their next attempts; False if it cannot be written."""
        retries = self.route.retries
        if retries is None:
            return False
        now = self._now()
        due_at = now + backoff(attempts, retry=self.route.retry, error=error, jitter=random.random())
        reason = handler_error(error)
        entries = [Parked.of(event, attempts=attempts, error=reason, failed_at=now, due_at=due_at) for event in events]
        try:
            parked = await retries.park(entries)
        except REDIS_FAILURES as park_error:
            log.warning(
                "cannot park failed events in the retry set: retrying in memory",
                extra={"route": self.route.name, "events": len(batch), "error": describe_error(park_error)},
            )
            return False
        log.warning(
            "handler failed: events wait in the retry set",
            extra={"route": self.route.name, "events": parked, "attempts": attempts, "error": reason},
        )
        self._parked.inc(parked)
        self._parks += 1
        self._retries_may_hold = True
        if parked < len(batch):  # the retry set is full
            await self._dead_letter(batch[parked:], events[parked:], error, attempts)
        self._finish(batch[:parked])
        return True

    async def _retry_due(self, retries: RetrySet) -> None:
        """While this term lasts, take the retry set's due entries and attempt them again."""
        size = self.route.batch.size
        turns = 0
        while self._leading() and not self._closing.is_set():
            if turns % _RETRY_REPORT_EVERY == 0:
                await self._report_retries(retries)
            turns += 1
            try:
                now = self._now()
                # Taken early while the handler answers: the backoff was for while it did not.
                due_by = now + self.route.retry.max_backoff if self._answering else now
                due = await retries.take_due(now=now, due_by=due_by, limit=size, claim_for=_RETRY_CLAIM_FOR)
                self._retries_may_hold = self._retries_may_hold or bool(due)
            except REDIS_FAILURES as error:
                log.warning(
                    "cannot read the retry set", extra={"route": self.route.name, "error": describe_error(error)}
                )
                due = []
            if due and self._leading():
                try:
                    await self._attempt_parked(retries, due)
                except REDIS_FAILURES as error:
                    # The entries stay claimed and fall due again: at worst a call is repeated.
                    log.warning(
                        "cannot record a retry's outcome",
                        extra={"route": self.route.name, "error": describe_error(error)},
                    )
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), _RETRY_POLL)

    async def _attempt_parked(self, retries: RetrySet, queues: list[KeyQueue]) -> None:
        """One call for the due queues' entries, each key's in order; then settle every queue."""
        due = [entry for queue in queues for entry in queue.entries]
        payloads: list[bytes | None] | None = None
        try:
            payloads = await self._parked_payloads(due)
            events = self._parked_events(due, payloads)
            if not self._leading():
                return  # the queues stay claimed, and fall due again for the next leader
            await self._call(events)
        except Exception as error:
            read = None if payloads is None else {entry.id: p for entry, p in zip(due, payloads, strict=True)}
            for queue in queues:
                await self._failed_again(retries, queue, error, payloads=read)
            return
        await self._delete_payloads([entry.expiration.key for entry in due if entry.expiration.kind == EXPIRED])
        # A redriven event leaves the dead-letter stream once handled, before its retry entry goes:
        # a crash in between repeats a call, never a second redrive of what was handled.
        await self._dead_letters.delete([entry.dead_letter_id for entry in due if entry.dead_letter_id is not None])
        now = self._now()
        for queue in queues:
            await retries.done(queue, now=now)
        self._ok.inc(len(due))

    async def _parked_payloads(self, due: list[Parked]) -> list[bytes | None] | None:
        """Each entry's payload: a redriven one's own, the others' read from their companions."""
        if self.route.payload is None:
            return None
        unread = [entry.expiration.key for entry in due if entry.payload is None]
        found = await self.route.payload.fetch(unread, whole=True) if unread else []
        too_large = [f.size for f in found if isinstance(f, Oversized)]
        if too_large:
            raise PermanentFailure(
                f"payload of {max(too_large)} bytes over routes[].payload_max_bytes ({self.route.payload.max_bytes})"
            )
        fetched = iter(f for f in found if not isinstance(f, Oversized))
        return [entry.payload if entry.payload is not None else next(fetched) for entry in due]

    def _parked_events(self, due: list[Parked], payloads: list[bytes | None] | None) -> list[Event]:
        events = self._events_of([entry.expiration for entry in due], payloads)
        for event, entry in zip(events, due, strict=True):
            event.redriven = entry.dead_letter_id is not None
        return events

    async def _failed_again(
        self, retries: RetrySet, queue: KeyQueue, error: Exception, *, payloads: dict[str, bytes | None] | None
    ) -> None:
        """The key's entries wait for their next attempt; those out of attempts go to the dead letters.

        The oldest entries have made the most attempts, so those out of attempts are the queue's head.
        ``payloads``: what the failed attempt read, by entry id (None if it read none); a dead-letter
        entry holds its payload, and its companion goes, as on a first delivery's last attempt.
        """
        now = self._now()
        reason = handler_error(error)
        again = [entry.failed_again(error=reason, due_at=now) for entry in queue.entries]
        if isinstance(error, PermanentFailure):
            spent = again
        else:
            spent = [entry for entry in again if entry.attempts >= self.route.retry.max_attempts]
        waiting = again[len(spent) :]
        if spent:
            read = None if payloads is None else [payloads.get(entry.id) for entry in spent]
            events = self._parked_events(spent, read)
            outcome = await self._dead_letters.take(
                route=self.route.name,
                events=events,
                error=reason,
                attempts=max(entry.attempts for entry in spent),
                leading=self._leading,
                pause=self._pause,
                backoff=self.route.retry.backoff,
            )
            if outcome is Outcome.ABANDONED:
                return
            if outcome is Outcome.DEAD_LETTERED:
                # The entry holds the payload: a companion left behind would be swept and fail again.
                await self._delete_payloads(
                    [event.key for event in events if event.has_payload and event.kind == EXPIRED]
                )
            # A redriven event that failed again has its new dead-letter entry: the old one goes.
            await self._dead_letters.delete(
                [entry.dead_letter_id for entry in spent if entry.dead_letter_id is not None]
            )
            self._outcomes[outcome].inc(len(spent))
        # The key waits as long as its most-tried entry would.
        attempts = max((entry.attempts for entry in waiting), default=1)
        due_at = now + backoff(attempts, retry=self.route.retry, error=error, jitter=random.random())
        await retries.failed(queue, spent=spent, again=waiting, due_at=due_at)
        if waiting:
            self._retried.inc(len(waiting))
            log.warning(
                "handler failed again: events wait in the retry set",
                extra={"route": self.route.name, "events": len(waiting), "error": reason},
            )

    async def _report_retries(self, retries: RetrySet) -> None:
        parks_before = self._parks
        try:
            # One after the other: the worker holds at most one connection to the set's node.
            size = await retries.size()
            oldest = await retries.oldest_failure()
        except REDIS_FAILURES:
            return
        self._retry_entries.set(size)
        # A park while the size was being read makes the reading stale.
        self._retries_may_hold = size > 0 or self._parks != parks_before
        self._retry_oldest.set(0.0 if oldest is None else max(0.0, self._now() - oldest))

    def _events_of(self, expirations: list[Expiration], payloads: list[bytes | None] | None) -> list[Event]:
        term, replica = self._term, self._replica
        if payloads is None:
            return [
                Event(e.key, e.node, e.received_at, term, replica, None, False, e.kind, e.due_at, e.swept)
                for e in expirations
            ]
        return [
            Event(e.key, e.node, e.received_at, term, replica, payload, True, e.kind, e.due_at, e.swept)
            for e, payload in zip(expirations, payloads, strict=True)
        ]

    def _events(self, batch: list[Pending], payloads: list[bytes | None] | None) -> list[Event]:
        return self._events_of([pending.expiration for pending in batch], payloads)

    def _observe_lateness(self, batch: list[Pending]) -> None:
        """How late each event reaches its first handler call, measured from its key's due time."""
        now = self._now()
        unscheduled = 0
        observe = self._lateness_seconds.observe
        for pending in batch:
            due_at = pending.expiration.due_at
            if due_at is not None:
                observe(now - due_at)
            elif pending.expiration.kind == EXPIRED and not pending.expiration.swept:  # nor hash fields, nor sweeps
                unscheduled += 1
        if unscheduled:
            self._unscheduled.inc(unscheduled)

    async def _call(self, events: list[Event]) -> None:
        started = time.perf_counter()
        try:
            await self.route.handler.handle(events)
        except BaseException:
            self._attempts_failed.inc()
            self._answering = False
            raise
        else:
            self._attempts_ok.inc()
            self._answering = True
        finally:
            self._handle_seconds.observe(time.perf_counter() - started)

    def _leading(self) -> bool:
        return not self._abandoned.is_set() and self._leadership.term() == self._term

    async def _pause(self, seconds: float) -> None:
        """Sleep between attempts, waking at once if this term's work is abandoned."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._abandoned.wait(), seconds)

    async def _delete_payloads(self, keys: list[bytes]) -> None:
        """Delete the companions of keys that expired; a hash whose field expired lives on, and keeps its own."""
        if self.route.payload is None or not keys:
            return
        try:
            await self.route.payload.delete(keys)
        except REDIS_FAILURES as error:
            log.warning(
                "cannot delete payload keys after handling: they stay until their own TTL",
                extra={"route": self.route.name, "events": len(keys), "error": describe_error(error)},
            )

    async def _dead_letter(self, batch: list[Pending], events: list[Event], error: Exception, attempts: int) -> None:
        outcome = await self._dead_letters.take(
            route=self.route.name,
            events=events,
            error=handler_error(error),
            attempts=attempts,
            leading=self._leading,
            pause=self._pause,
            backoff=self.route.retry.backoff,
        )
        if outcome is Outcome.ABANDONED:
            return
        if outcome is Outcome.DEAD_LETTERED:
            # The entry holds the payload. A companion left behind would be found by the sweep and
            # fail again. One never read (the fetch itself failed) stays, as does one whose event was
            # dropped, so that the sweep delivers it later.
            await self._delete_payloads([event.key for event in events if event.has_payload and event.kind == EXPIRED])
        self._outcomes[outcome].inc(len(batch))
        self._finish(batch)

    def _finish(self, batch: list[Pending]) -> None:
        # One observation per batch, for its oldest event: per event it was a
        # sixth of the leader's time at 10,000 events/s.
        oldest = min(pending.expiration.received_at for pending in batch)
        self._lag_seconds.observe(self._now() - oldest)
        self._completion.finish(batch)
