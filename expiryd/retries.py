"""Durable retries: a failed event waits for its next attempt in Redis, not in the leader's memory.

A route's first ``retry.in_memory`` attempts happen in the leader's lanes (see
:mod:`expiryd.delivery`). If they all fail, each event of the batch is *parked*
in the route's :class:`RetrySet`: a sorted set of entry ids by the time of
their next attempt, and a hash of the entries (the event, the attempts so far,
the last error, when it first failed). Once parked, the event is finished for
the progress marks: it lives in Redis, so a leader change, a SIGKILL or a
restart of every replica during a receiver's outage loses nothing, and no later
leader replays it from history.

Whoever leads takes the due entries (:meth:`RetrySet.take_due`) and calls the
handler again under its own term. An entry taken is *claimed*: its next attempt
moves ``claim_for`` ahead, so that if the leader dies before it answers, the
next leader takes it once that time has passed. On success the entry goes
(:meth:`RetrySet.done`); on failure it waits for its next attempt, until ``retry.max_attempts``, after which it goes to the
dead-letter stream. The wait is :func:`~expiryd.delivery.backoff`'s, so a
:class:`~expiryd.handlers.RetryLater` with ``after`` (a webhook's ``Retry-After``)
is waited for at least that long::

    retries = RetrySet(client=cluster, keys=retry_keys("{expiryd}:leader", "orders"), max_entries=100_000)
    await retries.park([entry])                                  # after the in-memory attempts failed
    for entry in await retries.take_due(now=clock.now(), limit=500, claim_for=60.0):
        ...                                                       # call the handler
    await retries.done([entry.id])

Order: a parked event is delivered after events of its key that came later and
succeeded at once. Within the retry set, entries are taken in the order of
their next attempt.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

from .events import EXPIRED, Event, Expiration
from .keys import RetryKeys

__all__ = ["Parked", "RetrySet"]

# KEYS: due, entries, firsts. ARGV: max entries, then id, score, first failed at (ms), entry, per entry.
# Returns how many were parked: none past the bound.
_PARK = """
local room = tonumber(ARGV[1]) - redis.call('HLEN', KEYS[2])
local parked = 0
for i = 2, #ARGV, 4 do
  if parked >= room then break end
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 3])
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  redis.call('ZADD', KEYS[3], ARGV[i + 2], ARGV[i])
  parked = parked + 1
end
return parked
"""

# KEYS: due, entries. ARGV: now (ms), limit, claimed until (ms). The due entries, each claimed.
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local taken = {}
for _, id in ipairs(ids) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(taken, id)
    table.insert(taken, entry)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return taken
"""

# KEYS: due, entries, firsts. ARGV: ids.
_DONE = """
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
return #ARGV
"""

# KEYS: due, entries. ARGV: id, score, entry, per entry. Only entries still there: one a
# redrive or another leader finished meanwhile stays finished.
_RESCHEDULE = """
for i = 1, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
return 1
"""


@dataclass(frozen=True)
class Parked:
    """One event waiting in a route's retry set for its next attempt."""

    id: str
    expiration: Expiration
    #: Attempts made so far, in memory and from the retry set.
    attempts: int
    error: str
    #: When its first attempt failed (epoch seconds, the cluster's clock).
    first_failed_at: float
    #: When its next attempt is due (epoch seconds, the cluster's clock).
    due_at: float
    #: The dead-letter entry it was redriven from (see :mod:`expiryd.dlq`): deleted once it is handled.
    dead_letter_id: str | None = None
    #: A redriven event's payload, from its dead-letter entry: its companion is gone by then.
    payload: bytes | None = None

    @classmethod
    def of(cls, event: Event, *, attempts: int, error: str, failed_at: float, due_at: float) -> Parked:
        expiration = Expiration(event.key, event.node, event.received_at, event.kind, event.due_at, event.swept)
        return cls(uuid.uuid4().hex, expiration, attempts, error, failed_at, due_at)

    def failed_again(self, *, error: str, due_at: float) -> Parked:
        return replace(self, attempts=self.attempts + 1, error=error, due_at=due_at)

    def to_json(self) -> str:
        expiration = self.expiration
        document: dict[str, Any] = {
            "key_b64": base64.b64encode(expiration.key).decode("ascii"),
            "node": expiration.node,
            "received_at": expiration.received_at,
            "attempts": self.attempts,
            "error": self.error,
            "first_failed_at": self.first_failed_at,
        }
        if expiration.kind != EXPIRED:
            document["kind"] = expiration.kind
        if expiration.due_at is not None:
            document["due_at"] = expiration.due_at
        if expiration.swept:
            document["swept"] = True
        if self.dead_letter_id is not None:
            document["dead_letter_id"] = self.dead_letter_id
        if self.payload is not None:
            document["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        return json.dumps(document)

    @classmethod
    def from_json(cls, id: str, text: str | bytes, *, due_at: float) -> Parked:
        document = json.loads(text)
        expiration = Expiration(
            base64.b64decode(document["key_b64"]),
            str(document["node"]),
            float(document["received_at"]),
            str(document.get("kind", EXPIRED)),
            document.get("due_at"),
            bool(document.get("swept", False)),
        )
        payload = document.get("payload_b64")
        return cls(
            id,
            expiration,
            int(document["attempts"]),
            str(document["error"]),
            float(document["first_failed_at"]),
            due_at,
            document.get("dead_letter_id"),
            None if payload is None else base64.b64decode(payload),
        )


class RetrySet:
    def __init__(self, *, client: Any, keys: RetryKeys, max_entries: int) -> None:
        self.keys = keys
        self._client = client
        self._max_entries = max_entries

    async def park(self, entries: list[Parked]) -> int:
        """Park ``entries``; return how many fit under the bound (the first ones)."""
        if not entries:
            return 0
        arguments: list[Any] = [self._max_entries]
        for entry in entries:
            arguments += [entry.id, _ms(entry.due_at), _ms(entry.first_failed_at), entry.to_json()]
        keys = self.keys
        return int(await self._client.eval(_PARK, 3, keys.due, keys.entries, keys.firsts, *arguments))

    async def take_due(self, *, now: float, limit: int, claim_for: float) -> list[Parked]:
        """Up to ``limit`` entries due by ``now``, claimed for ``claim_for`` seconds, in the order they fell due."""
        keys = self.keys
        reply = await self._client.eval(_TAKE_DUE, 2, keys.due, keys.entries, _ms(now), limit, _ms(now + claim_for))
        return [
            Parked.from_json(_text(reply[index]), reply[index + 1], due_at=now) for index in range(0, len(reply), 2)
        ]

    async def reschedule(self, entries: list[Parked]) -> None:
        """Store each entry's new state and next attempt, unless it was finished meanwhile."""
        if not entries:
            return
        arguments: list[Any] = []
        for entry in entries:
            arguments += [entry.id, _ms(entry.due_at), entry.to_json()]
        await self._client.eval(_RESCHEDULE, 2, self.keys.due, self.keys.entries, *arguments)

    async def done(self, ids: list[str]) -> None:
        if ids:
            keys = self.keys
            await self._client.eval(_DONE, 3, keys.due, keys.entries, keys.firsts, *ids)

    async def size(self) -> int:
        return int(await self._client.hlen(self.keys.entries))

    async def oldest_failure(self) -> float | None:
        """When the entry that has waited longest first failed (epoch seconds); None when the set is empty."""
        first = await self._client.zrange(self.keys.firsts, 0, 0, withscores=True)
        return float(first[0][1]) / 1000 if first else None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
