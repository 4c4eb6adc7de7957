"""The schedule: when each key a route will handle is due, kept in memory and ordered for firing.

Redis announces an expiration only when it deletes the key, and its sampling
expiry cycle falls minutes behind on a keyspace with many keys that carry a
TTL. So expiryd learns every routed key's due time (see
:mod:`expiryd.scheduler`) and the leader touches the key at that moment, which
makes Redis delete it and publish ``expired`` at once. This module is only the
bookkeeping, with no I/O, so that it can be reasoned about and tested alone::

    schedule = Schedule(max_bytes=64 << 20, horizon=3600.0, keep_due_for=15.0)
    schedule.add(b"order:42", due=1_764_000_000.250, now=time.time())   # Admission.SCHEDULED
    for key, due in schedule.pop_due(time.time()):
        ...                                    # touch key on its primary
    schedule.settle(b"order:42")               # its expired event came: 1764000000.25

**Layout.** Every replica keeps the whole schedule, so a new leader can fire
on time from its first second, and so its size per key decides how many keys
a replica can hold. It holds no Python object per key (an object costs more
than the key's name, and a dict entry more again):

* the **index**, 64 open-addressing hash tables in flat arrays: each key's
  64-bit hash (Python's ``hash`` of its bytes) and its due time in
  milliseconds, as an offset from a base that moves forward as time does,
  negated once the key has fired. 12 bytes a slot, at most 70 % of the
  slots used.
* the **arenas**, one ``bytearray`` per second of due time holding the
  names of the keys due in that second, each behind its length.

A key whose TTL changes is written again in its new second's arena; its old
entry stays where it was and is skipped when that second opens, because the
index no longer agrees with it (lazy cancellation, as Kafka's timing wheel
does). Arenas full of such stale entries are rewritten once they outnumber
the live ones. About 45 bytes a key with a 25-byte name in these
structures, 58.2 MB per million keys as a follower's resident memory
(``python -m bench memory``; a dict of Python objects took 150.5 MB).

Two keys whose 64-bit hashes are equal (a chance of about one in 40 million
that any two of a million keys do) share a slot: one of them then fires on Redis's own timing,
late rather than lost, like any key the schedule does not hold.

**Firing.** When a second begins, its arena's live entries are sorted into a
small heap; :meth:`pop_due` returns the keys that are due and marks them
*fired* in the index, where they stay until their ``expired`` event is seen
(:meth:`settle`) or ``keep_due_for`` has passed. A replica that becomes leader
touches everything still there (:meth:`overdue`): the keys that came due
while no one led.

**Bounds.** At most ``max_bytes`` of index and arenas, and no key due more
than ``horizon`` ahead. A key refused by either bound is not lost: Redis
still expires it, on its own timing, and the caller counts it.
"""

from __future__ import annotations

import enum
import heapq
from array import array
from collections import deque
from collections.abc import Iterable, Iterator

__all__ = ["Admission", "Schedule"]

# Horizons longer than this could not be held as 32-bit millisecond offsets from one base.
MAX_HORIZON = 7 * 86_400.0

_EMPTY = 0
_OFFSET_LIMIT = (1 << 31) - 1
_REBASE_BACK_MS = 2 * 86_400_000  # a new base lies this far before the due time that moved it
_NEW, _MOVED, _SAME, _REFUSED = range(4)  # what a put did
_MAX_LOAD = 0.7
_GROWTH = 1.5
_TABLES = 64  # a power of two
_INITIAL_SLOTS = 64
_SLOT_BYTES = 12  # an int64 fingerprint and an int32 offset
_LONG_NAME = 0xFF  # a name of 255 bytes or more: its length follows in four bytes
_ACTIVE_ENTRY_BYTES = 120  # a tuple of the heap of opened seconds, with its key's bytes object


class Admission(enum.Enum):
    SCHEDULED = "scheduled"
    BEYOND_HORIZON = "beyond_horizon"
    FULL = "full"


def _fingerprint(key: bytes) -> int:
    """The key's hash, never an empty slot's 0."""
    return hash(key) or 2


