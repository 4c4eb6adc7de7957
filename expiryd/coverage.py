"""Coverage: when each replica's unbroken subscriptions to the primaries began, published for the others.

Every replica publishes a :class:`Coverage` (when each of its primary
subscriptions began, in epoch seconds) to a hash beside the lease, every
``renew_interval``; :mod:`expiryd.succession` reads them against the last
leader's progress marks to decide who may lead. A report also names the
process that wrote it, so that a second process started with a live replica's
id is found (:func:`another_process_publishes`)::

    reporter = CoverageReporter(store=store, replica="1", instance="a1b2c3", since=fanin.coverage_since,
                                facts=daemon.facts, interval=1.0, now=clock.now)
    mine = reporter.now()      # Coverage(replica="1", written_at=..., since={"10.0.0.7:6379": 1764000000.0})
    others = await store.others(replica="1", now=mine.written_at)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .connections import REDIS_FAILURES, describe_error
from .tasks import Service

__all__ = ["Coverage", "CoverageReporter", "CoverageStore", "another_process_publishes"]

log = logging.getLogger("expiryd.coverage")

# A report older than this many publishing intervals is from a replica that is gone.
_STALE_AFTER_INTERVALS = 3
# The hash is rewritten every interval; it outlives every replica by a day, like the progress marks.
_KEY_TTL_MS = 86_400_000
# A report this old (seconds) is what a crashed replica left; it is deleted, so the hash does not grow
# with every pod that ever crashed.
_PRUNE_AFTER = 3600.0


@dataclass(frozen=True)
class Coverage:
    """When each of a replica's primary subscriptions began (epoch seconds), None while one is down.

    ``instance`` tells apart two processes that run with one replica id (empty in a report from an
    older version). ``facts`` is what the replica says of itself for ``expiryd status``: its term
    while it leads, whether it may lead, its schedule (see ``Daemon.facts``).
    """

    replica: str
    written_at: float
    since: dict[str, float | None]
    instance: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"written_at": self.written_at, "since": self.since, "instance": self.instance, "facts": self.facts}
        )

    @classmethod
    def from_json(cls, replica: str, text: str | bytes) -> Coverage:
        document = json.loads(text)
        since = {str(node): None if at is None else float(at) for node, at in dict(document["since"]).items()}
        return cls(
            replica=replica,
            written_at=float(document["written_at"]),
            since=since,
            instance=str(document.get("instance", "")),
            facts=dict(document.get("facts", {})),
        )


def another_process_publishes(before: Coverage | None, after: Coverage | None, *, instance: str) -> bool:
    """Whether reports under this replica's id, read twice a publishing interval apart, come from a live twin.

    A report of another instance that moved between the two reads was written by a running process;
    one that stayed put is what a crashed predecessor left behind.
    """
    if after is None or after.instance == instance:
        return False
    return before is None or after.written_at > before.written_at


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
        freshest: dict[str, Coverage] = {}
        pruning = []
        for master, reports in await self._read():
            abandoned = [name for name, coverage in reports if now - coverage.written_at > _PRUNE_AFTER]
            if abandoned:
                pruning.append(master.hdel(self._key, *abandoned))
            for _, coverage in reports:
                if coverage.replica == replica or not self._live(coverage, now):
                    continue
                if coverage.replica not in freshest or coverage.written_at > freshest[coverage.replica].written_at:
                    freshest[coverage.replica] = coverage
        await asyncio.gather(*pruning, return_exceptions=True)  # tried again at the next look
        return list(freshest.values())

    async def live(self, *, now: float) -> list[Coverage]:
        """Every replica's live report, the freshest of each, by replica id."""
        freshest: dict[str, Coverage] = {}
        for _, reports in await self._read():
            for _, coverage in reports:
                if self._live(coverage, now) and (
                    coverage.replica not in freshest or coverage.written_at > freshest[coverage.replica].written_at
                ):
                    freshest[coverage.replica] = coverage
        return sorted(freshest.values(), key=lambda coverage: coverage.replica)

    async def report(self, *, replica: str, now: float) -> Coverage | None:
        """This id's freshest live report on any master that answers; None when there is none."""
        reports = [
            coverage
            for _, reports in await self._read()
            for _, coverage in reports
            if coverage.replica == replica and self._live(coverage, now)
        ]
        return max(reports, key=lambda coverage: coverage.written_at, default=None)

    async def _read(self) -> list[tuple[Any, list[tuple[Any, Coverage]]]]:
        """Each answering master with its reports, by hash field; raises the first failure when none answers.

        HGETALL, even for one field: the documented ACL rule allows it, not HGET.
        """
        replies = await asyncio.gather(*(master.hgetall(self._key) for master in self._masters), return_exceptions=True)
        answered = [
            (master, reply)
            for master, reply in zip(self._masters, replies, strict=True)
            if not isinstance(reply, BaseException)
        ]
        if not answered:
            raise next(reply for reply in replies if isinstance(reply, BaseException))
        return [
            (master, [(name, Coverage.from_json(_text(name), text)) for name, text in reply.items()])
            for master, reply in answered
        ]

    def _live(self, coverage: Coverage, now: float) -> bool:
        return now - coverage.written_at <= self._stale_after

    async def withdraw(self, *, replica: str) -> None:
        await asyncio.gather(*(master.hdel(self._key, replica) for master in self._masters), return_exceptions=True)

    async def _publish_to(self, master: Any, coverage: Coverage) -> None:
        pipe = master.pipeline(transaction=False)
        pipe.hset(self._key, coverage.replica, coverage.to_json())
        pipe.pexpire(self._key, _KEY_TTL_MS)
        await pipe.execute()


def _text(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


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
        facts: Callable[[], dict[str, Any]],
        interval: float,
        now: Callable[[], float],
    ) -> None:
        self._facts = facts
        self._store = store
        self._instance = instance
        self._now = now
        self._replica = replica
        self._since = since
        self._interval = interval
        self._failing = False

    def now(self) -> Coverage:
        return Coverage(
            replica=self._replica,
            written_at=self._now(),
            since=self._since(),
            instance=self._instance,
            facts=self._facts(),
        )

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
