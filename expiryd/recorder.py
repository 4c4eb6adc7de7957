"""The progress recorder: every ``record_interval``, the leader writes how far it got on each node.

While this replica leads, the leader gate's current :class:`~expiryd.shift.Shift` follows which
expirations are finished. The :class:`ProgressRecorder` turns that into the per-node marks the
next leader replays from (see :mod:`expiryd.replay`), in this order at each turn:

1. **Gaps.** A subscription that broke may have missed what its node published after it was
   last heard: that node's mark is frozen there (:meth:`~expiryd.completion.Completion.freeze`).
2. **Quiet nodes.** An idle primary's mark moves up to what has been read from it, so that a
   primary that expires nothing does not hold every successor back.
3. **Verdict on the gaps** (:func:`~expiryd.succession.decide_on_gaps`): hand over to a replica
   that heard a gap, accept a gap nobody heard (counted and logged), or wait for the reports.
4. **Record** the marks, then hand over if that was the verdict, so that the successor replays
   from the marks before the gap.

On shutdown it records the marks the shift finished with, after the gate has drained::

    recorder = ProgressRecorder(gate=gate, queue=queue, replay=replay, leadership=elector,
                                subscriptions=fanin, succession=succession, metrics=metrics, idle_after=2.0)
    recorder.start()
    ...
    await recorder.aclose()      # after the gate's aclose(): records the final marks
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .completion import Completion
from .eventqueue import EventQueue
from .leadership import LeadershipHandOver
from .metrics import Metrics
from .progress import ProgressMark
from .shift import Shift
from .succession import Accept, HandOver, decide_on_gaps, gaps_to_thaw_at_once
from .tasks import Service

__all__ = ["ProgressRecorder"]

log = logging.getLogger("expiryd.recorder")


class _Shifts(Protocol):
    """The leader gate: the shift it works in, while this replica leads."""

    @property
    def shift(self) -> Shift | None: ...


class _Subscriptions(Protocol):
    """The fan-in: what each primary's subscription has heard."""

    def coverage_since(self) -> dict[str, float | None]: ...

    def read_through(self) -> dict[str, float | None]: ...

    def take_gaps(self) -> dict[str, float]: ...


class _Record(Protocol):
    record_interval: float

    async def record(self, *, term: int, marks: dict[str, ProgressMark] | None) -> None: ...

    def report(self) -> None: ...


class _HeardElsewhere(Protocol):
    async def covered_elsewhere(self, marks: dict[str, ProgressMark], after: float) -> bool | None: ...


class ProgressRecorder(Service):
    name = "progress recorder"

    def __init__(
        self,
        *,
        gate: _Shifts,
        queue: EventQueue,
        replay: _Record,
        leadership: LeadershipHandOver,
        subscriptions: _Subscriptions,
        succession: _HeardElsewhere,
        metrics: Metrics,
        idle_after: float,
    ) -> None:
        self._gate = gate
        self._queue = queue
        self._replay = replay
        self._leadership = leadership
        self._subscriptions = subscriptions
        self._succession = succession
        self._metrics = metrics
        # A busy primary's mark names an event, which a new leader finds exactly; an idle one's moves
        # up with time once it is older than this.
        self._idle_after = idle_after

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._replay.record_interval)
            await self.record_once()

    async def _close(self) -> None:
        shift = self._gate.shift
        if shift is not None:
            await self._replay.record(term=shift.term, marks=shift.completion.take_marks())

    async def record_once(self) -> None:
        """One turn: freeze at new gaps, move quiet marks, judge the gaps, record, hand over if judged so."""
        self._replay.report()
        gaps = self._subscriptions.take_gaps()
        shift = self._gate.shift
        if shift is None or self._leadership.term() != shift.term:
            return
        completion = shift.completion
        since = self._subscriptions.coverage_since()
        for node, heard_until in gaps.items():
            if node in since:  # only a primary publishes: a replica node's subscription is no gap
                completion.freeze(node, heard_until=heard_until)
        if not shift.replaying:  # a node's replayed events may not be in the completion yet
            subscribed = [node for node, at in since.items() if at is not None]
            completion.quiet(subscribed, through=self._quiet_through(shift, subscribed), idle_for=self._idle_after)
        hand_over = bool(completion.frozen()) and await self._resolve_gaps(completion)
        await self._replay.record(term=shift.term, marks=completion.take_marks())
        if hand_over:
            # The final marks are recorded: the replica that heard the gap replays it from them.
            self._leadership.hand_over("gap in the subscription history")

    def _quiet_through(self, shift: Shift, nodes: list[str]) -> float:
        """Up to when everything received from ``nodes`` has reached the completion (epoch seconds)."""
        waiting = self._queue.oldest_waiting()
        taken = shift.taken_through if waiting is None else min(shift.taken_through, waiting)
        read_through = self._subscriptions.read_through()
        read = [read_through.get(node) for node in nodes]
        if not read or any(at is None for at in read):
            return taken
        # Everything these subscriptions read before then is in the queue, in the batch in hand, or past
        # both; so a primary that publishes nothing moves on with its PINGs, not only with others' events.
        limits = [at for at in read if at is not None]
        limits += [at for at in (self._queue.oldest(), shift.in_hand) if at is not None]
        return max(taken, min(limits))

    async def _resolve_gaps(self, completion: Completion) -> bool:
        """Whether to hand over to a replica that heard what this one missed (see :func:`decide_on_gaps`)."""
        for node in gaps_to_thaw_at_once(completion.frozen(), self._subscriptions.coverage_since()):
            completion.thaw(node)
        frozen = completion.frozen()
        if not frozen:
            return False
        heard_elsewhere = await self._succession.covered_elsewhere(completion.marks(), max(frozen.values()))
        # Read again: a primary may have been subscribed anew while the coverage reports were read.
        verdict = decide_on_gaps(
            frozen=frozen, since=self._subscriptions.coverage_since(), heard_elsewhere=heard_elsewhere
        )
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
