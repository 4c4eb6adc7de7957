"""The cluster's clock: wall-clock time as the Redis nodes keep it, whatever this host's clock says.

Every time expiryd compares across replicas (a progress mark against a
follower's history, a coverage report's age) or against Redis (a key's due
time from ``PEXPIRETIME``) is read from one :class:`ClusterClock`. Each node
subscription measures its node's offset with ``TIME`` and reports it here; the
clock runs at this host's wall clock plus the median offset. So two replicas
whose own clocks are seconds apart still agree on what time it is, and a touch
lands when the key's primary says the key is due::

    clock = ClusterClock()
    clock.observe("10.0.0.7:6379", sample_offset(sent=t0, node_time=1764000000.5, received=t1))
    clock.now()          # time.time() + the median of the nodes' offsets
    clock.offset()       # 2.003: this host's clock runs about 2 s behind the cluster's
    clock.measured       # False until a node has answered TIME

A sample's offset is the node's time less the midpoint of the round trip that
asked for it; the sample with the shortest round trip of the last few is kept
per node, the way NTP filters its samples, so one slow answer does not move
the clock.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["ClockSample", "ClusterClock", "sample_offset"]

# Samples kept per node; the one with the shortest round trip wins.
_SAMPLES_KEPT = 8


@dataclass(frozen=True)
class ClockSample:
    """One ``TIME`` answer: the node's clock less this host's, and how long the question took."""

    offset: float
    round_trip: float


def sample_offset(*, sent: float, node_time: float, received: float) -> ClockSample:
    """The offset of a node's clock, from a ``TIME`` sent at ``sent`` and answered at ``received`` (host clock)."""
    return ClockSample(offset=node_time - (sent + received) / 2, round_trip=max(0.0, received - sent))


class ClusterClock:
    def __init__(self) -> None:
        self._samples: dict[str, deque[ClockSample]] = {}
        # Worked out when a sample comes or goes, not at every reading: now() is on the hot path.
        self._offset = 0.0

    @property
    def measured(self) -> bool:
        """True once some node's clock has been read: before that, :meth:`now` is this host's guess."""
        return bool(self._samples)

    def observe(self, node: str, sample: ClockSample) -> None:
        self._samples.setdefault(node, deque(maxlen=_SAMPLES_KEPT)).append(sample)
        self._offset = self._median()

    def forget(self, node: str) -> None:
        self._samples.pop(node, None)
        self._offset = self._median()

    def node_offset(self, node: str) -> float | None:
        """The node's clock less this host's, in seconds (None before its first sample)."""
        samples = self._samples.get(node)
        if not samples:
            return None
        return min(samples, key=lambda sample: sample.round_trip).offset

    def offsets(self) -> dict[str, float]:
        return {node: offset for node in self._samples if (offset := self.node_offset(node)) is not None}

    def offset(self) -> float:
        """The cluster's clock less this host's: the median over the nodes measured (0 before the first)."""
        return self._offset

    def now(self) -> float:
        """Epoch seconds by the cluster's clock."""
        return time.time() + self._offset

    def _median(self) -> float:
        offsets = list(self.offsets().values())
        return statistics.median(offsets) if offsets else 0.0

    def node_lead(self, node: str) -> float:
        """How far ``node``'s clock runs ahead of the cluster's (negative: behind); 0 when unknown."""
        own = self.node_offset(node)
        return 0.0 if own is None else own - self.offset()
