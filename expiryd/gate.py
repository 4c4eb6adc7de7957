"""The leader gate: events leave the merged queue, and only the leader hands them on.

The :class:`LeaderGate` takes batches from the merged queue. Every batch settles the
schedule and is remembered for replay, on every replica. While this replica follows, that is
all. While it leads, the gate hands each batch to the term's :class:`~expiryd.shift.Shift`,
which routes each expiration to its route's delivery (see :mod:`expiryd.delivery`).

A change of term reaches the gate on the :class:`~expiryd.leadership.TermSignal`, which it
takes from after each batch it gets. On becoming leader it opens a shift for the new term,
which first replays what the last leader left unfinished (see :mod:`expiryd.replay`), then the
gate goes on with the queue, so per-node order is kept across the change. On stepping down it
retires the shift: the term's queued events stay unfinished, for the next leader. How far the
shift got is recorded by the :class:`~expiryd.recorder.ProgressRecorder`::

    gate = LeaderGate(queue=queue, signal=signal, leadership=elector, replay=replay, due_times=scheduler,
                      settings=ShiftSettings(...), metrics=metrics)
    gate.start()
    ...
    await gate.aclose()    # finish what the routes hold within the grace period
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .eventqueue import EventQueue
from .events import Expiration
from .leadership import Leadership, TermSignal
from .metrics import Metrics
from .progress import ProgressMark
from .routing import Route
from .scheduler import DueTimes
from .shift import Shift, ShiftSettings
from .tasks import Service

__all__ = ["LeaderGate", "ReplayLike"]

log = logging.getLogger("expiryd.gate")


class ReplayLike(Protocol):
    """:class:`~expiryd.replay.Replay`, or :class:`~expiryd.replay.NoReplay` when replay is off."""

    def remember(self, batch: list[Expiration]) -> None: ...

    async def unfinished(
        self, *, term: int, own: dict[str, ProgressMark]
    ) -> tuple[list[Expiration], dict[str, ProgressMark]]: ...


class LeaderGate(Service):
    name = "leader gate"

    def __init__(
        self,
        *,
        queue: EventQueue,
        signal: TermSignal,
        leadership: Leadership,
        replay: ReplayLike,
        due_times: DueTimes,
        settings: ShiftSettings,
        metrics: Metrics,
    ) -> None:
        self._queue = queue
        self._signal = signal
        self._leadership = leadership
        self._replay = replay
        self._due_times = due_times
        self._settings = settings
        self._metrics = metrics
        self._shift: Shift | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # The marks this replica's last term ended with: a new term starts from them.
        self._own_marks: dict[str, ProgressMark] = {}

    @property
    def shift(self) -> Shift | None:
        """The shift this replica works in while it leads."""
        return self._shift

    async def _run(self) -> None:
        while True:
            batch = await self._queue.get()
            self._metrics.queue_depth.set(len(self._queue))
            self._metrics.memory_bytes.labels(part="queue").set(self._queue.bytes)
            change = self._signal.take()
            if change is not None and change.term != (None if self._shift is None else self._shift.term):
                await self._change_term(change.term, holding=batch)
            # Every replica settles its schedule as the keys expire, so a follower's is current when it takes over.
            self._due_times.settle(batch)
            self._replay.remember(batch)
            if self._shift is None:
                self._metrics.events_skipped.inc(len(batch))
            else:
                await self._shift.process(batch)
            # A get() from a non-empty queue does not suspend: without this, a backlog
            # would hold the event loop until it is drained, starving lease renewals,
            # the watchdogs, the route lanes and /metrics.
            await asyncio.sleep(0)

    async def _close(self) -> None:
        """Take no new batch; let the routes finish what they hold within the grace period.

        The shift stays open: the progress recorder records its final marks after this.
        """
        if self._shift is not None:
            await self._shift.aclose()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def emit_swept(self, route: Route, expirations: list[Expiration]) -> None:
        """Hand expirations found by the sweep to ``route``, as this term's leader; they are not remembered."""
        shift = self._shift
        if shift is None or self._leadership.term() != shift.term:
            raise RuntimeError("not leading")
        await shift.submit_swept(route, expirations)

    def keys_in_flight(self) -> set[bytes]:
        """The keys of every expiration in the merged queue, in a takeover, or unfinished in a route."""
        keys = self._queue.keys()
        if self._shift is not None:
            keys |= self._shift.keys_in_flight()
        return keys

    async def _change_term(self, term: int | None, *, holding: list[Expiration]) -> None:
        shift, self._shift = self._shift, None
        if shift is not None:
            self._own_marks, closing = shift.retire()
            self._retiring.add(closing)
            closing.add_done_callback(self._retiring.discard)
        if term is None:
            return
        shift = self._shift = Shift(term=term, marks=self._own_marks, settings=self._settings)
        # The batch in hand is not in the completion yet: no quiet mark may pass it during the takeover.
        shift.in_hand = min((expiration.received_at for expiration in holding), default=None)
        pending, marks = await self._replay.unfinished(term=term, own=self._own_marks)
        # From where the last leader got to, not from this replica's own older marks.
        await shift.take_over(pending, marks=marks)
