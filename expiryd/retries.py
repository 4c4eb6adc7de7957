"""Durable retries: a failed event waits for its next attempt in Redis, not in the leader's memory.

A route's first ``retry.in_memory`` attempts happen in the leader's lanes (see
:mod:`expiryd.delivery`). If they all fail, each event of the batch is *parked*
in the route's :class:`RetrySet`: a queue per key, oldest first, and a sorted
set of the keys by the time of their next attempt. Once parked, the event is
finished for the progress marks: it lives in Redis, so a leader change, a
SIGKILL or a restart of every replica during a receiver's outage loses nothing,
and no later leader replays it from history.

**Per-key order.** A later event of a key that has a queue is parked behind it
at once (:meth:`RetrySet.held` says which keys have one), and a key's queue is
attempted as a whole, in order: an event never overtakes an earlier one of its
key, whether that one waits in the retry set or not.

Whoever leads takes the due queues (:meth:`RetrySet.take_due`) and calls the
handler again under its own term; while the handler's last call succeeded (the
receiver is back), it takes them before they are due, soonest first, so that the
set drains in seconds rather than each queue waiting out its backoff. A queue taken is *claimed*: its next attempt
moves ``claim_for`` ahead, so that if the leader dies before it answers, the next
leader takes it once that time has passed. On success the entries taken leave
(:meth:`RetrySet.done`), and what was parked behind them falls due at once; on
failure they wait for the next attempt (:meth:`RetrySet.failed`), until
``retry.max_attempts``, after which they go to the dead-letter stream. The wait
is :func:`~expiryd.delivery.backoff`'s, so a :class:`~expiryd.handlers.RetryLater`
with ``after`` (a webhook's ``Retry-After``) is waited for at least that long::

    retries = RetrySet(client=cluster, keys=retry_keys("{expiryd}:leader", "orders"), max_entries=100_000)
    await retries.park([entry])                                 # after the in-memory attempts failed
    for queue in await retries.take_due(now=clock.now(), limit=500, claim_for=10.0):
        ...                                                      # call the handler with queue.entries
        await retries.done(queue, now=clock.now())

An entry is parked once, whatever its id: parking an entry that is already there
parks nothing more (a redrive run twice, see :mod:`expiryd.dlq`).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

from .events import EXPIRED, Event, Expiration
from .keys import RetryKeys

__all__ = ["KeyQueue", "Parked", "RetrySet"]

# KEYS: due, firsts, count, ids, then each entry's queue. ARGV: max entries, then per entry: id, key,
# next attempt (ms), first failure (ms), entry. Returns how many of the entries, in order, are parked.
_PARK = """
local max = tonumber(ARGV[1])
local parked = 0
for i = 1, #KEYS - 4 do
  local at = 2 + (i - 1) * 5
  local id, key = ARGV[at], ARGV[at + 1]
  if redis.call('SISMEMBER', KEYS[4], id) == 0 then
    if tonumber(redis.call('GET', KEYS[3]) or '0') >= max then
      return parked
    end
    local queue = KEYS[4 + i]
    redis.call('RPUSH', queue, ARGV[at + 4])
    redis.call('SADD', KEYS[4], id)
    redis.call('INCR', KEYS[3])
    if redis.call('LLEN', queue) == 1 then
      redis.call('ZADD', KEYS[1], ARGV[at + 2], key)
      redis.call('ZADD', KEYS[2], ARGV[at + 3], key)
    end
  end
  parked = parked + 1
end
return parked
"""

# KEYS: due. ARGV: now (ms), most entries, claimed until (ms), queue name prefix.
# Returns key, entries, key, entries, ...: the due queues, each claimed.
_TAKE_DUE = """
local budget = tonumber(ARGV[2])
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, budget)
local taken = {}
for _, key in ipairs(keys) do
  if budget <= 0 then break end
  local entries = redis.call('LRANGE', ARGV[4] .. key, 0, budget - 1)
  if #entries == 0 then
    redis.call('ZREM', KEYS[1], key)
  else
    redis.call('ZADD', KEYS[1], ARGV[3], key)
    table.insert(taken, key)
    table.insert(taken, entries)
    budget = budget - #entries
  end
end
return taken
"""

# KEYS: due, firsts, count, ids, queue. ARGV: key, entries to drop from the head, next attempt (ms),
# then the ids dropped, then '', then the new state of the entries that stay at the head, in order.
_SETTLE = """
local queue, key, dropped = KEYS[5], ARGV[1], tonumber(ARGV[2])
local at = 4
while ARGV[at] ~= '' do
  redis.call('SREM', KEYS[4], ARGV[at])
  at = at + 1
end
if dropped > 0 then
  redis.call('LTRIM', queue, dropped, -1)
  redis.call('DECRBY', KEYS[3], dropped)
