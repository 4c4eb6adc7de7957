"""Giving freed memory back to the system, so that a replica's resident memory follows what it holds.

glibc keeps the memory a process frees in its heap, and raises the size above
which it maps blocks of their own each time such a block is freed: after the
schedule's index grows a few times, or a burst of learned keys comes and goes,
tens of megabytes stay resident that nothing uses (measured: 56 MB resident
for 42 MB held by a million-key schedule, 43 MB after a trim). ``malloc_trim``
hands those pages back. Elsewhere (musl, macOS) this does nothing::

    trimmer = Trimmer(interval=10.0)
    trimmer.after_churn()          # after work that freed much: trims at most once an interval
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

__all__ = ["Trimmer", "trim"]


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_MALLOC_TRIM = _load_trim()


def trim() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class Trimmer:
    """Trims after churn, at most once an ``interval``: a trim walks the whole heap (a few ms per 100 MB)."""

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._last = 0.0

    def after_churn(self) -> bool:
        """Trim now, unless this process trimmed within the interval; whether it did."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return trim()
