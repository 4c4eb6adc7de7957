"""The dead-letter stream: where events go that a handler could not finish.

After a route's last attempt, or at once on a permanent failure, each event of
the batch becomes one entry of a Redis stream on the cluster, trimmed with
``MAXLEN ~`` and, past ``max_bytes`` of memory on its primary, oldest first to
about nine tenths of it (counted and logged). An entry holds the event's stream fields (``key`` as raw bytes,
``node``, ``term``, ``replica``, ``received_at``, ``payload`` when fetched)
and why it is there: ``route``, ``error`` and ``attempts``::

    dead_letters = DeadLetters(client=cluster, stream="{expiryd:deadletter}", maxlen=100_000,
                               max_bytes=64 << 20, metrics=metrics)
    await dead_letters.write(route="orders", events=events, error="HTTP 400", attempts=1)

Inspect, redrive and purge them with ``expiryd dlq`` (see :mod:`expiryd.dlq`): a
redriven entry is deleted from the stream (:meth:`DeadLetters.delete`) once handled.

A delivery hands a failed batch to :meth:`DeadLetters.take`, which tries the
stream a few times while this replica still leads. If even that fails, each
event is logged at error level as JSON and the batch is ``DROPPED``: never
lost silently::

    outcome = await dead_letters.take(route="orders", events=events, error="HTTP 400", attempts=1,
                                      leading=delivery_leads, pause=delivery_pause, backoff=0.2)
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .connections import REDIS_FAILURES, describe_error
from .events import Event
from .metrics import Metrics

__all__ = ["DeadLetters", "Outcome"]

log = logging.getLogger("expiryd.deadletter")

_MAX_ERROR_LENGTH = 1000
# Tries of the stream itself: it lives on the cluster, so a failover takes a few seconds at most.
_WRITE_ATTEMPTS = 3
# A stream past max_bytes is trimmed to this share of it, so that the next writes do not trim again.
_TRIM_TO = 0.9


class Outcome(enum.Enum):
    """What became of a batch handed to the dead-letter stream."""

    DEAD_LETTERED = "dead_lettered"
    DROPPED = "dropped"  # the stream could not be written: logged, and finished
    ABANDONED = "abandoned"  # leadership ended first: unfinished, for the next leader


class DeadLetters:
    def __init__(self, *, client: Any, stream: str, maxlen: int, max_bytes: int, metrics: Metrics) -> None:
        self.stream = stream
        self._client = client
        self._maxlen = maxlen
        self._max_bytes = max_bytes
        self._metrics = metrics

    async def take(
        self,
        *,
        route: str,
        events: list[Event],
        error: str,
        attempts: int,
        leading: Callable[[], bool],
        pause: Callable[[float], Awaitable[None]],
        backoff: float,
    ) -> Outcome:
        """Write the batch to the stream, trying again after ``backoff`` × the try while ``leading()``."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            if not leading():
                return Outcome.ABANDONED
            try:
                await self.write(route=route, events=events, error=error, attempts=attempts)
            except REDIS_FAILURES as write_error:
                log.warning(
                    "cannot write to the dead-letter stream",
                    extra={"route": route, "attempt": attempt, "error": describe_error(write_error)},
                )
                await pause(backoff * attempt)
                continue
            log.warning(
                "events dead-lettered",
                extra={
                    "route": route,
                    "events": len(events),
                    "attempts": attempts,
                    "error": error,
                    "stream": self.stream,
                },
            )
            return Outcome.DEAD_LETTERED
        for event in events:
            log.error(
                "event dropped: handler failed and the dead-letter stream cannot be written",
                extra={"route": route, "event": event.to_json(), "error": error},
            )
        return Outcome.DROPPED

    async def delete(self, ids: list[str]) -> None:
        """Remove entries (redriven and handled) from the stream."""
        if ids:
            await self._client.xdel(self.stream, *ids)

    async def write(self, *, route: str, events: list[Event], error: str, attempts: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for event in events:
            fields = {
                **event.to_fields(),
                "route": route,
                "error": error[:_MAX_ERROR_LENGTH],
                "attempts": str(attempts),
            }
            pipe.xadd(self.stream, fields, maxlen=self._maxlen, approximate=True)
        await pipe.execute()
        # After every write: dead letters come in bursts, and a burst must not end past the bound.
        await self.bound()

    async def bound(self) -> int:
        """Read the stream's size into the metrics; trim its oldest entries past ``max_bytes``. How many went."""
        pipe = self._client.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.memory_usage(self.stream, samples=5)
        entries, size = await pipe.execute()
        size = size or 0
        trimmed = 0
        if size > self._max_bytes and entries:
            keep = max(1, int(entries * self._max_bytes * _TRIM_TO / size))
            trimmed = await self._client.xtrim(self.stream, maxlen=keep, approximate=False)
            self._metrics.dead_letters_trimmed.inc(trimmed)
            log.error(
                "dead-letter stream past its bytes: oldest entries trimmed",
                extra={"stream": self.stream, "trimmed": trimmed, "bytes": size, "max_bytes": self._max_bytes},
            )
            entries -= trimmed
            size = int(size * entries / (entries + trimmed))
        self._metrics.dead_letter_entries.set(entries)
        self._metrics.dead_letter_bytes.set(size)
        return trimmed