def _append_name(arena: bytearray, key: bytes) -> None:
    size = len(key)
    if size < _LONG_NAME:
        arena.append(size)
    else:
        arena.append(_LONG_NAME)
        arena += size.to_bytes(4, "little")
    arena += key


def _names(arena: bytearray, position: int = 0) -> Iterator[tuple[bytes, int]]:
    """Each name written from ``position`` on, with where the next one starts."""
    data = bytes(arena)  # slices of bytes are bytes: one copy per name, not two
    end = len(data)
    while position < end:
        size = data[position]
        position += 1
        if size == _LONG_NAME:
            size = int.from_bytes(data[position : position + 4], "little")
            position += 4
        yield data[position : position + size], position + size
        position += size


class _Index:
    """Each key's due time in ms, by fingerprint, and whether it has fired: no object per key.

    The keys are spread over tables by their fingerprint's low bits, so that
    growing one rehashes a small part of them: rehashing a million keys in
    Python takes over a second, which would hold the event loop (and the
    subscriptions' watchdogs) that long.
    """

    def __init__(self, *, tables: int = _TABLES, slots: int = _INITIAL_SLOTS) -> None:
        self.live = 0  # waiting or fired
        self.fired = 0
        self.nbytes = 0
        self.mask = tables - 1
        self.tables = [_Table(self, slots) for _ in range(tables)]

    def table(self, fingerprint: int) -> _Table:
        """The table that holds ``fingerprint``, for a caller that asks it more than once."""
        return self.tables[fingerprint & self.mask]

    def state(self, fingerprint: int) -> int:
        """The key's due time in ms, negated once it has fired; 0 if the key is not held."""
        return self.tables[fingerprint & self.mask].state(fingerprint)

    def put(self, fingerprint: int, due_ms: int, *, room: bool = True) -> int:
        """Hold the key as waiting for ``due_ms``: :data:`_NEW`, :data:`_MOVED` or :data:`_SAME`.

        :data:`_REFUSED` if the key is new and there is no ``room``.
        """
        return self.tables[fingerprint & self.mask].put(fingerprint, due_ms, room=room)

    def fire(self, fingerprint: int, due_ms: int) -> bool:
        """Mark the key fired, if it is waiting for ``due_ms``."""
        return self.tables[fingerprint & self.mask].fire(fingerprint, due_ms)

    def remove(self, fingerprint: int, *, fired_at: int = 0) -> int:
        """Forget the key (only if it fired for ``fired_at`` ms, when given); its :meth:`state`, 0 if none."""
        return self.tables[fingerprint & self.mask].remove(fingerprint, fired_at=fired_at)


