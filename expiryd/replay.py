"""Replay after a leadership change: a buffer of recent expirations, and where the last leader stopped.

Every replica hears every expiration, but only the leader acts. When a leader
dies, the events that expire before the next one takes over, and those the old
leader had received but not finished, reach the followers' subscriptions and
would be lost. So every replica keeps the recent per-node history in a
:class:`ReplayBuffer`, and the leader records how far it got in each node's
sequence as a :class:`ProgressMark` in Redis (see :mod:`expiryd.progress`).
A new leader replays what its buffer holds beyond the marks before it takes
new events::

    buffer = ReplayBuffer(window=15.0, max_bytes=64 << 20, now=clock.now)
    buffer.append(batch)                        # every batch the leader gate sees
    buffer.progressed(at=mark_time)             # a leader's marks reached it: older history may go
    replay = buffer.after(marks, tolerance=2.0)  # on taking over

**Retention.** An event is kept for ``window`` after the last moment a leader was
seen to move its marks, not after it arrived: while no leader makes progress (the
lease's shard stalled, every replica ineligible), nothing is forgotten but by
``max_bytes``, and what the buffer must drop then is counted and logged. An event's size is
estimated as :func:`event_bytes`.

**Identity.** Redis gives Pub/Sub messages no id, and replicas join and
reconnect at different times, so local sequence numbers cannot be compared.
But every subscriber of a node receives that node's messages in the same
order. A mark names the last event the leader finished on a node by its key,
the keys of the node's two events before it, and the time it was received.
The new leader finds the place in its own history of the node where that key
follows those keys: the same event, however late the leader read it (a full
queue, a slow route). Of several such places (a node that repeats the same
expirations in a row), it takes the last it can have heard by the mark's time
plus ``tolerance``, and replays what came after it. Where the keys before do
not match (this replica's history has a gap there), the key nearest the mark's
time within ``tolerance`` is taken.

When the mark is not in the buffer: if the buffer's history of the node starts
after the mark, everything buffered is newer and is replayed; otherwise (this
replica was not subscribed when the mark's event came) events received after
``mark time - tolerance`` are replayed, which may duplicate a few. A node
without a mark had nothing finished by the last record, so all of its buffered
events are replayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .connections import REDIS_FAILURES
from .events import Expiration, event_bytes
from .metrics import Metrics
from .progress import ProgressMark, ProgressStore

__all__ = ["NoReplay", "ProgressMark", "Replay", "ReplayBuffer", "event_bytes", "without_stale_marks"]

# A node whose mark has not moved for this long, while others' have, has left the cluster: every
# subscribed primary's mark moves at least with time (see Completion.quiet).
STALE_MARK_AFTER = 3600.0


def without_stale_marks(marks: dict[str, ProgressMark]) -> dict[str, ProgressMark]:
    """``marks`` less those more than :data:`STALE_MARK_AFTER` older than the newest: nodes long gone."""
    if not marks:
        return marks
    newest = max(mark.received_at for mark in marks.values())
    return {node: mark for node, mark in marks.items() if mark.received_at >= newest - STALE_MARK_AFTER}


log = logging.getLogger("expiryd.replay")


class ReplayBuffer:
    def __init__(self, *, window: float, max_bytes: int, now: Callable[[], float]) -> None:
        self.window = window
        self._now = now
        self.max_bytes = max_bytes
        self.bytes = 0
        self._history: deque[Expiration] = deque()
        self.per_node: Counter[str] = Counter()
        self._evicted = 0
        # When a leader was last seen to move its marks (the cluster's clock).
        self._progressed_at = now()

    def __len__(self) -> int:
        return len(self._history)

    def append(self, expirations: Iterable[Expiration]) -> None:
        for expiration in expirations:
            self._history.append(expiration)
            self.per_node[expiration.node] += 1
            self.bytes += event_bytes(expiration)
        self.trim()

    def progressed(self, *, at: float) -> None:
        """A leader's marks reached ``at`` (the cluster's clock): the history before may age out."""
        self._progressed_at = max(self._progressed_at, at)

    def trim(self, now: float | None = None) -> None:
        """Forget events older than the window before the last progress, then the oldest beyond ``max_bytes``."""
        horizon = min(self._now() if now is None else now, self._progressed_at) - self.window
        history = self._history
        while history and history[0].received_at < horizon:
            self._forget(history.popleft())
        while self.bytes > self.max_bytes and history:
            self._evicted += 1
            self._forget(history.popleft())

    def take_evicted(self) -> int:
        """How many events were evicted by size since the last call."""
        evicted, self._evicted = self._evicted, 0
        return evicted

    def oldest_age(self, now: float | None = None) -> float:
        if not self._history:
            return 0.0
        return (self._now() if now is None else now) - self._history[0].received_at

    def after(self, marks: dict[str, ProgressMark] | None, *, tolerance: float) -> list[Expiration]:
        """The buffered events that the marks do not cover, in arrival order.

        ``marks`` of ``None`` means the progress could not be read: everything
        buffered is replayed, trading duplicates for safety.
        """
        history = list(self._history)
        if marks is None:
            return history
        sequences: dict[str, list[int]] = {}
        for index, expiration in enumerate(history):
            sequences.setdefault(expiration.node, []).append(index)
        start = {node: _replay_start(history, sequences.get(node, []), mark, tolerance) for node, mark in marks.items()}
        everything = _Start(after_index=-1)  # a node without a mark: nothing of it was finished
        return [
            expiration
            for index, expiration in enumerate(history)
            if not _covers(start.get(expiration.node, everything), index, expiration)
        ]

    def _forget(self, expiration: Expiration) -> None:
        self.bytes -= event_bytes(expiration)
        self.per_node[expiration.node] -= 1
        if not self.per_node[expiration.node]:
            del self.per_node[expiration.node]


def _replay_start(history: list[Expiration], sequence: list[int], mark: ProgressMark, tolerance: float) -> _Start:
    """Where replay of one node starts; ``sequence`` is the indexes of the node's events in ``history``."""
    if not sequence:
        return _Start(after_index=-1)
    names_an_event = mark.key != b""  # an idle primary's mark (see Completion.quiet) is a time only
    if names_an_event:
        placed = _place(history, sequence, mark, tolerance)
        if placed is not None:
            return _Start(after_index=placed)
        best_index, best_distance = -1, tolerance
        for index in sequence:
            expiration = history[index]
            distance = abs(expiration.received_at - mark.received_at)
            if expiration.key == mark.key and expiration.kind == mark.kind and distance <= best_distance:
                best_index, best_distance = index, distance
        if best_index >= 0:
            return _Start(after_index=best_index)
    if history[sequence[0]].received_at > mark.received_at + tolerance:
        return _Start(after_index=-1)
    return _Start(after_time=mark.received_at - tolerance)


