"""Succession: who may take the lease, and whether a leader with a gap hands it over.

Pub/Sub has no history: a replica knows a primary's expirations only from the moment its
subscription to that primary last started. A new leader replays what its buffer holds beyond
the last leader's progress marks (see :mod:`expiryd.replay`), so it must have been subscribed
to every primary since before that primary's mark, or the events in between are lost. Every
replica publishes when its subscriptions began (a :class:`~expiryd.coverage.Coverage`), and
the rules below read those reports against the marks.

The rules are pure functions of values, which ``tests/test_succession.py`` specifies:

- :func:`shortfall`: by how much a replica's unbroken history misses the marks;
- :func:`decide_to_lead`: a follower's verdict, :class:`Lead` or :class:`Defer`, with the
  deferral clock passed in and out as a value;
- :func:`covered_elsewhere`: whether another replica heard a gap in the leader's history, and
  :func:`decide_on_gaps`: what the leader does then, :class:`HandOver`, :class:`Accept` or :class:`Hold`.

:class:`Succession` is the thin shell around them: it reads the marks and the reports, keeps
the deferral clock between looks, and counts what no replica heard once this replica leads::

    succession = Succession(progress=progress, reports=reports, coverage=reporter, history=replay,
                            settings=config.replay, warmup=8.0, deadline=3.0, replica="1", now=clock.now, metrics=metrics)
    await succession.may_lead()          # the elector asks before each attempt at the lease
    succession.elected()                 # then tells it that it won
    await succession.covered_elsewhere(marks, after=gap_start)   # the leader gate, on a gap
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import ReplayConfig
from .connections import REDIS_FAILURES
from .coverage import Coverage, CoverageReporter, CoverageStore
from .metrics import Metrics
from .progress import ProgressMark, ProgressStore

__all__ = [
    "Accept",
    "Defer",
    "HandOver",
    "Hold",
    "Lead",
    "Shortfall",
    "Succession",
    "covered_elsewhere",
    "decide_on_gaps",
    "decide_to_lead",
    "gaps_to_thaw_at_once",
    "may_lead",
    "shortfall",
]

log = logging.getLogger("expiryd.succession")

# Worse than any real count: a replica that has not read the topology yet.
_UNKNOWN_PRIMARIES = 1 << 30


@dataclass(frozen=True, order=True)
class Shortfall:
    """How far a replica's history falls short of the marks; the smaller, the better placed to lead."""

    #: Current primaries it is not subscribed to.
    missing: int
    #: The worst subscribed primary's ``since - mark time``: negative when it reaches back past every mark.
    seconds: float

    def covers(self, tolerance: float) -> bool:
        return self.missing == 0 and self.seconds <= -tolerance


def shortfall(coverage: Coverage, marks: dict[str, ProgressMark]) -> Shortfall:
    """By how much the history misses the marks (see :class:`Shortfall`).

    A primary without a mark had nothing finished by the last leader: its
    history is measured against the oldest mark of a current primary, and when
    no current primary has a mark, no leader has finished anything there and
    nothing can be missed (``-inf``). A replica that knows no primary yet
    misses everything.
    """
    if not coverage.since:
        return Shortfall(missing=_UNKNOWN_PRIMARIES, seconds=math.inf)
    subscribed = {node: at for node, at in coverage.since.items() if at is not None}
    missing = len(coverage.since) - len(subscribed)
    relevant = [mark.received_at for node, mark in marks.items() if node in coverage.since]
    if not relevant or not subscribed:
        return Shortfall(missing=missing, seconds=-math.inf)
    oldest = min(relevant)
    worst = max(at - (marks[node].received_at if node in marks else oldest) for node, at in subscribed.items())
    return Shortfall(missing=missing, seconds=worst)


def may_lead(mine: Coverage, *, others: Sequence[Coverage], marks: dict[str, ProgressMark], tolerance: float) -> bool:
    """Whether this replica may take the lease: it covers the marks, or no live replica is better placed."""
    own = shortfall(mine, marks)
    if own.covers(tolerance):
        return True
    for other in others:
        theirs = shortfall(other, marks)
        if theirs < own or (theirs == own and other.replica < mine.replica):
            return False
    return True


@dataclass(frozen=True)
class Lead:
    """Take the lease. ``unheard``: seconds after the last marks that no live replica heard (0 when none)."""

    unheard: float = 0.0


@dataclass(frozen=True)
class Defer:
    """Leave the lease to a better-placed replica; ``since`` (monotonic) starts the warm-up's count.

    ``unheard``: what this replica would miss, as of its last look that could read the marks.
    """

    since: float
    unheard: float = 0.0


def decide_to_lead(
    *,
    mine: Coverage,
    others: Sequence[Coverage] | None,
    marks: dict[str, ProgressMark] | None,
    tolerance: float,
    warmup: float,
    deferring: Defer | None,
    now: float,
) -> Lead | Defer:
    """A follower's verdict on trying for the lease.

    ``others`` and ``marks`` are None when they could not be read. It leads when
    :func:`may_lead` says so, and otherwise defers; a replica that has deferred
    for ``warmup`` (monotonic ``now`` against ``deferring.since``) leads anyway:
    the better-placed one is evidently not taking the lease.
    """
    unheard = 0.0 if deferring is None else deferring.unheard
    if others is not None and marks is not None:
        seconds = shortfall(mine, marks).seconds
        unheard = seconds if 0 < seconds < math.inf else 0.0
        if may_lead(mine, others=others, marks=marks, tolerance=tolerance):
            return Lead(unheard=unheard)
    if deferring is None:
        return Defer(since=now, unheard=unheard)
    if now - deferring.since >= warmup:
        return Lead(unheard=unheard)
    return Defer(since=deferring.since, unheard=unheard)