class _Table:
    """One table of the index: linear probing, with deletion by shifting the entries behind back.

    No tombstones, so a table whose keys come and go never needs rebuilding. A
    slot's offset from :attr:`base_ms` is positive while the key waits, and
    negated once it has fired.
    """

    def __init__(self, index: _Index, slots: int) -> None:
        self._index = index  # the counts are the whole index's
        self.base_ms = 0
        self._live = 0
        self._slots = 0
        self._allocate(slots)

    def _allocate(self, slots: int) -> None:
        self._index.nbytes += (slots - self._slots) * _SLOT_BYTES
        self._slots = slots
        self._limit = int(_MAX_LOAD * slots)
        self._prints = array("q", bytes(8 * slots))
        self._offsets = array("i", bytes(4 * slots))

    def _find(self, fingerprint: int) -> int:
        """The slot holding ``fingerprint``, or ``~slot`` of the empty one where it would go."""
        prints, slots = self._prints, self._slots
        slot = fingerprint % slots
        while True:
            value = prints[slot]
            if value == fingerprint:
                return slot
            if value == _EMPTY:
                return ~slot
            slot += 1
            if slot == slots:
                slot = 0

    def state(self, fingerprint: int) -> int:
        """The key's due time in ms, negated once it has fired; 0 if the key is not held."""
        slot = self._find(fingerprint)
        if slot < 0:
            return 0
        offset = self._offsets[slot]
        return offset + self.base_ms if offset > 0 else offset - self.base_ms

    def put(self, fingerprint: int, due_ms: int, *, room: bool = True) -> int:
        """Hold the key as waiting for ``due_ms``: :data:`_NEW`, :data:`_MOVED` or :data:`_SAME`.

        :data:`_REFUSED` if the key is new and there is no ``room``.
        """
        offset = due_ms - self.base_ms
        if not 0 < offset <= _OFFSET_LIMIT:
            self._rebase(due_ms)
            offset = due_ms - self.base_ms
        slot = self._find(fingerprint)
        if slot >= 0:
            held = self._offsets[slot]
            if held == offset:
                return _SAME
            if held < 0:
                self._index.fired -= 1
            self._offsets[slot] = offset
            return _MOVED
        if not room:
            return _REFUSED
        slot = ~slot
        self._prints[slot] = fingerprint
        self._offsets[slot] = offset
        self._live += 1
        self._index.live += 1
        if self._live > self._limit:
            self._resize()
        return _NEW

    def fire(self, fingerprint: int, due_ms: int) -> bool:
        """Mark the key fired, if it is waiting for ``due_ms``."""
        slot = self._find(fingerprint)
        if slot < 0 or self._offsets[slot] != due_ms - self.base_ms:
            return False
        self._offsets[slot] = -self._offsets[slot]
        self._index.fired += 1
        return True

    def remove(self, fingerprint: int, *, fired_at: int = 0) -> int:
        """Forget the key (only if it fired for ``fired_at`` ms, when given); its :meth:`state`, 0 if none."""
        slot = self._find(fingerprint)
        if slot < 0:
            return 0
        offset = self._offsets[slot]
        if fired_at and offset != self.base_ms - fired_at:
            return 0
        if offset < 0:
            self._index.fired -= 1
        self._live -= 1
        self._index.live -= 1
        self._close_gap(slot)
        return offset + self.base_ms if offset > 0 else offset - self.base_ms

    def _close_gap(self, gap: int) -> None:
        """Empty ``gap``, moving back each later entry of its run that may no longer be found past it."""
        prints, offsets, slots = self._prints, self._offsets, self._slots
        slot = gap
        while True:
            slot += 1
            if slot == slots:
                slot = 0
            value = prints[slot]
            if value == _EMPTY:
                break
            home = value % slots
            # The entry may stay only if its home lies cyclically after the gap and at or before it.
            if (home <= gap < slot) or (slot < home <= gap) or (gap < slot < home):
                prints[gap] = value
                offsets[gap] = offsets[slot]
                gap = slot
        prints[gap] = _EMPTY

    def _resize(self) -> None:
        """Rehash into a table half again as large."""
        prints, offsets = self._prints, self._offsets
        self._allocate(int(self._slots * _GROWTH))
        new_prints, new_offsets, slots = self._prints, self._offsets, self._slots
        for value, offset in zip(prints, offsets):
            if value != _EMPTY:
                slot = value % slots
                while new_prints[slot] != _EMPTY:
                    slot += 1
                    if slot == slots:
                        slot = 0
                new_prints[slot] = value
                new_offsets[slot] = offset

    def _rebase(self, due_ms: int) -> None:
        """Move the base to just before ``due_ms``: every due time held lies within a horizon of it."""
        new_base = due_ms - _REBASE_BACK_MS
        shift = new_base - self.base_ms
        prints, offsets = self._prints, self._offsets
        for slot, value in enumerate(prints):
            if value != _EMPTY:
                offset = offsets[slot]
                moved = max(1, abs(offset) - shift)  # what is older than the new base is due at once
                offsets[slot] = moved if offset > 0 else -moved
        self.base_ms = new_base


class _Fired:
    """The keys one :meth:`Schedule.pop_due` fired: names for a new leader to touch, fingerprints to forget them by."""

    __slots__ = ("dues", "names", "prints")

    def __init__(self) -> None:
        self.dues = array("q")
        self.prints = array("q")
        self.names = bytearray()

    def add(self, key: bytes, fingerprint: int, due_ms: int) -> None:
        self.dues.append(due_ms)
        self.prints.append(fingerprint)
        _append_name(self.names, key)

    @property
    def nbytes(self) -> int:
        return 16 * len(self.dues) + len(self.names)


