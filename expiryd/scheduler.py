"""On-time firing: learn when each routed key is due, and make Redis expire it at that moment.

Redis publishes ``expired`` when it deletes a key, not when its TTL runs out,
and its sampling expiry cycle falls far behind on a keyspace with many keys
that carry a TTL: a minute or two late with 100,000 of them. Any read of a due
key on its primary deletes it at once and publishes ``expired``. So:

* **Learning.** Every command that sets a TTL publishes
  ``__keyevent@0__:expire`` (notification class ``g``) on the key's primary.
  Each node subscription hands those keys to :meth:`Scheduler.learn`; keys of
  no route are dropped there, and the rest are looked up with
  ``PEXPIRETIME`` on the node that published them, a pipeline per node.
* **Recovering.** Keys set while this replica was not subscribed (it had not
  started, or its connection broke) are found by a ``SCAN`` of the node for
  each route's glob, rate-limited to ``schedule.scan_rate`` keys a second,
  each time a primary's subscription (re)starts, and every
  ``schedule.rescan_interval`` for keys that were beyond the horizon.
* **Firing.** While this replica leads, each key is touched at its due time
  with ``PEXPIRETIME`` on the primary that owns its slot. Due times are the
  primaries' own (``PEXPIRETIME``), so the schedule keeps the cluster's clock
  (:mod:`expiryd.clock`), not this host's: a replica whose clock is off still
  fires on time. A touch that arrives before the node's clock reaches the due
  time waits for the moment the node's measured clock will. A due key is deleted
  by the touch and its ``expired`` event flows through the usual path
  (routing, replay, fencing, payload). A key whose TTL was extended answers
  with its new due time and is rescheduled; a persisted or deleted one is
  dropped. A replica that becomes leader first touches every key that came
  due while no one led.

Every replica learns the whole schedule, leader or not, so that the next
leader fires on time from its first moment::

    scheduler = Scheduler(schedule=Schedule(...), settings=config.schedule, options=options, router=router,
                          leadership=elector, view=fanin.view, subscription_starts=fanin.subscription_starts,
                          metrics=metrics, internal_keys=frozenset())
    scheduler.start()
    scheduler.learn(address, [b"order:42"])    # from a node subscription, for every `expire` event
    scheduler.settle(batch)                    # in the leader gate: stamps each expiration's due_at
    await scheduler.aclose()

Keys the schedule does not hold (beyond the horizon, the schedule full, a
node whose notifications lack ``g`` and whose CONFIG is refused) are not lost:
Redis expires them on its own timing, and each is counted as unscheduled when
it is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.crc import key_slot

from .clock import ClusterClock
from .config import ScheduleConfig
from .connections import REDIS_FAILURES, NodeAddress, NodeClients, RedisOptions, describe_error
from .events import EXPIRED, Expiration
from .leadership import Leadership
from .lookups import NodeLookups
from .memory import Trimmer
from .metrics import Metrics
from .routing import Router
from .schedule import Admission, Schedule
from .tasks import Service, until_first_failure
from .topology import ClusterView

__all__ = ["DueTimes", "NoSchedule", "Scheduler", "redis_glob"]

log = logging.getLogger("expiryd.scheduler")

_LOOKUP_CHUNK = 5_000
_TOUCH_CHUNK = 5_000
_SCAN_COUNT = 1_000
_MAX_PENDING = 200_000  # learned keys waiting for their lookup, all nodes together
_RETRY_AFTER_ERROR = 0.1
# Past the moment the node's clock is reckoned to reach a due time, for an early touch's second try.
_EARLY_RETRY_MARGIN = 0.002
_IDLE_WAKE = 0.1  # how often an idle fire loop looks at the leadership again
_RECOVERY_CHECK_INTERVAL = 1.0
# A rescan is paced to finish within this share of schedule.rescan_interval.
_PASS_SHARE = 0.8
# Sets a key's expire time again, to the time it has: Redis publishes `expire` for it, and every replica
# learns the key. Only if its TTL is still the one the scan read: never overwrites one set since.
_ANNOUNCE = """
if redis.call('PEXPIRETIME', KEYS[1]) == tonumber(ARGV[1]) then
    return redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
return 0
"""
# How often, at most, memory freed by learning is handed back to the system (see expiryd.memory).
_TRIM_INTERVAL = 5.0


class DueTimes(Protocol):
    """What the leader gate needs of on-time firing: each expiration's due time, when known."""

    def settle(self, batch: list[Expiration]) -> None: ...


class NoSchedule:
    """On-time firing switched off: no expiration has a known due time."""

    def settle(self, batch: list[Expiration]) -> None:
        return None


