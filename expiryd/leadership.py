"""What the parts that act only for the leader need of the election (see :mod:`expiryd.election`).

The :class:`~expiryd.election.Elector` is the one implementation; a test passes anything with the
same methods::

    class Fixed:
        def term(self) -> int | None:
            return 7

    RouteDelivery(..., leadership=Fixed(), ...)
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Leadership", "LeadershipHandOver"]


class Leadership(Protocol):
    def term(self) -> int | None:
        """The fencing token while this replica leads and may still act, else None; read before every act."""
        ...


class LeadershipHandOver(Leadership, Protocol):
    def hand_over(self, reason: str) -> None:
        """Stop leading now and release the lease, so that a better-placed replica takes over."""
        ...
