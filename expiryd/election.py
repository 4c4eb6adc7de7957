"""Leader election: a Redlock lease, renewed on a ticker, with a fencing token per term.

Every replica runs an :class:`Elector`. Followers try to take the lease every
``retry_interval`` (with jitter). The leader renews it every
``renew_interval`` with pottery's ``extend()``, which resets the full lease.
If the leader cannot renew for ``renew_deadline`` it steps down: it stops
handing events to handlers while its lease, which runs for ``lease``, is still
valid, so two replicas never act at once unless a clock or a pause betrays
them. Each new term gets a fencing token greater than any earlier term's; it
is stamped on every event so that a receiver can refuse a stale leader. A term
is never lower than the cluster's time in milliseconds (see :func:`propose_term`),
so it still grows when the stored one is lost::

    elector = Elector(masters=[cluster_client], settings=config.election, metrics=metrics, now=clock.now,
                      succession=succession, signal=TermSignal(queue=queue))
    elector.start()
    term = elector.term()      # the fencing token while leading safely, else None
    await elector.aclose()     # on shutdown: release the lock at once, for the next replica

Before each attempt the elector asks the succession (see :mod:`expiryd.succession`) whether this
replica's history lets it lead, and tells it when it won. Each change of term is announced on the
:class:`~expiryd.leadership.TermSignal`, which the leader gate takes from.

``term()`` reads the monotonic clock, so a leader that wakes from a long pause
(SIGSTOP, a stalled VM) stops acting at its first look, before the renewal
loop has even noticed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pottery import AIORedlock
from pottery.exceptions import ExtendUnlockedLock, PrimitiveError

from .config import RETRY_JITTER, ElectionConfig
from .connections import REDIS_FAILURES, describe_error
from .keys import term_key
from .leadership import TermSignal
from .metrics import Metrics
from .tasks import Service

# What a lease call may raise without ending the election: Redis failures, pottery's, and the odd
# AttributeError redis-py raises from a connection torn down under it (a primary restarting).
_LEASE_FAILURES = (*REDIS_FAILURES, PrimitiveError, AttributeError)

__all__ = ["Elector", "propose_term"]

log = logging.getLogger("expiryd.election")

# Raises the stored term to ARGV[1] unless it is already that high; returns 1 when it did.
_RAISE_TERM = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local proposed = tonumber(ARGV[1])
if current < proposed then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


def propose_term(stored: Sequence[int], *, now: float) -> int:
    """The next term: one more than the highest stored, and never less than ``now`` in milliseconds.

    The stored term can be lost: evicted, a failover that dropped the last write, a lock master
    restarted without persistence. Every earlier term was at most its own leader's start in
    milliseconds, plus one per election since, so the time floor keeps a term from repeating
    unless the cluster's clock has gone back by more than the time between two leaders.
    """
    return max(max(stored, default=0) + 1, int(now * 1000))


class Candidacy(Protocol):
    """Whether this replica may try for the lease, and what follows winning it (a :class:`~expiryd.succession.Succession`)."""

    async def may_lead(self) -> bool: ...

    def elected(self) -> None: ...


class Elector(Service):
    name = "election"

    def __init__(
        self,
        *,
        masters: Sequence[Any],
        settings: ElectionConfig,
        metrics: Metrics,
        now: Callable[[], float],
        succession: Candidacy,
        signal: TermSignal,
    ) -> None:
        self._now = now
        self._succession = succession
        self._signal = signal
        self._masters = list(masters)
        self._settings = settings
        self._metrics = metrics
        self._lock = AIORedlock(
            key=settings.lock_name,
            masters=set(self._masters),
            auto_release_time=settings.lease,
            # Without this, pottery reports a master it could not reach as a
            # lock it does not hold, and a leader would give up a lease it
            # still has at the first network error.
            raise_on_redis_errors=True,
            num_extensions=math.inf,  # type: ignore[arg-type]
        )
        self._term: int | None = None
        self._act_until = 0.0
        self._last_renewal_attempt = 0.0
        self._release_task: asyncio.Task[None] | None = None
        self._last_attempt_error = ""
        self.heartbeat = time.monotonic()

    def term(self) -> int | None:
        """The current fencing token if this replica leads and may still act, else ``None``."""
        if self._term is not None and time.monotonic() < self._act_until:
            return self._term
        return None

    async def _run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            if self._term is None:
                if await self._succession.may_lead():
                    await self._try_to_lead()
                await asyncio.sleep(self._settings.retry_interval * random.uniform(*RETRY_JITTER))
            else:
                await self._renew_or_step_down()

    async def _close(self) -> None:
        """Give up the lease at once, so another replica can take over within its retry interval."""
        if self._term is not None:
            self._step_down("shutdown")
        await self._finish_release()

    async def _try_to_lead(self) -> None:
        # A release still in flight would run with the new attempt's lock value.
        await self._finish_release()
        started = time.monotonic()
        try:
            acquired = await asyncio.wait_for(self._lock.acquire(blocking=False), self._settings.renew_deadline)
        except _LEASE_FAILURES as error:
            self._report_failed_attempt(describe_error(error))
            return
        if not acquired:
            return
        try:
            term = await asyncio.wait_for(self._next_term(), self._settings.renew_deadline)
        except (*REDIS_FAILURES, _TermUnavailable) as error:
            self._report_failed_attempt(f"took the lease but could not raise the term: {describe_error(error)}")
            await self._release()
            return
        self._term = term
        self._last_attempt_error = ""
        self._act_until = started + self._settings.renew_deadline
        self._last_renewal_attempt = started
        self._metrics.is_leader.set(1)
        self._metrics.leader_term.set(term)
        self._metrics.leader_transitions.labels(to="leader").inc()
        log.info("became leader", extra={"term": term, "reason": "lease acquired"})
        self._succession.elected()
        self._signal.announce(term)

    async def _renew_or_step_down(self) -> None:
        next_attempt = self._last_renewal_attempt + self._settings.renew_interval
        await asyncio.sleep(max(0.0, next_attempt - time.monotonic()))
        if self._term is None:
            return  # handed over while this renewal waited
        started = self._last_renewal_attempt = time.monotonic()
        remaining = self._act_until - started
        if remaining <= 0:
            self._metrics.lock_renewals.labels(result="error").inc()
            self._step_down("renew deadline passed")
            return
        try:
            await asyncio.wait_for(self._lock.extend(), remaining)
        except ExtendUnlockedLock:
            # A majority answered and none of them holds our value: the lease is gone.
            self._metrics.lock_renewals.labels(result="lost").inc()
            self._step_down("lease lost")
            return
        except _LEASE_FAILURES as error:
            self._metrics.lock_renewals.labels(result="error").inc()
            log.warning("lease renewal failed", extra={"term": self._term, "reason": describe_error(error)})
            if time.monotonic() >= self._act_until:
                self._step_down("renew deadline passed")
            return
        if self._term is None:
            return  # handed over while the renewal was in flight: the release is on its way
        self._act_until = started + self._settings.renew_deadline
        self._metrics.lock_renewals.labels(result="ok").inc()

    def _report_failed_attempt(self, reason: str) -> None:
        """Log a failed lease attempt once per distinct reason: a missing permission never heals by itself."""
        if reason == self._last_attempt_error:
            return
        self._last_attempt_error = reason
        log.warning("lease attempt failed", extra={"reason": reason})

    def hand_over(self, reason: str) -> None:
        """Stop leading now and release the lease, so that a better-placed replica takes over."""
        if self._term is not None:
            self._step_down(reason)

    def _step_down(self, reason: str) -> None:
        if self._term is None:
            return
        term = self._term
        self._term = None
        self._act_until = 0.0
        self._metrics.is_leader.set(0)
        self._metrics.leader_term.set(0)
        self._metrics.leader_transitions.labels(to="follower").inc()
        self._metrics.leader_stepdowns.labels(reason=reason.replace(" ", "_")).inc()
        # A shutdown is routine (a rollout); any other step-down is worth a look.
        log.log(
            logging.INFO if reason == "shutdown" else logging.WARNING,
            "stepped down",
            extra={"term": term, "reason": reason},
        )
        self._signal.announce(None)
        # Stepping down is synchronous so that no event slips through after it;
        # the release, which needs Redis, follows as a task this elector awaits.
        self._release_task = asyncio.create_task(self._release(), name="lease release")

    async def _finish_release(self) -> None:
        if self._release_task is not None:
            await self._release_task
            self._release_task = None

    async def _release(self) -> None:
        try:
            await asyncio.wait_for(self._lock.release(), self._settings.renew_interval)
        except _LEASE_FAILURES:
            pass  # the lease expires on its own

    async def _next_term(self) -> int:
        """A term greater than every earlier one, written to a majority of the masters.

        Read the stored term from every master, take the highest seen by a
        majority, and raise all masters to the next (see :func:`propose_term`).
        Any two majorities share a master, so the new term exceeds any term an
        earlier leader wrote to a majority, and the time floor covers a write lost since.
        """
        key = term_key(self._settings.lock_name)
        quorum = len(self._masters) // 2 + 1
        readings = await asyncio.gather(*(m.get(key) for m in self._masters), return_exceptions=True)
        values = [int(v or 0) for v in readings if not isinstance(v, BaseException)]
        if len(values) < quorum:
            raise _TermUnavailable(
                f"read the term from {len(values)} of {len(self._masters)} masters" + _first_failure(readings)
            )
        proposed = propose_term(values, now=self._now())
        writes = await asyncio.gather(
            *(m.eval(_RAISE_TERM, 1, key, proposed) for m in self._masters), return_exceptions=True
        )
        raised = sum(1 for w in writes if w == 1)
        if raised < quorum:
            raise _TermUnavailable(
                f"raised the term on {raised} of {len(self._masters)} masters" + _first_failure(writes)
            )
        return proposed


def _first_failure(results: list[Any]) -> str:
    errors = [result for result in results if isinstance(result, BaseException)]
    return f" ({describe_error(errors[0])})" if errors else ""


class _TermUnavailable(Exception):
    pass