def redis_glob(pattern: str) -> bytes:
    """A route's glob (Python's fnmatch syntax) as a SCAN MATCH pattern.

    The two differ in negation (``[!a]`` against ``[^a]``) and in the
    backslash, which is a literal character in fnmatch and an escape in Redis.
    """
    text = pattern.replace("\\", "\\\\").replace("[!", "[^")
    return text.encode("utf-8")


class Scheduler(Service):
    name = "scheduler"

    def __init__(
        self,
        *,
        schedule: Schedule,
        settings: ScheduleConfig,
        options: RedisOptions,
        router: Router,
        leadership: Leadership,
        view: Callable[[], ClusterView | None],
        subscription_starts: Callable[[], dict[NodeAddress, float | None]],
        metrics: Metrics,
        clock: ClusterClock,
        internal_keys: frozenset[bytes] = frozenset(),
    ) -> None:
        self._schedule = schedule
        self._clock = clock
        self._settings = settings
        self._options = options
        self._router = router
        self._leadership = leadership
        self._view = view
        self._subscription_starts = subscription_starts
        self._metrics = metrics
        self._internal_keys = internal_keys
        self._patterns = sorted({redis_glob(route.pattern) for route in router.routes})
        self._pending: dict[NodeAddress, list[bytes]] = {}
        self._pending_count = 0
        self._learned = asyncio.Event()
        self._sooner = asyncio.Event()
        self._sleeping_until = 0.0
        self._scan_clients = NodeClients(options=options)
        self._lookups = NodeLookups(options=options)
        self._touches_out = NodeLookups(options=options)  # apart: a scan's lookups must not delay a due touch
        admissions = metrics.schedule_admissions
        self._admitted = {admission: admissions.labels(result=admission.value) for admission in Admission}
        self._touches = metrics.schedule_touches
        self._trimmer = Trimmer(interval=_TRIM_INTERVAL)

    async def _run(self) -> None:
        await until_first_failure(self._look_up_learned(), self._fire(), self._recover())

    async def _close(self) -> None:
        await asyncio.gather(self._scan_clients.aclose(), self._lookups.aclose(), self._touches_out.aclose())

    def summary(self) -> dict[str, Any]:
        """The schedule's size and its next due time (epoch seconds), as ``expiryd status`` shows them."""
        return {"scheduled": len(self._schedule), "next_due": self._schedule.next_due()}

    def learn(self, address: NodeAddress, keys: list[bytes]) -> None:
        """Keys whose TTL was just set on ``address``: look up the due time of those a route will handle."""
        view = self._view()
        if view is not None and address not in view.primaries:
            # A replica publishes expire too, as it applies its primary's writes; the primary's event counts.
            return
        match, internal = self._router.match, self._internal_keys
        wanted = [key for key in keys if key not in internal and match(key) is not None]
        if not wanted:
            return
        room = _MAX_PENDING - self._pending_count
        if room < len(wanted):
            self._metrics.schedule_admissions.labels(result="overflow").inc(len(wanted) - max(room, 0))
            wanted = wanted[: max(room, 0)]
        self._pending.setdefault(address, []).extend(wanted)
        self._pending_count += len(wanted)
        self._learned.set()

    def settle(self, batch: list[Expiration]) -> None:
        """Stamp each expiration with its due time, if the schedule knew it, and forget the key."""
        settle = self._schedule.settle
        for expiration in batch:
            if expiration.kind == EXPIRED:  # a hash's fields expiring leaves the key, and its TTL, in place
                expiration.due_at = settle(expiration.key)

    # Learning

    async def _look_up_learned(self) -> None:
        while True:
            await self._learned.wait()
            self._learned.clear()
            pending, self._pending, self._pending_count = self._pending, {}, 0
            await asyncio.gather(*(self._look_up(node, keys) for node, keys in pending.items()))
            del pending
            self._report_size()
            self._trimmer.after_churn()

    async def _look_up(self, node: NodeAddress, keys: list[bytes]) -> None:
        """Schedule ``keys`` at the due times their primary ``node`` gives."""
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            try:
                replies = await self._lookups.pexpiretimes(node, chunk)
            except REDIS_FAILURES as error:
                self._metrics.schedule_admissions.labels(result="error").inc(len(chunk))
                log.warning(
                    "cannot look up due times: these keys fire on Redis's own timing",
                    extra={"node": str(node), "keys": len(chunk), "error": describe_error(error)},
                )
                await self._lookups.drop(node)
                return
            self._admit(chunk, replies)

    def _admit(self, keys: list[bytes], replies: list[Any]) -> None:
        now = self._clock.now()
        learned: list[tuple[bytes, float]] = []
        gone = failed = 0
        for key, reply in zip(keys, replies, strict=True):
            if type(reply) is not int:
                failed += 1  # MOVED (the slot moved on) or refused: what the schedule holds stays
            elif reply < 0:
                self._schedule.discard(key)  # -1: no TTL any more; -2: gone already
                gone += 1
            else:
                learned.append((key, reply / 1000))
        for admission, count in self._schedule.add_many(learned, now=now).items():
            if count:
                self._admitted[admission].inc(count)
        if gone:
            self._metrics.schedule_admissions.labels(result="no_ttl").inc(gone)
        if failed:
            self._metrics.schedule_admissions.labels(result="error").inc(failed)
        if learned and min(due for _, due in learned) < self._sleeping_until:
            self._sooner.set()

    # Firing

    async def _fire(self) -> None:
        leading: int | None = None
        while True:
            term = self._leadership.term()
            if term is not None and term != leading:
                overdue = self._schedule.overdue()
                if overdue:
                    log.info("touching keys that came due while no one led", extra={"term": term, "keys": len(overdue)})
                    await self._touch(overdue)
            leading = term
            now = self._clock.now()
            due = self._schedule.pop_due(now, limit=_TOUCH_CHUNK)
            if due:
                if term is not None:
                    await self._touch(due)
                else:
                    self._report_size()
                await asyncio.sleep(0)  # a long run of due keys must not hold the event loop
                continue
            next_due = self._schedule.next_due()
            wait = _IDLE_WAKE if next_due is None else min(max(next_due - now, 0.0), _IDLE_WAKE)
            self._sleeping_until = now + wait
            self._sooner.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sooner.wait(), wait)
            self._sleeping_until = 0.0

    async def _touch(self, due: list[tuple[bytes, float]]) -> None:
        owners = self._slot_owners()
        by_node: dict[NodeAddress, list[tuple[bytes, float]]] = {}
        unowned = []
        for entry in due:
            owner = owners[key_slot(entry[0])] if owners is not None else None
            if owner is None:
                unowned.append(entry)
            else:
                by_node.setdefault(owner, []).append(entry)
        if unowned:
            self._retry(unowned)
        await asyncio.gather(*(self._touch_node(node, entries) for node, entries in by_node.items()))
        self._report_size()

    async def _touch_node(self, node: NodeAddress, entries: list[tuple[bytes, float]]) -> None:
        try:
            replies = await self._touches_out.pexpiretimes(node, [key for key, _ in entries])
        except REDIS_FAILURES as error:
            log.warning(
                "cannot touch due keys: retrying",
                extra={"node": str(node), "keys": len(entries), "error": describe_error(error)},
            )
            await self._touches_out.drop(node)
            self._retry(entries)
            return
        now = self._clock.now()
        # The node's clock may run ahead of or behind the cluster's: an early touch waits for the node's.
        node_lead = self._clock.node_lead(str(node))
        counts = {"fired": 0, "rescheduled": 0, "no_ttl": 0}
        retry = []
        for (key, due), reply in zip(entries, replies, strict=True):
            if not isinstance(reply, int):
                retry.append((key, due))  # MOVED (a slot in migration) or an error: try again
            elif reply == -2:
                counts["fired"] += 1  # deleted now (or earlier): its expired event follows
            elif reply == -1:
                counts["no_ttl"] += 1
                self._schedule.discard(key)
            elif reply / 1000 > due:
                counts["rescheduled"] += 1
                self._schedule.add(key, reply / 1000, now=now)
            else:
                # The node's clock has not reached the due time yet: try again when it will have.
                self._touches.labels(result="early").inc()
                self._schedule.retry(key, due, at=max(now, due - node_lead) + _EARLY_RETRY_MARGIN)
        for result, count in counts.items():
            if count:
                self._touches.labels(result=result).inc(count)
        if retry:
            self._retry(retry)

    def _retry(self, entries: list[tuple[bytes, float]]) -> None:
        """Touch these again shortly (their touch failed), as long as a new leader would still touch them."""
        self._touches.labels(result="error").inc(len(entries))
        at = self._clock.now() + _RETRY_AFTER_ERROR
        oldest = at - self._schedule.keep_due_for
        for key, due in entries:
            if due >= oldest:
                self._schedule.retry(key, due, at=at)

    def _slot_owners(self) -> list[NodeAddress | None] | None:
        """The primary that owns each slot, from the fan-in's last topology read."""
        view = self._view()
        return None if view is None else view.slot_owners()

    # Recovering

    async def _recover(self) -> None:
        """Scan a primary each time this replica's subscription to it (re)starts; rescan all while leading.

        Only the leader rescans, once an interval: keys it finds that were beyond the horizon are
        announced again (see :data:`_ANNOUNCE`), and every replica learns them from that ``expire``
        event, so that the cost of a pass is paid once, not once per replica.
        """
        scanned: dict[NodeAddress, float] = {}
        last_full_scan = time.monotonic()
        while True:
            rescan_all = (
                time.monotonic() - last_full_scan >= self._settings.rescan_interval
                and self._leadership.term() is not None
            )
            due = [
                (node, since)
                for node, since in sorted(self._subscription_starts().items())
                if since is not None and (rescan_all or scanned.get(node) != since)
            ]
            # The primaries at once: each scan is paced for its own primary to fit the interval.
            results = await asyncio.gather(*(self._scan(node, announce=rescan_all) for node, _ in due))
            for (node, since), complete in zip(due, results, strict=True):
                if complete:
                    scanned[node] = since
            if rescan_all or self._leadership.term() is None:
                last_full_scan = time.monotonic()
            await asyncio.sleep(_RECOVERY_CHECK_INTERVAL)

    async def _scan(self, node: NodeAddress, *, announce: bool = False) -> bool:
        """Schedule every routed key with a TTL on ``node``; False if the scan broke off.

        Paced to ``schedule.scan_rate`` keys a second, or faster if the node holds more keys than
        a pass at that rate would visit within ``schedule.rescan_interval``. ``announce``: keys new
        to the schedule are announced again for the other replicas.
        """
        client = self._scan_clients.get(node)
        started = time.monotonic()
        progress = self._metrics.schedule_scan_progress.labels(node=str(node))
        try:
            size = int(await client.dbsize())
            rate = max(
                self._settings.scan_rate, size * len(self._patterns) / (_PASS_SHARE * self._settings.rescan_interval)
            )
            pause = _SCAN_COUNT / rate
            next_call = time.monotonic()
            visited = 0
            # The node's connections open now, once: not at its first due key, in the middle of work.
            await self._touches_out.open(node)
            await self._lookups.open(node)
            for pattern in self._patterns:
                cursor = 0
                while True:
                    cursor, keys = await client.scan(cursor, match=pattern, count=_SCAN_COUNT)
                    visited += _SCAN_COUNT
                    progress.set(min(1.0, visited / max(1, size * len(self._patterns))))
                    wanted = [
                        key
                        for key in keys
                        if isinstance(key, bytes)
                        and key not in self._internal_keys
                        and self._router.match(key) is not None
                    ]
                    if wanted:
                        replies = await self._lookups.pexpiretimes(node, wanted)
                        fresh = self._unknown(wanted, replies) if announce else []
                        self._admit(wanted, replies)
                        if fresh:
                            await _announce(client, fresh)
                    if cursor == 0:
                        break
                    # Paced by when each call is due, not by a pause after it: the calls' own time counts.
                    # A scan held up (a slow node) catches up on at most a second, not in one burst.
                    next_call = max(next_call + pause, time.monotonic() - 1.0)
                    await asyncio.sleep(max(0.0, next_call - time.monotonic()))
        except REDIS_FAILURES as error:
            self._metrics.schedule_scans.labels(result="error").inc()
            log.warning("schedule recovery scan broke off", extra={"node": str(node), "error": describe_error(error)})
            await self._scan_clients.drop(node)
            await self._lookups.drop(node)
            return False
        self._metrics.schedule_scans.labels(result="complete").inc()
        self._metrics.schedule_scan_seconds.labels(node=str(node)).set(time.monotonic() - started)
        progress.set(1.0)
        self._report_size()
        log.info(
            "schedule recovered from a scan",
            extra={
                "node": str(node),
                "seconds": round(time.monotonic() - started, 3),
                "scheduled": len(self._schedule),
            },
        )
        return True

    def _unknown(self, keys: list[bytes], replies: list[Any]) -> list[tuple[bytes, int]]:
        """The keys, with their due time in ms, that the schedule does not hold and would take now."""
        until = (self._clock.now() + self._schedule.horizon) * 1000
        holds = self._schedule.holds
        return [
            (key, reply)
            for key, reply in zip(keys, replies, strict=True)
            if isinstance(reply, int) and 0 < reply <= until and not holds(key)
        ]

    def _report_size(self) -> None:
        self._metrics.schedule_keys.set(len(self._schedule))
        self._metrics.memory_bytes.labels(part="schedule").set(self._schedule.nbytes)


async def _announce(client: aioredis.Redis, keys: list[tuple[bytes, int]]) -> None:
    """Have ``keys`` (and their due times) published as ``expire`` events again, for every replica to learn."""
    pipe = client.pipeline(transaction=False)
    for key, due_ms in keys:
        pipe.eval(_ANNOUNCE, 1, key, due_ms)
    await pipe.execute(raise_on_error=False)