def _place(history: list[Expiration], sequence: list[int], mark: ProgressMark, tolerance: float) -> int | None:
    """The index in ``history`` of the event ``mark`` names, found by its key and the keys before it.

    Every subscriber of a node hears its events in one order, so the mark's key preceded by the
    mark's ``before`` keys is the same event in any replica's history, however late the leader read
    it. Of several such places (a node that repeats the same expirations in a row), the last that
    this replica can have heard by the mark's time is taken: a subscriber hears an event no later than
    the leader that finished it, give or take the clock tolerance.
    """
    found = None
    for position, index in enumerate(sequence):
        expiration = history[index]
        if expiration.key != mark.key or expiration.kind != mark.kind:
            continue
        if expiration.received_at > mark.received_at + tolerance:
            break
        if _preceded_by(history, sequence, position, mark.before):
            found = index
    return found


def _preceded_by(history: list[Expiration], sequence: list[int], position: int, before: tuple[bytes, ...]) -> bool:
    """Whether the node's events before ``position`` have the keys ``before`` (as far as the history reaches)."""
    for back, key in enumerate(reversed(before), start=1):
        if position - back < 0:
            return True  # the history starts here: nothing contradicts it
        if history[sequence[position - back]].key != key:
            return False
    return True


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


class Replay:
    """A leader gate's replay: the buffer it remembers batches in, and the progress store.

    The gate hands it values: every batch it sees (:meth:`remember`), the
    marks of its own last term when it takes over (:meth:`unfinished`), and a
    term's marks to record (:meth:`record`)::

        replay = Replay(buffer=ReplayBuffer(window=15.0, max_bytes=64 << 20, now=clock.now), store=store,
                        tolerance=2.0, record_interval=1.0, metrics=metrics)
        replay.remember(batch)
        pending = await replay.unfinished(term=8, own=marks_of_term_7)
        await replay.record(term=8, marks=completion.take_marks())
    """

    def __init__(
        self, *, buffer: ReplayBuffer, store: ProgressStore, tolerance: float, record_interval: float, metrics: Metrics
    ) -> None:
        self.record_interval = record_interval
        self._buffer = buffer
        self._store = store
        self._tolerance = tolerance
        self._metrics = metrics
        self._unwritten: tuple[int, dict[str, ProgressMark]] | None = None
        self._reported_nodes: set[str] = set()

    def remember(self, batch: list[Expiration]) -> None:
        if batch:
            self._buffer.append(batch)

    def saw_marks(self, marks: dict[str, ProgressMark]) -> None:
        """A follower read the leader's marks: a leader made progress as late as the newest of them.

        The marks' own time, not the time of reading: marks read for the first time after a stall
        were written before it, and the history since is what the next leader must replay.
        """
        self._progressed(marks)

    async def unfinished(
        self, *, term: int, own: dict[str, ProgressMark]
    ) -> tuple[list[Expiration], dict[str, ProgressMark]]:
        """What the buffer holds beyond the last marks, and those marks: the recorded ones, or ``own`` where newer.

        When the progress cannot be read, everything buffered is replayed, and the marks are ``own``.
        """
        marks = await self._read_marks(own)
        pending = self._buffer.after(marks, tolerance=self._tolerance)
        # Routine at every election; worth a warning only when there is something to replay.
        log.log(
            logging.WARNING if pending else logging.INFO,
            "replaying events no leader finished",
            extra={"term": term, "events": len(pending), "progress": "unreadable" if marks is None else "read"},
        )
        self._metrics.replayed_events.inc(len(pending))
        return pending, own if marks is None else marks

    async def record(self, *, term: int, marks: dict[str, ProgressMark] | None) -> None:
        """Write ``marks`` for ``term``; None means none moved, but a failed write of this term is tried again."""
        if marks is None:
            if self._unwritten is None or self._unwritten[0] != term:
                return
            marks = self._unwritten[1]
        self._unwritten = None
        try:
            written = await asyncio.wait_for(self._store.write(term=term, marks=marks), self.record_interval)
        except REDIS_FAILURES as error:
            self._unwritten = (term, marks)
            self._metrics.progress_writes.labels(result="error").inc()
            log.warning("cannot record progress", extra={"term": term, "reason": error.__class__.__name__})
            return
        self._metrics.progress_writes.labels(result="ok" if written else "stale_term").inc()
        if written:
            self._progressed(marks)

    def _progressed(self, marks: dict[str, ProgressMark]) -> None:
        """The leader's marks reached as far as the newest of them: the buffer's history before may age out."""
        if marks:
            self._buffer.progressed(at=max(mark.received_at for mark in marks.values()))

    def oldest_age(self) -> float:
        """Seconds back the history reaches."""
        return self._buffer.oldest_age()

    def report(self) -> None:
        """Forget what is past the window, and report the buffer's size, age and evictions."""
        buffer = self._buffer
        buffer.trim()
        gauge = self._metrics.replay_buffer_events
        for node in self._reported_nodes - buffer.per_node.keys():
            gauge.labels(node=node).set(0)
        self._reported_nodes = set(buffer.per_node)
        for node, count in buffer.per_node.items():
            gauge.labels(node=node).set(count)
        self._metrics.replay_buffer_oldest_seconds.set(buffer.oldest_age())
        self._metrics.replay_buffer_bytes.set(buffer.bytes)
        self._metrics.memory_bytes.labels(part="replay").set(buffer.bytes)
        evicted = buffer.take_evicted()
        if evicted:
            self._metrics.replay_buffer_evicted.inc(evicted)
            log.warning(
                "replay buffer full: oldest events evicted before any leader passed them",
                extra={"evicted": evicted, "max_bytes": buffer.max_bytes},
            )

    async def _read_marks(self, own: dict[str, ProgressMark]) -> dict[str, ProgressMark] | None:
        """The recorded marks, each replaced by ``own`` where that is newer; None if unreadable."""
        try:
            marks = await asyncio.wait_for(self._store.read(), self.record_interval * 2)
        except (*REDIS_FAILURES, ValueError, KeyError) as error:
            log.error(
                "cannot read the last leader's progress: replaying the whole buffer",
                extra={"reason": error.__class__.__name__},
            )
            return None
        for node, mark in own.items():
            if node not in marks or mark.term >= marks[node].term:
                marks[node] = mark
        # Not carried on: the progress hash would otherwise keep a field for every node that ever was.
        return without_stale_marks(marks)


class NoReplay:
    """Replay switched off: nothing is remembered, replayed or recorded."""

    # Nothing to record: the gate's recorder only wakes now and then.
    record_interval = 60.0

    def remember(self, batch: list[Expiration]) -> None:
        pass

    def saw_marks(self, marks: dict[str, ProgressMark]) -> None:
        pass

    def oldest_age(self) -> float:
        return 0.0

    async def unfinished(
        self, *, term: int, own: dict[str, ProgressMark]
    ) -> tuple[list[Expiration], dict[str, ProgressMark]]:
        return [], own

    async def record(self, *, term: int, marks: dict[str, ProgressMark] | None) -> None:
        pass

    def report(self) -> None:
        pass
