"""What the parts that act only for the leader need of the election (see :mod:`expiryd.election`).

The :class:`~expiryd.election.Elector` is the one implementation of :class:`Leadership`; a test
passes anything with the same methods::

    class Fixed:
        def term(self) -> int | None:
            return 7

    RouteDelivery(..., leadership=Fixed(), ...)

A change of term reaches the leader gate as a :class:`TermSignal`, which the elector announces on
and the gate takes from between batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Leadership", "LeadershipHandOver", "TermChange", "TermSignal"]


class Leadership(Protocol):
    def term(self) -> int | None:
        """The fencing token while this replica leads and may still act, else None; read before every act."""
        ...


class LeadershipHandOver(Leadership, Protocol):
    def hand_over(self, reason: str) -> None:
        """Stop leading now and release the lease, so that a better-placed replica takes over."""
        ...


class _Wakeable(Protocol):
    def wake(self) -> None: ...


@dataclass(frozen=True)
class TermChange:
    """This replica's term is now ``term`` (None: it follows)."""

    term: int | None


class TermSignal:
    """The elector's announcements of this replica's term, for the leader gate.

    The elector announces each change as it makes it: elected, stepped down, handed over. Each
    announcement wakes the merged queue, so that a new leader replays what the last one left
    without waiting for an event to arrive. Only the latest announcement counts::

        signal = TermSignal(queue=queue)
        signal.announce(8)            # in the elector
        signal.take()                 # in the gate, after each get(): TermChange(term=8)
        signal.take()                 # None: nothing new
    """

    def __init__(self, *, queue: _Wakeable) -> None:
        self._queue = queue
        self._latest: TermChange | None = None

    def announce(self, term: int | None) -> None:
        self._latest = TermChange(term)
        self._queue.wake()

    def take(self) -> TermChange | None:
        """The latest announcement since the last take, if any."""
        latest, self._latest = self._latest, None
        return latest
