"""Every Redis key expiryd writes or reads by a name of its own.

The lease, the fencing term, the progress marks and the replicas' coverage
reports are named from ``election.lock_name``; with a hash tag in the lock name
(the default has one) all four share one hash slot, so they live on one primary::

    from expiryd.keys import DEFAULT_LOCK_NAME, lease_key, progress_key, term_key

    lease_key(DEFAULT_LOCK_NAME)       # "redlock:{expiryd}:leader"
    term_key(DEFAULT_LOCK_NAME)        # "{expiryd}:leader:term"
    progress_key(DEFAULT_LOCK_NAME)    # "{expiryd}:leader:progress"
    coverage_key(DEFAULT_LOCK_NAME)    # "{expiryd}:leader:coverage"

Payload keys (``routes[].payload``) and stream names (``routes[].stream.name``,
``dead_letter.stream``) come from the configuration; the dead-letter stream's
default is here.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_DEAD_LETTER_STREAM",
    "DEFAULT_LOCK_NAME",
    "LEASE_PREFIX",
    "lease_key",
    "coverage_key",
    "progress_key",
    "term_key",
]

DEFAULT_LOCK_NAME = "{expiryd}:leader"
DEFAULT_DEAD_LETTER_STREAM = "{expiryd}:dead-letter"

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
