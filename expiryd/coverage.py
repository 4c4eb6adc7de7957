"""Coverage: how far back each replica's unbroken history of every primary reaches, and who may lead.

Pub/Sub has no history: a replica knows a primary's expirations only from the
moment its subscription to that primary last started. A new leader replays
what its buffer holds beyond the last leader's progress marks (see
:mod:`expiryd.replay`), so it must have been subscribed to every primary since
before that primary's mark, or the events in between are lost.

Every replica publishes a :class:`Coverage` (when each of its primary
subscriptions began, in epoch seconds) to a hash beside the lease, every
``renew_interval``. A replica may lead when its history reaches back past every
current mark, less the clock tolerance; or, when none does, when no live
replica's history reaches further back than its own. So after a restart of the
whole deployment the first replica subscribed leads at once, a follower of any
age takes over from a leader that stopped cleanly (its final marks are recent),
and a leader that lost a subscription hands over only to a replica that heard
what it missed::

    mine = Coverage(replica="1", written_at=time.time(), since={"10.0.0.7:6379": 1764000000.0})
    shortfall(mine, marks)        # Shortfall(missing=0, seconds=-12.5): 12.5 s of history before the marks
    may_lead(mine, others=[...], marks=marks, tolerance=2.0)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .connections import REDIS_FAILURES, describe_error
from .progress import ProgressMark
from .tasks import Service

__all__ = [
    "Coverage",
    "CoverageReporter",
    "CoverageStore",
    "Shortfall",
    "another_process_publishes",
    "covered_elsewhere",
    "may_lead",
    "shortfall",
]

log = logging.getLogger("expiryd.coverage")

# A report older than this many publishing intervals is from a replica that is gone.
_STALE_AFTER_INTERVALS = 3
# Worse than any real count: a replica that has not read the topology yet.
_UNKNOWN_PRIMARIES = 1 << 30
# The hash is rewritten every interval; it outlives every replica by a day, like the progress marks.
_KEY_TTL_MS = 86_400_000
# A report this old (seconds) is what a crashed replica left; it is deleted, so the hash does not grow
# with every pod that ever crashed.
_PRUNE_AFTER = 3600.0


@dataclass(frozen=True)
class Coverage:
    """When each of a replica's primary subscriptions began (epoch seconds), None while one is down.

    ``instance`` tells apart two processes that run with one replica id (empty in a report from an
    older version).
    """

    replica: str
    written_at: float
    since: dict[str, float | None]
    instance: str = ""

    def to_json(self) -> str:
        return json.dumps({"written_at": self.written_at, "since": self.since, "instance": self.instance})

    @classmethod
    def from_json(cls, replica: str, text: str | bytes) -> Coverage:
        document = json.loads(text)
        since = {str(node): None if at is None else float(at) for node, at in dict(document["since"]).items()}
        return cls(
            replica=replica,
            written_at=float(document["written_at"]),
            since=since,
            instance=str(document.get("instance", "")),
        )


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


def another_process_publishes(before: Coverage | None, after: Coverage | None, *, instance: str) -> bool:
    """Whether reports under this replica's id, read twice a publishing interval apart, come from a live twin.

    A report of another instance that moved between the two reads was written by a running process;
    one that stayed put is what a crashed predecessor left behind.
    """
    if after is None or after.instance == instance:
        return False
    return before is None or after.written_at > before.written_at


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


class CoverageStore:
    """The replicas' coverage reports, in one hash on the lease's masters.

    ::

        store = CoverageStore(masters=[cluster_client], key="{expiryd}:leader:coverage", interval=1.0)
        await store.publish(coverage)
        others = await store.others(replica="1", now=time.time())    # live reports but this replica's
        await store.withdraw(replica="1")                            # on shutdown
    """

    def __init__(self, *, masters: Sequence[Any], key: str, interval: float) -> None:
        self._masters = list(masters)
        self._key = key
        self._stale_after = _STALE_AFTER_INTERVALS * interval

    async def publish(self, coverage: Coverage) -> None:
        """Write the report to every master; raise only when none took it."""
        results = await asyncio.gather(
            *(self._publish_to(master, coverage) for master in self._masters), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors and len(errors) == len(results):
            raise errors[0]

    async def others(self, *, replica: str, now: float) -> list[Coverage]:
        """The live reports of every other replica, from whichever masters answer (the freshest of each).

        Reports older than an hour are deleted on the way: crashed replicas never withdraw theirs.
        """
        replies = await asyncio.gather(*(master.hgetall(self._key) for master in self._masters), return_exceptions=True)
        answered = [
            (master, reply)
            for master, reply in zip(self._masters, replies, strict=True)
            if not isinstance(reply, BaseException)
        ]
        if not answered:
            raise next(reply for reply in replies if isinstance(reply, BaseException))
        freshest: dict[str, Coverage] = {}
        pruning = []
        for master, reply in answered:
            abandoned = []
            for field, text in reply.items():
                name = field.decode() if isinstance(field, bytes) else str(field)
                coverage = Coverage.from_json(name, text)
                if now - coverage.written_at > _PRUNE_AFTER:
                    abandoned.append(field)
                if name == replica or now - coverage.written_at > self._stale_after:
                    continue
                if name not in freshest or coverage.written_at > freshest[name].written_at:
                    freshest[name] = coverage
            if abandoned:
                pruning.append(master.hdel(self._key, *abandoned))
        await asyncio.gather(*pruning, return_exceptions=True)  # tried again at the next look
        return list(freshest.values())

    async def report(self, *, replica: str) -> Coverage | None:
        """This id's freshest report on any master that answers; None when there is none."""
        # HGETALL, as others() reads the hash: the documented ACL rule allows it, not HGET.
        replies = await asyncio.gather(*(master.hgetall(self._key) for master in self._masters), return_exceptions=True)
        answered = [reply for reply in replies if not isinstance(reply, BaseException)]
        if not answered:
            raise next(reply for reply in replies if isinstance(reply, BaseException))
        field = replica.encode()
        reports = [
            Coverage.from_json(replica, text)
            for reply in answered
            for name, text in reply.items()
            if name in (field, replica)
        ]
        return max(reports, key=lambda report: report.written_at, default=None)

    async def withdraw(self, *, replica: str) -> None:
        await asyncio.gather(*(master.hdel(self._key, replica) for master in self._masters), return_exceptions=True)

    async def _publish_to(self, master: Any, coverage: Coverage) -> None:
        pipe = master.pipeline(transaction=False)
        pipe.hset(self._key, coverage.replica, coverage.to_json())
        pipe.pexpire(self._key, _KEY_TTL_MS)
        await pipe.execute()


class CoverageReporter(Service):
    """Publishes this replica's coverage every ``interval``; withdraws it on close, so it is not waited for."""

    name = "coverage reporter"

    def __init__(
        self,
        *,
        store: CoverageStore,
        replica: str,
        instance: str,
        since: Callable[[], dict[str, float | None]],
        interval: float,
        now: Callable[[], float],
    ) -> None:
        self._store = store
        self._instance = instance
        self._now = now
        self._replica = replica
        self._since = since
        self._interval = interval
        self._failing = False

    def now(self) -> Coverage:
        return Coverage(replica=self._replica, written_at=self._now(), since=self._since(), instance=self._instance)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._store.publish(self.now()), self._interval)
            except REDIS_FAILURES as error:
                if not self._failing:
                    log.warning("cannot publish this replica's coverage", extra={"reason": describe_error(error)})
                self._failing = True
            else:
                self._failing = False
            await asyncio.sleep(self._interval)

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self._store.withdraw(replica=self._replica), self._interval)
        except REDIS_FAILURES:
            pass  # the report goes stale on its own
