"""Which expirations are finished, per node, in the order they arrived.

Routes work concurrently and retry, so events finish out of order. A progress
mark (see :mod:`expiryd.replay`) may only name an event when everything before
it on the same node is finished too, or a new leader would skip the unfinished
ones. :class:`Completion` keeps each node's unfinished expirations in arrival
order and moves the node's mark past every finished one at the front::

    completion = Completion(term=7, marks=last_marks)
    first, second = completion.add(e1), completion.add(e2)     # same node
    completion.finish([second])
    completion.take_marks()         # None: e1 is not finished, no mark moved
    completion.finish([first])
    completion.take_marks()         # {node: mark naming e2, ...}: a copy, to record
    final = completion.close()      # the term is over: its marks, for the next term to start from

"Finished" means the event needs no more work from any leader: handled,
dead-lettered, shed and counted, or matched by no route.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .events import Expiration
from .progress import MARK_CONTEXT, ProgressMark

__all__ = ["Completion", "Pending"]

# Swept expirations (see :mod:`expiryd.sweep`) finish in a sequence of their own: they were found, not
# received from a node, so they say nothing about how far the leader got in any node's sequence.
_SWEPT = ""


class Pending:
    """One expiration on its way through the routes, and whether it is finished."""

    __slots__ = ("done", "expiration")

    def __init__(self, expiration: Expiration) -> None:
        self.expiration = expiration
        self.done = False


class Completion:
    def __init__(self, *, term: int, marks: dict[str, ProgressMark]) -> None:
        self.term = term
        self._marks = dict(marks)
        self._changed = False
        self._closed = False
        self._unfinished: dict[str, deque[Pending]] = {}
        # Node → the time its gap began (epoch seconds).
        self._frozen: dict[str, float] = {}
        # Node → the mark a freeze moved back from: where the node had got, should its gap be accepted.
        self._passed: dict[str, ProgressMark] = {}
        # Node → the keys of its last finished events, the mark's own last: the context a mark carries.
        self._recent: dict[str, deque[bytes]] = {}

    def add(self, expiration: Expiration) -> Pending:
        pending = Pending(expiration)
        sequence = _SWEPT if expiration.swept else expiration.node
        queue = self._unfinished.get(sequence)
        if queue is None:
            queue = self._unfinished[sequence] = deque()
        queue.append(pending)
        return pending

    def finish(self, pendings: Iterable[Pending]) -> None:
        nodes = set()
        for pending in pendings:
            pending.done = True
            nodes.add(_SWEPT if pending.expiration.swept else pending.expiration.node)
        if self._closed:
            return
        for node in nodes - self._frozen.keys():
            self._advance(node)

    def quiet(self, nodes: Iterable[str], *, through: float, idle_for: float) -> None:
        """Move the marks of idle ``nodes`` up to ``through`` (epoch seconds).

        A node is idle when it has nothing unfinished and its mark is more than
        ``idle_for`` older than ``through``.

        Everything this replica received from such a node before ``through`` is
        finished, so the next leader need not replay it, and a replica whose
        history starts before ``through`` covers this node (see
        :mod:`expiryd.succession`) even when the node has expired nothing for a
        long time. The mark names no event (its key is empty): a new leader
        replays what it received from ``through`` less the clock tolerance on,
        which on an idle node is nothing; a busy node's mark names its last
        finished event, which a new leader finds exactly.
        """
        if self._closed:
            return
        for node in nodes:
            if node in self._frozen or self._unfinished.get(node):
                continue
            mark = self._marks.get(node)
            if mark is None or mark.received_at < through - idle_for:
                self._marks[node] = ProgressMark(b"", through, self.term)
                self._changed = True

    def freeze(self, node: str, *, heard_until: float) -> None:
        """This replica's history of ``node`` has a gap from ``heard_until``: keep its mark before the gap.

        Until :meth:`thaw`, finished events of ``node`` do not move its mark, so
        a replica that heard the gap can take over and replay it. A quiet mark
        already past ``heard_until`` moves back to it.
        """
        self._frozen[node] = min(heard_until, self._frozen.get(node, heard_until))
        mark = self._marks.get(node)
        if mark is not None and mark.received_at > heard_until:
            self._passed.setdefault(node, mark)
            self._marks[node] = ProgressMark(b"", heard_until, self.term)
            self._changed = True

    def thaw(self, node: str) -> None:
        """The gap in ``node``'s history is accepted: its mark moves again, to where it had got before."""
        self._frozen.pop(node, None)
        if self._closed:
            return
        passed = self._passed.pop(node, None)
        if passed is not None:
            self._marks[node] = passed
            self._changed = True
        if node in self._unfinished:
            self._advance(node)

    def start_from(self, marks: dict[str, ProgressMark]) -> None:
        """Take ``marks`` (the last leader's, read on taking over) for the nodes that have not moved yet."""
        for node, mark in marks.items():
            if node not in self._unfinished and node not in self._frozen:
                self._marks[node] = mark

    def marks(self) -> dict[str, ProgressMark]:
        return dict(self._marks)

    def frozen(self) -> dict[str, float]:
        """The frozen nodes, each with the time its gap began."""
        return dict(self._frozen)

    def take_marks(self) -> dict[str, ProgressMark] | None:
        """Every node's mark, if one moved since the last call; else None."""
        if not self._changed:
            return None
        self._changed = False
        return dict(self._marks)

    def close(self) -> dict[str, ProgressMark]:
        """Stop moving marks: this term is over, and its late finishes are not recorded. Return the marks."""
        self._closed = True
        return dict(self._marks)

    def unfinished(self) -> int:
        return sum(len(queue) for queue in self._unfinished.values())

    def _advance(self, node: str) -> None:
        queue = self._unfinished[node]
        if node == _SWEPT:
            while queue and queue[0].done:
                queue.popleft()
            return
        recent = self._recent.get(node)
        if recent is None:
            recent = self._recent[node] = deque(maxlen=MARK_CONTEXT + 1)
        last = None
        while queue and queue[0].done:
            last = queue.popleft()
            recent.append(last.expiration.key)
        if last is not None:
            self._marks[node] = ProgressMark.of(last.expiration, self.term, before=tuple(recent)[:-1])
            self._changed = True

    def keys(self) -> set[bytes]:
        """The keys of every unfinished expiration."""
        return {pending.expiration.key for queue in self._unfinished.values() for pending in queue if not pending.done}
