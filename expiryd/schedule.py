"""The schedule: when each key a route will handle is due, kept in memory and ordered for firing.

Redis announces an expiration only when it deletes the key, and its sampling
expiry cycle falls minutes behind on a keyspace with many keys that carry a
TTL. So expiryd learns every routed key's due time (see
:mod:`expiryd.scheduler`) and the leader touches the key at that moment, which
makes Redis delete it and publish ``expired`` at once. This module is only the
bookkeeping, with no I/O, so that it can be reasoned about and tested alone::

    schedule = Schedule(max_keys=1_000_000, horizon=3600.0, keep_due_for=15.0)
    schedule.add(b"order:42", due=1_764_000_000.250, now=time.time())   # Admission.SCHEDULED
    for key, due in schedule.pop_due(time.time()):
        ...                                    # touch key on its primary
    schedule.settle(b"order:42")               # its expired event came: 1764000000.25

**Layout.** Every replica keeps the whole schedule, so a new leader can fire
on time from its first second. A key's current due time lives in one dict
(the key's bytes, a float and the dict's slot: about 150 bytes a key with a
25-byte name, measured).
Entries are grouped in one list per second of due time, and only the lists
of the current second are sorted into a heap, so a million keys cost one list
slot each for ordering rather than a heap tuple each. A key whose TTL changes
is listed again under its new second; the old listing is skipped when its
second comes, because the dict no longer agrees with it.

**Firing.** :meth:`pop_due` returns the keys that are due and moves them to a
list of fired keys, where they stay until their ``expired`` event is seen
(:meth:`settle`) or ``keep_due_for`` has passed. A replica that becomes leader
touches everything still there (:meth:`overdue`): the keys that came due while
no one led.

**Bounds.** At most ``max_keys`` keys, and none due more than ``horizon``
ahead. A key refused by either bound is not lost: Redis still expires it, on
its own timing, and the caller counts it.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque

__all__ = ["Admission", "Schedule"]


class Admission(enum.Enum):
    SCHEDULED = "scheduled"
    BEYOND_HORIZON = "beyond_horizon"
    FULL = "full"


class Schedule:
    def __init__(self, *, max_keys: int, horizon: float, keep_due_for: float) -> None:
        self.max_keys = max_keys
        self.horizon = horizon
        self.keep_due_for = keep_due_for
        self._due: dict[bytes, float] = {}
        self._seconds: dict[int, list[bytes]] = {}
        self._second_heap: list[int] = []
        self._listed = 0  # entries in _seconds, stale ones included
        # Entries of seconds already opened: (fire at, key, due).
        self._active: list[tuple[float, bytes, float]] = []
        self._opened_until = 0  # seconds below this are opened
        self._fired: dict[bytes, float] = {}
        self._fired_order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        """Keys waiting for their due time."""
        return len(self._due)

    @property
    def fired(self) -> int:
        """Keys that came due and whose ``expired`` event has not been seen yet."""
        return len(self._fired)

    def add(self, key: bytes, due: float, *, now: float) -> Admission:
        """Schedule ``key`` at ``due`` (epoch seconds), replacing its earlier due time if any."""
        if due > now + self.horizon:
            self._due.pop(key, None)
            return Admission.BEYOND_HORIZON
        if key not in self._due and len(self._due) >= self.max_keys:
            return Admission.FULL
        self._fired.pop(key, None)
        self._due[key] = due
        self._place(key, due, fire_at=due)
        return Admission.SCHEDULED

    def retry(self, key: bytes, due: float, *, at: float) -> None:
        """Fire ``key`` again at ``at``: its touch failed, or came before Redis's clock reached ``due``."""
        self._fired.pop(key, None)
        self._due[key] = due
        heapq.heappush(self._active, (at, key, due))

    def discard(self, key: bytes) -> None:
        """Forget ``key``: it lost its TTL, or no longer exists."""
        self._due.pop(key, None)
        self._fired.pop(key, None)

    def settle(self, key: bytes) -> float | None:
        """``key`` expired: return its due time if it was known, and forget it."""
        due = self._fired.pop(key, None)
        if due is None:
            due = self._due.pop(key, None)
        return due

    def next_due(self) -> float | None:
        """When :meth:`pop_due` may next return something (a second's start, or an entry's time)."""
        candidates = []
        if self._active:
            candidates.append(self._active[0][0])
        if self._second_heap:
            candidates.append(float(self._second_heap[0]))
        return min(candidates) if candidates else None

    def pop_due(self, now: float, *, limit: int = 10_000) -> list[tuple[bytes, float]]:
        """Up to ``limit`` keys due by ``now``, earliest first, as ``(key, due)``; they move to the fired list."""
        self._open_seconds(now)
        due_keys: list[tuple[bytes, float]] = []
        active = self._active
        while active and active[0][0] <= now and len(due_keys) < limit:
            _, key, due = heapq.heappop(active)
            if self._due.get(key) != due:
                continue  # rescheduled, settled or discarded since it was listed
            del self._due[key]
            self._fired[key] = due
            self._fired_order.append((due, key))
            due_keys.append((key, due))
        self._forget_old_fired(now)
        return due_keys

    def overdue(self) -> list[tuple[bytes, float]]:
        """Every fired key whose ``expired`` event has not been seen, as ``(key, due)``."""
        return list(self._fired.items())

    def _place(self, key: bytes, due: float, *, fire_at: float) -> None:
        second = int(fire_at)
        if second < self._opened_until:
            heapq.heappush(self._active, (fire_at, key, due))
            return
        listed = self._seconds.get(second)
        if listed is None:
            listed = self._seconds[second] = []
            heapq.heappush(self._second_heap, second)
        listed.append(key)
        self._listed += 1
        if self._listed > 2 * len(self._due) + 100_000:
            self._compact()

    def _open_seconds(self, now: float) -> None:
        """Sort the entries of every second that has begun into the heap of entries to fire."""
        current = int(now)
        heap = self._second_heap
        opened = False
        while heap and heap[0] <= current:
            second = heapq.heappop(heap)
            keys = self._seconds.pop(second)
            self._listed -= len(keys)
            due_of = self._due.get
            self._active.extend(
                (due, key, due) for key in keys if (due := due_of(key)) is not None and int(due) == second
            )
            opened = True
        if opened:
            heapq.heapify(self._active)  # once, in C: a push per key cost more than the rest of firing
        self._opened_until = max(self._opened_until, current + 1)

    def _forget_old_fired(self, now: float) -> None:
        oldest_kept = now - self.keep_due_for
        order = self._fired_order
        while order and order[0][0] < oldest_kept:
            due, key = order.popleft()
            if self._fired.get(key) == due:
                del self._fired[key]

    def _compact(self) -> None:
        """Relist every key once: TTLs that kept changing left more stale listings than live ones."""
        self._seconds.clear()
        self._second_heap.clear()
        self._listed = 0
        for key, due in self._due.items():
            if int(due) >= self._opened_until:
                self._seconds.setdefault(int(due), []).append(key)
                self._listed += 1
        self._second_heap = list(self._seconds)
        heapq.heapify(self._second_heap)
