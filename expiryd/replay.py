"""Replay after a leadership change: a buffer of recent expirations, and where the last leader stopped.

Every replica hears every expiration, but only the leader acts. When a leader
dies, the events that expire before the next one takes over, and those the old
leader had received but not finished, reach the followers' subscriptions and
would be lost. So every replica keeps the recent per-node history in a
:class:`ReplayBuffer`, and the leader records how far it got in each node's
sequence as a :class:`ProgressMark` in Redis (see :mod:`expiryd.progress`).
A new leader replays what its buffer holds beyond the marks before it takes
new events::

    buffer = ReplayBuffer(window=15.0, max_events=200_000)
    buffer.append(batch)                        # every batch the leader gate sees
    replay = buffer.after(marks, tolerance=2.0)  # on taking over

**Identity.** Redis gives Pub/Sub messages no id, and replicas join and
reconnect at different times, so local sequence numbers cannot be compared.
But every subscriber of a node receives that node's messages in the same
order. A mark names the last event the leader finished on a node by its key
and the wall-clock time it was received. The new leader finds that key in its
own history of the node, nearest to that time (within ``tolerance``, which
absorbs clock skew and delivery delay between replicas), and replays what came
after it.

When the mark is not in the buffer: if the buffer's history of the node starts
after the mark, everything buffered is newer and is replayed; otherwise (this
replica was not subscribed when the mark's event came) events received after
``mark time - tolerance`` are replayed, which may duplicate a few. A node
without a mark had nothing finished by the last record, so all of its buffered
events are replayed.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from .events import EXPIRED, Expiration

__all__ = ["ProgressMark", "ReplayBuffer"]


@dataclass(frozen=True)
class ProgressMark:
    """The last event a leader finished on one node."""

    key: bytes
    received_at: float
    term: int
    # An expired and an hexpired event of one key can arrive in the same read, with the same time.
    kind: str = EXPIRED

    def to_json(self) -> str:
        document = {"key_b64": base64.b64encode(self.key).decode("ascii"),
                    "received_at": self.received_at, "term": self.term}
        if self.kind != EXPIRED:  # marks written before kinds existed read back as expired
            document["kind"] = self.kind
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProgressMark:
        document = json.loads(text)
        return cls(base64.b64decode(document["key_b64"]), float(document["received_at"]), int(document["term"]),
                   str(document.get("kind", EXPIRED)))

    @classmethod
    def of(cls, expiration: Expiration, term: int) -> ProgressMark:
        return cls(expiration.key, expiration.received_at, term, expiration.kind)


class ReplayBuffer:
    def __init__(self, *, window: float, max_events: int) -> None:
        self.window = window
        self.max_events = max_events
        self._history: deque[Expiration] = deque()
        self.per_node: Counter[str] = Counter()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._history)

    def append(self, expirations: Iterable[Expiration]) -> None:
        for expiration in expirations:
            self._history.append(expiration)
            self.per_node[expiration.node] += 1
        self.trim()

    def trim(self, now: float | None = None) -> None:
        """Forget events older than the window, then the oldest beyond ``max_events``."""
        horizon = (time.time() if now is None else now) - self.window
        history = self._history
        while history and history[0].received_at < horizon:
            self._forget(history.popleft())
        while len(history) > self.max_events:
            self.evicted += 1
            self._forget(history.popleft())

    def oldest_age(self, now: float | None = None) -> float:
        if not self._history:
            return 0.0
        return (time.time() if now is None else now) - self._history[0].received_at

    def after(self, marks: dict[str, ProgressMark] | None, *, tolerance: float) -> list[Expiration]:
        """The buffered events that the marks do not cover, in arrival order.

        ``marks`` of ``None`` means the progress could not be read: everything
        buffered is replayed, trading duplicates for safety.
        """
        history = list(self._history)
        if marks is None:
            return history
        start = {node: self._replay_start(history, node, mark, tolerance) for node, mark in marks.items()}
        everything = _Start(after_index=-1)  # a node without a mark: nothing of it was finished
        return [expiration for index, expiration in enumerate(history)
                if not _covers(start.get(expiration.node, everything), index, expiration)]

    def _replay_start(self, history: list[Expiration], node: str, mark: ProgressMark,
                      tolerance: float) -> _Start:
        best_index, best_distance = -1, tolerance
        first_seen: float | None = None
        for index, expiration in enumerate(history):
            if expiration.node != node:
                continue
            if first_seen is None:
                first_seen = expiration.received_at
            distance = abs(expiration.received_at - mark.received_at)
            if expiration.key == mark.key and expiration.kind == mark.kind and distance <= best_distance:
                best_index, best_distance = index, distance
        if best_index >= 0:
            return _Start(after_index=best_index)
        if first_seen is None or first_seen > mark.received_at + tolerance:
            return _Start(after_index=-1)
        return _Start(after_time=mark.received_at - tolerance)

    def _forget(self, expiration: Expiration) -> None:
        self.per_node[expiration.node] -= 1
        if not self.per_node[expiration.node]:
            del self.per_node[expiration.node]


@dataclass(frozen=True)
class _Start:
    after_index: int | None = None
    after_time: float | None = None


def _covers(start: _Start, index: int, expiration: Expiration) -> bool:
    """True when the mark says the old leader already finished this event."""
    if start.after_index is not None:
        return index <= start.after_index
    assert start.after_time is not None
    return expiration.received_at <= start.after_time