def covered_elsewhere(
    *, others: Sequence[Coverage], marks: dict[str, ProgressMark], tolerance: float, after: float
) -> bool | None:
    """Whether another live replica's history reaches back past every mark (a leader may hand over to it).

    Only reports written after ``after`` (a gap's start) plus ``tolerance``, for
    clock skew, can tell: an earlier one may predate that replica's own loss of
    the same subscription. None while a live replica's answer is still older.
    """
    fresh = [other for other in others if other.written_at > after + tolerance]
    if any(shortfall(other, marks).covers(tolerance) for other in fresh):
        return True
    return None if len(fresh) < len(others) else False


@dataclass(frozen=True)
class HandOver:
    """Hand the lease to a replica that heard what this leader missed on ``nodes``."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Accept:
    """No live replica heard the gaps of the nodes subscribed again: seconds unheard per node.

    Their marks move again; what was published in the gap is lost to Pub/Sub (a payload route's
    sweep still finds it). A node still down stays frozen.
    """

    unheard: dict[str, float]


@dataclass(frozen=True)
class Hold:
    """Not known yet: a live replica's report is older than the gap. Ask again at the next record."""


def gaps_to_thaw_at_once(frozen: dict[str, float], since: dict[str, float | None]) -> list[str]:
    """Frozen nodes that are no longer primaries: a promoted replica, subscribed ahead of time, took over."""
    return sorted(frozen.keys() - since.keys())


def decide_on_gaps(
    *, frozen: dict[str, float], since: dict[str, float | None], heard_elsewhere: bool | None
) -> HandOver | Accept | Hold:
    """A leader's verdict on the gaps in its own history (``frozen``: node -> when its gap began).

    ``since``: when each current primary's subscription began (None while down), read after the
    question was asked; ``heard_elsewhere``: what :func:`covered_elsewhere` answered.
    """
    if heard_elsewhere is None:
        return Hold()
    if heard_elsewhere:
        return HandOver(nodes=tuple(sorted(frozen)))
    return Accept(
        unheard={
            node: max(0.0, at - frozen[node]) for node, at in sorted(since.items()) if at is not None and node in frozen
        }
    )


class _SeesMarks(Protocol):
    def saw_marks(self, marks: dict[str, ProgressMark]) -> None: ...


class Succession:
    """The I/O around the rules: reads the marks and the reports, keeps the deferral clock, counts the unheard."""

    def __init__(
        self,
        *,
        progress: ProgressStore,
        reports: CoverageStore,
        coverage: CoverageReporter,
        history: _SeesMarks,
        settings: ReplayConfig,
        warmup: float,
        deadline: float,
        replica: str,
        now: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self._progress = progress
        self._reports = reports
        self._coverage = coverage
        self._history = history
        self._enabled = settings.enabled
        self._tolerance = settings.clock_tolerance
        self._warmup = warmup
        self._deadline = deadline
        self._replica = replica
        self._now = now
        self._metrics = metrics
        self._verdict: Lead | Defer | None = None

    async def may_lead(self) -> bool:
        """Whether this replica's history is complete enough for it to try for the lease now."""
        if not self._enabled:
            self._verdict = Lead()
        else:
            mine = self._coverage.now()
            marks: dict[str, ProgressMark] | None
            others: list[Coverage] | None
            try:
                marks, others = await asyncio.wait_for(
                    asyncio.gather(
                        self._progress.read(), self._reports.others(replica=self._replica, now=mine.written_at)
                    ),
                    self._deadline,
                )
            except (*REDIS_FAILURES, ValueError, KeyError):
                marks = others = None
            if marks is not None:
                self._history.saw_marks(marks)
            deferring = self._verdict if isinstance(self._verdict, Defer) else None
            self._verdict = decide_to_lead(
                mine=mine,
                others=others,
                marks=marks,
                tolerance=self._tolerance,
                warmup=self._warmup,
                deferring=deferring,
                now=time.monotonic(),
            )
        eligible = isinstance(self._verdict, Lead)
        self._metrics.leader_eligible.set(eligible)
        return eligible

    def standing(self) -> dict[str, Any]:
        """Whether this replica may lead, and since when it defers, as ``expiryd status`` shows it."""
        verdict = self._verdict
        if isinstance(verdict, Defer):
            return {"eligible": False, "deferring_for": round(time.monotonic() - verdict.since, 1)}
        return {"eligible": verdict is not None or not self._enabled}

    def elected(self) -> None:
        """This replica took the lease on the last verdict: count what no replica heard, start afresh."""
        verdict, self._verdict = self._verdict, None
        if isinstance(verdict, Lead) and verdict.unheard > 0:
            self._metrics.unheard_seconds.inc(verdict.unheard)
            log.error(
                "no replica heard what was published just after the last leader's progress: "
                "those expirations reach only payload routes, through the sweep",
                extra={"seconds": round(verdict.unheard, 3)},
            )

    async def covered_elsewhere(self, marks: dict[str, ProgressMark], after: float) -> bool | None:
        """Whether another live replica heard what this leader missed after ``after`` (None: not known yet)."""
        if not self._enabled:
            return False  # nothing could replay the gap
        try:
            others = await asyncio.wait_for(
                self._reports.others(replica=self._replica, now=self._now()), self._deadline
            )
        except REDIS_FAILURES:
            return None
        return covered_elsewhere(others=others, marks=marks, tolerance=self._tolerance, after=after)
