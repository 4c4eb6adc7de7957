"""The orphan sweep: deliver the expirations that no subscriber heard, found as companion keys left behind.

Pub/Sub is at-most-once: an ``expired`` event published while no replica was
subscribed to its node (all of expiryd down, or cut off from that node) is gone.
On a route with a payload template the loss leaves a trace, because the
companion key outlives its key and is deleted only after the handler
succeeded: a companion whose key no longer exists, and which is not being
delivered, is an expiration that was never delivered.

While this replica leads, the :class:`Sweeper` SCANs every primary for the
companions of every payload route, every ``interval`` and once right after
becoming leader, at ``scan_rate`` keys a second. A companion whose key is gone
(an ``EXISTS`` on the key's primary) is a *candidate*. It becomes an *orphan*
only if, at a second look ``confirm_after`` seconds later, the key is still
gone, the companion still exists and the leader gate says the key is not in
flight. The delay covers what the first look cannot tell apart from an orphan:
a key that just expired (the first ``EXISTS`` may even be what expired it),
whose event is on its way and whose companion the handler is about to delete,
and a writer that has written the companion but not yet the key. Orphans go to
the gate's ``emit_swept`` as expirations marked ``swept``::

    sweeper = Sweeper(settings=config.sweep, router=router, options=options, leadership=elector,
                      view=fanin.view, gate=gate, metrics=metrics, now=clock.now)
    if sweeper.has_work:       # switched on, and some route has a payload template
        async with sweeper:
            ...

An orphan is emitted once per leadership term and companion: a companion that
stays after its delivery (the event was dead-lettered) is not delivered again
every interval, but a new leader delivers it once more, as it would replay any
event whose outcome it cannot know.

**Only what expired.** A key can also vanish before its time: evicted under a
``maxmemory-policy`` that evicts any key, or deleted without its companion. The
companion outlives its key by the route's ``payload_keep_for`` (see
:class:`~expiryd.companions.Companions`), so its own expire time gives the key's
due time, and the node's ``TIME``, read in the same pipeline, says whether that
has passed (:func:`judge`). A key gone before its due time is counted in
``expiryd_keys_removed_before_due_total`` and logged, not delivered; its
companion is left to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from redis.crc import key_slot

from .config import SweepConfig
from .connections import REDIS_FAILURES, NodeAddress, NodeClients, RedisOptions, describe_error
from .events import EXPIRED, Expiration
from .leadership import Leadership
from .metrics import Metrics
from .payload import PayloadKeys
from .routing import Route, Router
from .tasks import Service, until_first_failure
from .topology import ClusterView

__all__ = ["Look", "SweptIntake", "Sweeper", "judge", "scan_pattern"]

log = logging.getLogger("expiryd.sweep")

_IDLE_WAKE = 0.1  # how often an idle sweeper looks at the leadership again
_CONFIRM_CHUNK = 5_000
# Orphans remembered so that a companion left after its delivery is not delivered again this term.
_MAX_HANDED = 1_000_000


class SweptIntake(Protocol):
    """The leader gate, as the sweep needs it: what is on its way, and where orphans go."""

    def keys_in_flight(self) -> set[bytes]: ...

    async def emit_swept(self, route: Route, expirations: list[Expiration]) -> None: ...


class Look(Enum):
    """What a confirming look at a candidate found."""

    #: The key exists again, or the companion is gone (delivered) or could not be read: nothing to do.
    NOTHING = "nothing"
    #: The key's due time has passed on its node and nobody delivered it: an orphan.
    EXPIRED = "expired"
    #: The key vanished before its due time: evicted, or deleted without its companion.
    REMOVED = "removed"


def judge(*, exists: Any, companion_expire_ms: Any, node_now_ms: int | None, keep_for_ms: int) -> Look:
    """What a look at a vanished key and its companion found (see :class:`Look`).

    ``companion_expire_ms`` is the companion's ``PEXPIRETIME`` (-1: no TTL, -2: gone), ``node_now_ms``
    the time on the key's node at the look. Redis expires a key only once its node's time has passed
    its due time, which is the companion's expire time less ``keep_for_ms``. A companion without a
    TTL, or a node whose time is not known, tells no due time: the key is taken as expired.
    """
    if exists != 0 or not isinstance(companion_expire_ms, int) or companion_expire_ms == -2:
        return Look.NOTHING
    if companion_expire_ms > 0 and node_now_ms is not None and node_now_ms <= companion_expire_ms - keep_for_ms:
        return Look.REMOVED
    return Look.EXPIRED


@dataclass(slots=True)
class _Candidate:
    route: Route
    companion: bytes
    node: NodeAddress
    confirm_at: float  # monotonic
    keep_for_ms: int  # how much longer than its key the companion lives


@dataclass(slots=True)
class _Handed:
    expire_time: int  # the companion's PEXPIRETIME when it was emitted: a rewritten companion differs
    seen_in: int  # the last sweep that found it


@dataclass(frozen=True)
class _Target:
    match: bytes
    payload: PayloadKeys


def scan_pattern(payload: PayloadKeys) -> bytes:
    """The SCAN MATCH pattern for every companion ``payload`` names: the template, its key part ``*``."""
    return b"*".join(_glob_literal(part) for part in payload.parts)


def _glob_literal(text: bytes) -> bytes:
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        text = text.replace(special, b"\\" + special)
    return text


class Sweeper(Service):
    name = "sweeper"

    def __init__(
        self,
        *,
        settings: SweepConfig,
        router: Router,
        options: RedisOptions,
        leadership: Leadership,
        view: Callable[[], ClusterView | None],
        gate: SweptIntake,
        metrics: Metrics,
        now: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._now = now
        self._router = router
        self._options = options
        self._leadership = leadership
        self._view = view
        self._gate = gate
        self._metrics = metrics
        targets: dict[tuple[bytes, ...], _Target] = {}
        for route in router.routes:
            if route.payload is not None and EXPIRED in route.events:
                targets.setdefault(route.payload.parts, _Target(scan_pattern(route.payload), route.payload))
        self._targets = list(targets.values())
        self._candidates: dict[bytes, _Candidate] = {}
        self._handed: dict[bytes, _Handed] = {}
        self._sweep_number = 0
        self._leading: int | None = None  # the term the candidates were found in
        self._check_failures = 0
        self._clients = NodeClients(options=options)

    @property
    def has_work(self) -> bool:
        """Whether sweeping is switched on and some route has a payload template to sweep for."""
        return self._settings.enabled and bool(self._targets)

    async def _run(self) -> None:
        """Sweep whenever this replica leads; ends only on a bug."""
        self._metrics.sweep_interval.set(self._settings.interval)
        await until_first_failure(self._sweep_loop(), self._confirm_loop())

    async def _close(self) -> None:
        self._metrics.sweep_interval.set(0)
        self._forget()
        await self._clients.aclose()

    async def _sweep_loop(self) -> None:
        next_sweep = 0.0
        while True:
            term = self._leadership.term()
            if term != self._leading:
                # What a former term found or emitted may have been abandoned with it: look again.
                self._forget()
                self._leading = term
                next_sweep = time.monotonic()
            now = time.monotonic()
            if term is not None and now >= next_sweep:
                next_sweep = now + self._settings.interval
                await self._sweep(term)
                continue
            await asyncio.sleep(min(max(next_sweep - now, 0.0), _IDLE_WAKE))

    async def _confirm_loop(self) -> None:
        # Apart from the scans, so that one slow or unreachable primary holds up no other's candidates.
        while True:
            term = self._leadership.term()
            wake = _IDLE_WAKE
            if term is not None and term == self._leading:
                await self._confirm_due(term)
                if self._candidates:
                    first = next(iter(self._candidates.values()))
                    wake = min(max(first.confirm_at - time.monotonic(), 0.0), _IDLE_WAKE)
            await asyncio.sleep(wake)

    def _forget(self) -> None:
        self._candidates.clear()
        self._handed.clear()

    # Scanning

    async def _sweep(self, term: int) -> None:
        view = self._view()
        if view is None or not view.primaries:
            self._metrics.sweeps.labels(result="error").inc()
            log.warning("no topology to sweep yet")
            return
        self._sweep_number += 1
        failures_before = self._check_failures
        started = time.monotonic()
        primaries = sorted(view.primaries)
        for node in self._clients.nodes():
            if node not in view.primaries:
                await self._clients.drop(node)
        # Primaries in parallel: scan_rate bounds each node's load, and a sweep lasts as long as its largest node.
        results = await asyncio.gather(*(self._scan_node(node, term) for node in primaries))
        if None in results:
            return  # leadership changed: the next leader sweeps
        complete = all(results)
        if complete and self._check_failures == failures_before:
            self._metrics.sweeps.labels(result="complete").inc()
            self._metrics.sweep_last_complete.set(time.time())
            self._handed = {key: handed for key, handed in self._handed.items() if handed.seen_in == self._sweep_number}
            log.info(
                "sweep complete",
                extra={
                    "primaries": len(primaries),
                    "seconds": round(time.monotonic() - started, 3),
                    "candidates": len(self._candidates),
                },
            )
        else:
            self._metrics.sweeps.labels(result="error").inc()

    async def _scan_node(self, node: NodeAddress, term: int) -> bool | None:
        complete = True
        for target in self._targets:
            scanned = await self._scan(node, target, term)
            if scanned is None:
                return None
            complete = complete and scanned
        return complete

    async def _scan(self, node: NodeAddress, target: _Target, term: int) -> bool | None:
        """Make candidates of ``target``'s companions on ``node``; False if the scan broke off, None on a new term."""
        client = self._clients.get(node)
        pause = self._settings.count / self._settings.scan_rate
        cursor = 0
        try:
            while True:
                if not await self._make_room(term):
                    return None
                cursor, names = await client.scan(cursor, match=target.match, count=self._settings.count)
                self._metrics.sweep_keys_scanned.inc(len(names))
                await self._consider(node, target, names)
                if self._leadership.term() != term:
                    return None
                if cursor == 0:
                    return True
                await asyncio.sleep(pause)
        except REDIS_FAILURES as error:
            log.warning("sweep scan broke off", extra={"node": str(node), "error": describe_error(error)})
            await self._clients.drop(node)
            return False

    async def _consider(self, node: NodeAddress, target: _Target, names: list[Any]) -> None:
        found: list[tuple[bytes, Route, bytes, int]] = []
        for name in names:
            if not isinstance(name, bytes):
                continue
            key = target.payload.key_of(name)
            if key is None:
                continue
            # A companion is the first matching route's only; another template's companion is not.
            route = self._router.match(key)
            if route is None or route.payload is None or route.payload.parts != target.payload.parts:
                continue
            found.append((key, route, name, route.payload.keep_for_ms))
        if not found:
            return
        replies, _ = await self._on_owners([("EXISTS", key) for key, *_ in found])
        confirm_at = time.monotonic() + self._settings.confirm_after
        for (key, route, companion, keep_for_ms), exists in zip(found, replies, strict=True):
            if exists != 0:
                continue  # the key lives (or its check failed): nothing to say
            handed = self._handed.get(key)
            if handed is not None:
                handed.seen_in = self._sweep_number
            if key not in self._candidates:
                self._candidates[key] = _Candidate(route, companion, node, confirm_at, keep_for_ms)

    async def _make_room(self, term: int) -> bool:
        """Wait while the candidates are at their bound (the confirmations drain them); False on a new term."""
        while len(self._candidates) >= self._settings.max_candidates:
            if self._leadership.term() != term:
                return False
            await asyncio.sleep(_IDLE_WAKE)
        return self._leadership.term() == term

    # Confirming

    async def _confirm_due(self, term: int) -> None:
        while self._candidates:
            now = time.monotonic()
            due: list[tuple[bytes, _Candidate]] = []
            for key, candidate in self._candidates.items():
                if candidate.confirm_at > now or len(due) >= _CONFIRM_CHUNK:
                    break
                due.append((key, candidate))
            if not due:
                return
            for key, _ in due:
                del self._candidates[key]
            await self._confirm(due, term)

    async def _confirm(self, due: list[tuple[bytes, _Candidate]], term: int) -> None:
        commands: list[tuple[str, bytes]] = []
        for key, candidate in due:
            commands += [("EXISTS", key), ("PEXPIRETIME", candidate.companion)]
        replies, clocks = await self._on_owners(commands)
        if self._leadership.term() != term:
            return
        in_flight = self._gate.keys_in_flight()
        now = self._now()
        orphans: dict[Route, list[Expiration]] = {}
        removed: dict[Route, int] = {}
        for index, (key, candidate) in enumerate(due):
            expire_time = replies[2 * index + 1]
            look = judge(
                exists=replies[2 * index],
                companion_expire_ms=expire_time,
                node_now_ms=clocks[2 * index],
                keep_for_ms=candidate.keep_for_ms,
            )
            if look is Look.NOTHING or key in in_flight:
                continue
            handed = self._handed.get(key)
            if handed is not None and handed.expire_time == expire_time:
                continue  # emitted or counted before this term, and its companion stayed
            if len(self._handed) < _MAX_HANDED or handed is not None:
                self._handed[key] = _Handed(expire_time, self._sweep_number)
            if look is Look.REMOVED:
                removed[candidate.route] = removed.get(candidate.route, 0) + 1
                continue
            orphans.setdefault(candidate.route, []).append(
                Expiration(key, str(candidate.node), now, EXPIRED, None, True)
            )
        for route, count in removed.items():
            self._metrics.keys_removed_before_due.labels(route=route.name).inc(count)
            log.warning(
                "keys vanished before their due time (evicted, or deleted without their companion): not delivered",
                extra={"route": route.name, "keys": count},
            )
        for route, expirations in orphans.items():
            if self._leadership.term() != term:
                return
            try:
                waiting = await _waiting_for_a_retry(route, expirations)
                for key in waiting:
                    self._handed.pop(key, None)  # looked at again next sweep, once its retry is settled
                expirations = [expiration for expiration in expirations if expiration.key not in waiting]
                if not expirations:
                    continue
                await self._gate.emit_swept(route, expirations)
            except Exception as error:
                for expiration in expirations:
                    self._handed.pop(expiration.key, None)
                self._metrics.sweeps.labels(result="error").inc()
                log.exception(
                    "cannot hand swept expirations to the route",
                    extra={"route": route.name, "events": len(expirations), "error": describe_error(error)},
                )
                continue
            self._metrics.swept_events.labels(route=route.name).inc(len(expirations))
            log.info(
                "delivering expirations no subscriber heard", extra={"route": route.name, "events": len(expirations)}
            )

    # Connections

    async def _on_owners(self, commands: list[tuple[str, bytes]]) -> tuple[list[Any], list[int | None]]:
        """Each command's reply, sent to the primary owning its key's slot (an exception where that failed),
        and the time on that primary in milliseconds, read in the same pipeline (None where unknown)."""
        replies: list[Any] = [None] * len(commands)
        clocks: list[int | None] = [None] * len(commands)
        owners = self._slot_owners()
        by_node: dict[NodeAddress, list[int]] = {}
        for index, (_, key) in enumerate(commands):
            owner = owners[key_slot(key)] if owners is not None else None
            if owner is None:
                replies[index] = LookupError("no primary serves the slot")
                self._check_failures += 1
            else:
                by_node.setdefault(owner, []).append(index)

        async def run(node: NodeAddress, indexes: list[int]) -> None:
            pipe = self._clients.get(node).pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command(*commands[index])
            pipe.execute_command("TIME")
            try:
                *results, node_time = await pipe.execute(raise_on_error=False)
            except REDIS_FAILURES as error:
                log.warning("sweep cannot check keys", extra={"node": str(node), "error": describe_error(error)})
                await self._clients.drop(node)
                results, node_time = [error] * len(indexes), None
            node_ms = _milliseconds(node_time)
            for index, result in zip(indexes, results, strict=True):
                if isinstance(result, BaseException):
                    self._check_failures += 1
                replies[index] = result
                clocks[index] = node_ms

        await asyncio.gather(*(run(node, indexes) for node, indexes in by_node.items()))
        return replies, clocks

    def _slot_owners(self) -> list[NodeAddress | None] | None:
        """The primary that owns each slot, from the fan-in's last topology read."""
        view = self._view()
        return None if view is None else view.slot_owners()


async def _waiting_for_a_retry(route: Route, expirations: list[Expiration]) -> set[bytes]:
    """The keys of ``expirations`` that have a queue in the route's retry set.

    A parked event's key is gone and its companion stays until the retry succeeds: it looks like an
    orphan, but the leader's retry worker will deliver it, in its key's order.
    """
    if route.retries is None:
        return set()
    return await route.retries.held([expiration.key for expiration in expirations])


def _milliseconds(reply: Any) -> int | None:
    """A ``TIME`` reply ((seconds, microseconds), as redis-py parses it) in milliseconds; None if it failed."""
    if isinstance(reply, tuple | list) and len(reply) == 2:
        return int(reply[0]) * 1000 + int(reply[1]) // 1000
    return None
