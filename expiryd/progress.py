"""Where the leader got to, kept in Redis beside the lease.

The leader writes one :class:`ProgressMark` per node to the
hash ``<lock_name>:progress``, in the same hash slot as the lease and the term
when the lock name has a hash tag (the default does). The write is a Lua
script that first compares the stored term with the writer's, so a stale
leader that wakes from a pause cannot move the marks::

    store = ProgressStore(masters=[cluster_client], lock_name="{expiryd}:leader")
    await store.write(term=7, marks={"10.0.0.7:6379": mark})
    marks = await store.read()          # {node: ProgressMark}

With several independent Redlock masters, the marks go to every master that
still holds the writer's term, and a read takes each node's mark with the
highest term (then the latest time) among the masters that answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .events import EXPIRED, Expiration
from .keys import progress_key, term_key

__all__ = ["MARK_CONTEXT", "ProgressMark", "ProgressStore"]

# How many of the keys before a mark's own it carries (see ProgressMark.before).
MARK_CONTEXT = 2

# KEYS: term key, progress key. ARGV: term, then node/mark pairs. The hash becomes exactly these
# marks, so the mark of a node that left the cluster goes once the leader stops carrying it.
_WRITE_IF_CURRENT_TERM = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], 86400000)
return 1
"""


@dataclass(frozen=True)
class ProgressMark:
    """The last event a leader finished on one node."""

    key: bytes
    received_at: float
    term: int
    # An expired and an hexpired event of one key can arrive in the same read, with the same time.
    kind: str = EXPIRED
    #: The keys of the node's events just before it, oldest first (up to MARK_CONTEXT): every
    #: subscriber of a node hears them in the same order, so they place the mark in another
    #: replica's history without comparing receive times.
    before: tuple[bytes, ...] = ()

    def to_json(self) -> str:
        document: dict[str, object] = {
            "key_b64": base64.b64encode(self.key).decode("ascii"),
            "received_at": self.received_at,
            "term": self.term,
        }
        if self.kind != EXPIRED:  # marks written before kinds existed read back as expired
            document["kind"] = self.kind
        if self.before:
            document["before_b64"] = [base64.b64encode(key).decode("ascii") for key in self.before]
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProgressMark:
        document = json.loads(text)
        return cls(
            base64.b64decode(document["key_b64"]),
            float(document["received_at"]),
            int(document["term"]),
            str(document.get("kind", EXPIRED)),
            tuple(base64.b64decode(key) for key in document.get("before_b64", ())),
        )

    @classmethod
    def of(cls, expiration: Expiration, term: int, before: tuple[bytes, ...] = ()) -> ProgressMark:
        return cls(expiration.key, expiration.received_at, term, expiration.kind, before)


class ProgressStore:
    def __init__(self, *, masters: Sequence[Any], lock_name: str) -> None:
        self._masters = list(masters)
        self._term_key = term_key(lock_name)
        self._key = progress_key(lock_name)

    async def write(self, *, term: int, marks: dict[str, ProgressMark]) -> bool:
        """Store ``marks``, every node's, if ``term`` is still the current term on a majority; return whether it was."""
        arguments: list[Any] = [term]
        for node, mark in marks.items():
            arguments += [node, mark.to_json()]
        results = await asyncio.gather(
            *(m.eval(_WRITE_IF_CURRENT_TERM, 2, self._term_key, self._key, *arguments) for m in self._masters),
            return_exceptions=True,
        )
        return sum(1 for r in results if r == 1) > len(self._masters) // 2

    async def exists(self) -> bool:
        """Whether any leader has ever recorded progress under this lock name (within a day)."""
        return any(await self._from_majority(lambda master: master.exists(self._key)))

    async def read(self) -> dict[str, ProgressMark]:
        answered = await self._from_majority(lambda master: master.hgetall(self._key))
        marks: dict[str, ProgressMark] = {}
        for reply in answered:
            for node, text in reply.items():
                name = node.decode() if isinstance(node, bytes) else str(node)
                mark = ProgressMark.from_json(text)
                current = marks.get(name)
                if current is None or (mark.term, mark.received_at) > (current.term, current.received_at):
                    marks[name] = mark
        return marks

    async def _from_majority(self, call: Callable[[Any], Awaitable[Any]]) -> list[Any]:
        """``call`` on every master; the answers, or the first error when fewer than a majority answered."""
        replies = await asyncio.gather(*(call(master) for master in self._masters), return_exceptions=True)
        answered = [r for r in replies if not isinstance(r, BaseException)]
        if len(answered) <= len(self._masters) // 2:
            raise next(r for r in replies if isinstance(r, BaseException))
        return answered