end
for i = at + 1, #ARGV do
  redis.call('LSET', queue, i - at - 1, ARGV[i])
end
if redis.call('LLEN', queue) == 0 then
  redis.call('ZREM', KEYS[1], key)
  redis.call('ZREM', KEYS[2], key)
else
  redis.call('ZADD', KEYS[1], ARGV[3], key)
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
    #: When its first attempt failed, or it was parked behind its key (epoch seconds, the cluster's clock).
    first_failed_at: float
    #: When its next attempt is due, if it heads its key's queue (epoch seconds, the cluster's clock).
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
            "id": self.id,
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
    def from_json(cls, text: str | bytes, *, due_at: float) -> Parked:
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
            str(document["id"]),
            expiration,
            int(document["attempts"]),
            str(document["error"]),
            float(document["first_failed_at"]),
            due_at,
            document.get("dead_letter_id"),
            None if payload is None else base64.b64decode(payload),
        )


@dataclass(frozen=True)
class KeyQueue:
    """The entries of one key taken for an attempt, oldest first."""

    key: bytes
    entries: list[Parked]


class RetrySet:
    def __init__(self, *, client: Any, keys: RetryKeys, max_entries: int) -> None:
        self.keys = keys
        self._client = client
        self._max_entries = max_entries

    def _queue(self, key: bytes) -> bytes:
        return self.keys.queue_prefix.encode() + key

    async def park(self, entries: list[Parked]) -> int:
        """Park ``entries`` at the tail of their keys' queues; return how many fit under the bound (the first ones).

        A key without a queue gets one, due at its first entry's ``due_at``; one with a queue keeps its time.
        """
        if not entries:
            return 0
        keys = self.keys
        arguments: list[Any] = [self._max_entries]
        for entry in entries:
            arguments += [
                entry.id,
                entry.expiration.key,
                _ms(entry.due_at),
                _ms(entry.first_failed_at),
                entry.to_json(),
            ]
        queues = [self._queue(entry.expiration.key) for entry in entries]
        script_keys = [keys.due, keys.firsts, keys.count, keys.ids, *queues]
        return int(await self._client.eval(_PARK, len(script_keys), *script_keys, *arguments))

    async def held(self, keys: list[bytes]) -> set[bytes]:
        """Which of ``keys`` have a queue: a later event of theirs must wait behind it."""
        if not keys:
            return set()
        scores = await self._client.zmscore(self.keys.due, keys)
        return {key for key, score in zip(keys, scores, strict=True) if score is not None}

    async def take_due(
        self, *, now: float, limit: int, claim_for: float, due_by: float | None = None
    ) -> list[KeyQueue]:
        """The queues due by ``due_by`` (``now`` if not given), soonest first, up to ``limit`` entries in all,
        each claimed for ``claim_for`` seconds from ``now``."""
        due_by = now if due_by is None else due_by
        reply = await self._client.eval(
            _TAKE_DUE, 1, self.keys.due, _ms(due_by), limit, _ms(now + claim_for), self.keys.queue_prefix
        )
        return [
            KeyQueue(
                key=_bytes(reply[index]), entries=[Parked.from_json(text, due_at=now) for text in reply[index + 1]]
            )
            for index in range(0, len(reply), 2)
        ]

    async def done(self, queue: KeyQueue, *, now: float) -> None:
        """The entries taken are handled (or dead-lettered): they leave, and what waits behind them is due."""
        await self._settle(queue.key, dropped=queue.entries, staying=[], due_at=now)

    async def failed(self, queue: KeyQueue, *, spent: list[Parked], again: list[Parked], due_at: float) -> None:
        """The attempt failed: ``spent`` (the head of the queue) leave for the dead letters, ``again`` wait until ``due_at``."""
        await self._settle(queue.key, dropped=spent, staying=again, due_at=due_at)

    async def _settle(self, key: bytes, *, dropped: list[Parked], staying: list[Parked], due_at: float) -> None:
        keys = self.keys
        arguments: list[Any] = [key, len(dropped), _ms(due_at), *(entry.id for entry in dropped), ""]
        arguments += [entry.to_json() for entry in staying]
        script_keys = [keys.due, keys.firsts, keys.count, keys.ids, self._queue(key)]
        await self._client.eval(_SETTLE, len(script_keys), *script_keys, *arguments)

    async def size(self) -> int:
        return int(await self._client.get(self.keys.count) or 0)

    async def oldest_failure(self) -> float | None:
        """When the longest-waiting queue's first entry first failed (epoch seconds); None when the set is empty."""
        first = await self._client.zrange(self.keys.firsts, 0, 0, withscores=True)
        return float(first[0][1]) / 1000 if first else None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
