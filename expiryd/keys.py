"""Every Redis key expiryd writes or reads by a name of its own.

The lease, the fencing term, the progress marks and the replicas' coverage
reports are named from ``election.lock_name``; with a hash tag in the lock name
(the default has one) all four share one hash slot, so they live on one primary::

    from expiryd.keys import DEFAULT_LOCK_NAME, lease_key, progress_key, term_key

    lease_key(DEFAULT_LOCK_NAME)       # "redlock:{expiryd}:leader"
    term_key(DEFAULT_LOCK_NAME)        # "{expiryd}:leader:term"
    progress_key(DEFAULT_LOCK_NAME)    # "{expiryd}:leader:progress"
    coverage_key(DEFAULT_LOCK_NAME)    # "{expiryd}:leader:coverage"

Each route's retry set (see :mod:`expiryd.retries`) has keys of its own, in a hash slot of their own
chosen from the lock name and the route (:func:`retry_keys`), so that routes spread over the primaries.

Payload keys (``routes[].payload``) and stream names (``routes[].stream.name``,
``dead_letter.stream``) come from the configuration; the dead-letter stream's
default is here, in a hash slot far from the lease's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "RetryKeys",
    "DEFAULT_DEAD_LETTER_STREAM",
    "DEFAULT_LOCK_NAME",
    "LEASE_PREFIX",
    "lease_key",
    "coverage_key",
    "progress_key",
    "retry_keys",
    "term_key",
]

DEFAULT_LOCK_NAME = "{expiryd}:leader"
# Its own hash tag, not the lease's: a receiver refusing everything for a day must not fill the
# primary that holds the lease. Slot 14119 against the lease's 7627: on different primaries
# whenever 2 to 6 primaries share the slots evenly (``expiryd check`` says when they do not).
DEFAULT_DEAD_LETTER_STREAM = "{expiryd:deadletter}"

# pottery's Redlock stores a lock named N under "redlock:N"; expiryd never writes this key
# itself, but reads it (``expiryd check``) and must not treat its expiry as an event.
LEASE_PREFIX = "redlock:"


def lease_key(lock_name: str) -> str:
    """The key pottery's Redlock holds the lease in."""
    return f"{LEASE_PREFIX}{lock_name}"


def term_key(lock_name: str) -> str:
    """The key holding the last term. With the default lock name it shares the lock's hash slot."""
    return f"{lock_name}:term"


def progress_key(lock_name: str) -> str:
    """The hash of the leader's progress marks, one field per node."""
    return f"{lock_name}:progress"


def coverage_key(lock_name: str) -> str:
    """The hash of every replica's coverage report (see :mod:`expiryd.coverage`), one field per replica."""
    return f"{lock_name}:coverage"


@dataclass(frozen=True)
class RetryKeys:
    """A route's retry set (see :mod:`expiryd.retries`), every key in one hash slot.

    ``due``: the keys with a queue, by next attempt; ``firsts``: the same keys, by their oldest failure;
    ``count``: how many entries wait; ``ids``: the ids of the entries that wait; a key's queue is named
    ``queue_prefix`` followed by the key's own bytes.
    """

    due: str
    firsts: str
    count: str
    ids: str
    queue_prefix: str


def retry_keys(lock_name: str, route: str) -> RetryKeys:
    """The keys of ``route``'s retry set under this lock name; one hash tag, a digest of both names."""
    tag = hashlib.sha1(f"{lock_name}\n{route}".encode()).hexdigest()[:12]
    prefix = f"expiryd:retry:{{{tag}}}"
    return RetryKeys(
        due=f"{prefix}:due",
        firsts=f"{prefix}:firsts",
        count=f"{prefix}:count",
        ids=f"{prefix}:ids",
        queue_prefix=f"{prefix}:q:",
    )