class Schedule:
    def __init__(self, *, max_bytes: int, horizon: float, keep_due_for: float) -> None:
        if horizon > MAX_HORIZON:
            raise ValueError(f"horizon must be at most {MAX_HORIZON:.0f} s")
        self.max_bytes = max_bytes
        self.horizon = horizon
        self.keep_due_for = keep_due_for
        self._index = _Index()
        self._arenas: dict[int, bytearray] = {}
        self._arena_bytes = 0
        self._second_heap: list[int] = []
        self._listed = 0  # entries in the arenas, stale ones included
        # Entries of seconds already opened: (fire at, key, due in ms).
        self._active: list[tuple[float, bytes, int]] = []
        self._opened_until = 0  # seconds below this are opened
        # Keys fired, in the order they fired: (due times in ms, their names), one pair per pop_due.
        self._fired_log: deque[_Fired] = deque()
        self._fired_log_head = 0  # the first of the first batch's entries not yet forgotten
        self._fired_log_bytes = 0

    def __len__(self) -> int:
        """Keys waiting for their due time."""
        return self._index.live - self._index.fired

    @property
    def fired(self) -> int:
        """Keys that came due and whose ``expired`` event has not been seen yet."""
        return self._index.fired

    @property
    def nbytes(self) -> int:
        """Bytes held: the index, the arenas, the keys fired and the heap of the seconds opened."""
        return self._index.nbytes + self._arena_bytes + self._fired_log_bytes + _ACTIVE_ENTRY_BYTES * len(self._active)

    def add(self, key: bytes, due: float, *, now: float) -> Admission:
        """Schedule ``key`` at ``due`` (epoch seconds), replacing its earlier due time if any."""
        counts = self.add_many([(key, due)], now=now)
        return next(admission for admission, count in counts.items() if count)

    def add_many(self, entries: Iterable[tuple[bytes, float]], *, now: float) -> dict[Admission, int]:
        """:meth:`add` for each ``(key, due)``, in one call (learning adds thousands at a time); counts by outcome."""
        index, tables, mask = self._index, self._index.tables, self._index.mask
        arenas, second_heap, active = self._arenas, self._second_heap, self._active
        latest, opened_until, push = now + self.horizon, self._opened_until, heapq.heappush
        scheduled = beyond = full = 0
        for key, due in entries:
            fingerprint = hash(key) or 2
            table = tables[fingerprint & mask]
            if due > latest:
                if table.state(fingerprint) > 0:
                    table.remove(fingerprint)
                beyond += 1
                continue
            due_ms = round(due * 1000)
            held = self._arena_bytes + index.nbytes + self._fired_log_bytes + _ACTIVE_ENTRY_BYTES * len(active)
            put = table.put(fingerprint, due_ms, room=held < self.max_bytes)
            if put == _REFUSED:
                full += 1
                continue
            scheduled += 1
            if put == _SAME:
                continue  # already listed at this time
            second = due_ms // 1000
            if second < opened_until:
                push(active, (due_ms / 1000, key, due_ms))
                continue
            arena = arenas.get(second)
            if arena is None:
                arena = arenas[second] = bytearray()
                push(second_heap, second)
            size = len(key)
            if size < _LONG_NAME:
                arena.append(size)
                arena += key
                self._arena_bytes += size + 1
            else:
                _append_name(arena, key)
                self._arena_bytes += size + 5
            self._listed += 1
            if self._listed > 2 * (index.live - index.fired) + 100_000:
                self._compact()
        return {Admission.SCHEDULED: scheduled, Admission.BEYOND_HORIZON: beyond, Admission.FULL: full}

    def retry(self, key: bytes, due: float, *, at: float) -> None:
        """Fire ``key`` again at ``at``: its touch failed, or came before Redis's clock reached ``due``."""
        due_ms = round(due * 1000)
        self._index.put(_fingerprint(key), due_ms)
        heapq.heappush(self._active, (at, key, due_ms))

    def holds(self, key: bytes) -> bool:
        """Whether ``key`` waits for its due time or has fired and not yet been seen expiring."""
        return self._index.state(hash(key) or 2) != 0

    def discard(self, key: bytes) -> None:
        """Forget ``key``: it lost its TTL, or no longer exists."""
        self._index.remove(_fingerprint(key))

    def settle(self, key: bytes) -> float | None:
        """``key`` expired: return its due time if it was known, and forget it."""
        state = self._index.remove(hash(key) or 2)
        return abs(state) / 1000 if state else None

    def next_due(self) -> float | None:
        """When :meth:`pop_due` may next return something (a second's start, or an entry's time)."""
        candidates = []
        if self._active:
            candidates.append(self._active[0][0])
        if self._second_heap:
            candidates.append(float(self._second_heap[0]))
        return min(candidates) if candidates else None

    def pop_due(self, now: float, *, limit: int = 10_000) -> list[tuple[bytes, float]]:
        """Up to ``limit`` keys due by ``now``, earliest first, as ``(key, due)``; they are marked fired."""
        self._open_seconds(now)
        fire, active, pop = self._index.fire, self._active, heapq.heappop
        due_keys: list[tuple[bytes, float]] = []
        fired = _Fired()
        while active and active[0][0] <= now and len(due_keys) < limit:
            _, key, due_ms = pop(active)
            fingerprint = hash(key) or 2
            if not fire(fingerprint, due_ms):
                continue  # rescheduled, settled, discarded or fired since it was listed
            due_keys.append((key, due_ms / 1000))
            fired.add(key, fingerprint, due_ms)
        if due_keys:
            self._fired_log.append(fired)
            self._fired_log_bytes += fired.nbytes
        self._forget_old_fired(now)
        return due_keys

    def overdue(self) -> list[tuple[bytes, float]]:
        """Every fired key whose ``expired`` event has not been seen, as ``(key, due)``."""
        found: dict[bytes, float] = {}
        state = self._index.state
        for fired in self._fired_log:
            for due_ms, (key, _) in zip(fired.dues, _names(fired.names), strict=True):
                if state(hash(key) or 2) == -due_ms:
                    found[key] = due_ms / 1000
        return list(found.items())

    def _open_seconds(self, now: float) -> None:
        """Sort the live entries of every second that has begun into the heap of entries to fire."""
        current = int(now)
        heap = self._second_heap
        opened = False
        state, active = self._index.state, self._active
        while heap and heap[0] <= current:
            second = heapq.heappop(heap)
            arena = self._arenas.pop(second)
            self._arena_bytes -= len(arena)
            listed = 0
            for key, _ in _names(arena):
                listed += 1
                due_ms = state(hash(key) or 2)
                if due_ms // 1000 == second:  # not stale: waiting, and for this second
                    active.append((due_ms / 1000, key, due_ms))
            self._listed -= listed
            opened = True
        if opened:
            heapq.heapify(active)  # once, in C: a push per key cost more than the rest of firing
        self._opened_until = max(self._opened_until, current + 1)

    def _forget_old_fired(self, now: float) -> None:
        oldest_kept_ms = round((now - self.keep_due_for) * 1000)
        log, remove = self._fired_log, self._index.remove
        while log:
            fired = log[0]
            dues, prints, entry = fired.dues, fired.prints, self._fired_log_head
            end = len(dues)
            while entry < end and dues[entry] < oldest_kept_ms:
                remove(prints[entry], fired_at=dues[entry])
                entry += 1
            if entry < end:
                self._fired_log_head = entry
                return
            log.popleft()
            self._fired_log_head = 0
            self._fired_log_bytes -= fired.nbytes

    def _compact(self) -> None:
        """Rewrite every arena with its live entries only: TTLs that kept changing left more stale than live."""
        state = self._index.state
        self._listed = 0
        self._arena_bytes = 0
        for second, arena in self._arenas.items():
            kept = bytearray()
            for key, _ in _names(arena):
                if state(hash(key) or 2) // 1000 == second:
                    _append_name(kept, key)
                    self._listed += 1
            self._arenas[second] = kept
            self._arena_bytes += len(kept)
