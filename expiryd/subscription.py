"""One primary's ``expired`` (and, when a route takes them, ``hexpired``) keyevents, kept flowing into the merged queue.

With on-time firing on, the same connection also carries the ``expire``
keyevents (a TTL was set), whose keys go to the scheduler (see
:mod:`expiryd.scheduler`) rather than into the queue.

A :class:`NodeSubscription` owns everything about one primary: its Pub/Sub
socket, a watchdog connection, the notification check and reconnection. It
runs until its owner (the fan-in) stops it::

    subscription = NodeSubscription(address=..., options=..., queue=..., metrics=..., ...)
    subscription.start()
    ...
    await subscription.aclose()

Why the socket is read by hand: Pub/Sub is at-most-once, and a subscriber that
reads too slowly is disconnected by Redis, losing its whole output buffer.
redis-py's PubSub drains about 25-60k messages a second here; feeding raw
socket reads to the hiredis parser drains about a million. So the subscription
speaks RESP itself (AUTH, SUBSCRIBE, then read), and uses redis-py only for the
watchdog and ``CONFIG``.

Why a watchdog on the subscribed socket itself: a frozen server (SIGSTOP, a
stalled VM) keeps its TCP connections open and simply says nothing, and a NAT,
conntrack table or load balancer that forgets a flow drops its packets without
a FIN or RST. Both look exactly like a quiet node. A subscribed RESP2
connection answers ``PING`` with a ``pong`` message, so every
``watchdog_interval`` the subscription PINGs its own socket; a socket that
stays silent for ``watchdog_timeout`` after a PING is lost, and only bytes read
from it count as heard. (A PING on another connection proves nothing about
this one: that connection can live on while this one is dead.) While the
reader waits for room in the merged queue the socket is not read, and that
wait is not silence.

A second connection carries what a subscribed connection cannot send: the
notification check (``CONFIG``) and the node's clock (``TIME``, see
:mod:`expiryd.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .clock import ClusterClock, sample_offset
from .connections import REDIS_FAILURES, NodeAddress, RedisOptions, describe_error, set_keepalive, tls_context
from .errors import SubscriptionLost, SubscriptionRefused
from .eventqueue import EventQueue
from .events import EXPIRED, HEXPIRED, Expiration
from .eviction import read_eviction_policy
from .metrics import Metrics
from .notifications import SCHEDULE_CLASS, ensure_notifications
from .routing import Router
from .tasks import Service, cancel_and_wait, until_first_failure

__all__ = ["CHANNEL", "EXPIRE_CHANNEL", "HEXPIRED_CHANNEL", "NodeSubscription"]

CHANNEL = b"__keyevent@0__:expired"
# A hash's fields expired (HEXPIRE, HSETEX; Redis 7.4+, Valkey 9). The message is the key only.
HEXPIRED_CHANNEL = b"__keyevent@0__:hexpired"
# A TTL was set: what the schedule learns from (see expiryd.scheduler).
EXPIRE_CHANNEL = b"__keyevent@0__:expire"
_READ_SIZE = 256 * 1024
_PING = hiredis.pack_command((b"PING",))  # type: ignore[arg-type]
_NOTIFICATION_CHECK_EVERY = 10  # watchdog ticks; the node's clock is read as often
_OVERFLOW_LOG_INTERVAL = 10.0

log = logging.getLogger("expiryd.subscription")


class NodeSubscription(Service):
    def __init__(
        self,
        *,
        address: NodeAddress,
        options: RedisOptions,
        queue: EventQueue,
        metrics: Metrics,
        clock: ClusterClock,
        repair_notifications: bool,
        watchdog_interval: float,
        watchdog_timeout: float,
        overflow_wait: float,
        on_trouble: Callable[[], None],
        notification_classes: str,
        on_lost: Callable[[NodeAddress, float], None],
        router: Router,
        on_expire: Callable[[NodeAddress, list[bytes]], None] | None = None,
    ) -> None:
        self.address = address
        kinds = {kind for route in router.routes for kind in route.events}
        self._channels = [CHANNEL] + ([HEXPIRED_CHANNEL] if HEXPIRED in kinds else [])
        self._router = router
        self._node = str(address)
        self._options = options
        self._tls = tls_context(options.tls) if options.tls is not None else None
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._repair = repair_notifications
        self._watchdog_interval = watchdog_interval
        self._watchdog_timeout = watchdog_timeout
        self._overflow_wait = overflow_wait
        self._on_trouble = on_trouble
        self._classes = notification_classes
        self._on_expire = on_expire
        self._on_lost = on_lost
        # Cluster-clock seconds: the last time bytes were read from the subscribed socket.
        self._heard_at = 0.0
        self.name = f"subscription {self._node}"
        # Monotonic: since when a PING on the subscribed socket has gone unanswered (None: nothing owed).
        self._unanswered_since: float | None = None
        # True while the reader waits for room in the merged queue, and so does not read the socket.
        self._enqueuing = False
        self._last_overflow_log = 0.0
        self._warned: set[str] = set()
        self.subscribed = False
        self.subscribed_since: float | None = None  # monotonic; None while not subscribed

    async def _close(self) -> None:
        # The node's series stay (subscribed 0) until the fan-in sees it leave the cluster for good.
        self._set_subscribed(False)
        self._clock.forget(self._node)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
            except (SubscriptionLost, hiredis.ProtocolError, *REDIS_FAILURES) as error:
                reason = _reason(error)
            except Exception as error:  # a bug must not end this node's subscription for good
                log.exception("subscription failed unexpectedly", extra={"node": self._node})
                reason = f"error: {error.__class__.__name__}"
            if self.subscribed:
                failures = 0
                # Events published after this may never have reached this replica.
                self._on_lost(self.address, self._heard_at)
            self._set_subscribed(False)
            self._metrics.node_disconnects.labels(node=self._node, reason=reason.split(":")[0]).inc()
            log.warning("subscription lost", extra={"node": self._node, "reason": reason})
            self._on_trouble()
            failures += 1
            await asyncio.sleep(_backoff(failures))

    async def _session(self) -> None:
        control = self._options.client(self.address, timeout=self._watchdog_timeout)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.address.host, self.address.port, ssl=self._tls),
                self._options.connect_timeout,
            )
            try:
                set_keepalive(writer.get_extra_info("socket"), self._options.keepalive)
                parser = hiredis.Reader()
                await asyncio.wait_for(self._subscribe(reader, writer, parser), self._watchdog_timeout)
                await self._check_node(control)
                self._unanswered_since = None
                self._set_subscribed(True)
                self._heard_at = self._clock.now()
                log.info("subscribed", extra={"node": self._node})
                await until_first_failure(self._read(reader, parser), self._watch(writer, control))
            finally:
                writer.close()
                with contextlib.suppress(OSError, RuntimeError):
                    await writer.wait_closed()
        finally:
            await control.aclose()

    async def _subscribe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: hiredis.Reader
    ) -> None:
        if self._options.password is not None:
            credentials = [self._options.username] if self._options.username else []
            command = ("AUTH", *credentials, self._options.password)
            writer.write(hiredis.pack_command(command))  # type: ignore[arg-type]  # hiredis's stub allows one item
            await _reply(reader, parser, what="AUTH")
        writer.write(hiredis.pack_command((b"SUBSCRIBE", *self._channels)))  # type: ignore[arg-type]
        for _ in self._channels:  # one confirmation per channel
            await _reply(reader, parser, what="SUBSCRIBE")
        if self._on_expire is None:
            return
        # Apart from the event channels: a user allowed only those (an older ACL rule) keeps its events.
        writer.write(hiredis.pack_command((b"SUBSCRIBE", EXPIRE_CHANNEL)))  # type: ignore[arg-type]
        try:
            await _reply(reader, parser, what="SUBSCRIBE")
        except SubscriptionRefused as error:
            self._warn_once(
                "expire_refused",
                f"cannot subscribe to {EXPIRE_CHANNEL.decode()}: this node's keys "
                f"fire on Redis's own timing, not on time ({error})",
            )

    async def _read(self, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        received = self._metrics.events_received.labels(node=self._node)
        node = self._node
        on_expire = self._on_expire
        clock = self._clock
        match = self._router.match
        unrouted_counter = self._metrics.events_unrouted
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise SubscriptionLost("closed: the server closed the connection")
            now = self._heard_at = clock.now()
            self._unanswered_since = None
            parser.feed(data)
            batch = []
            learned = []
            heard = unrouted = 0
            while (reply := parser.gets()) is not False:
                if type(reply) is list and reply[0] == b"message":
                    channel = reply[1]
                    if channel == EXPIRE_CHANNEL:
                        learned.append(reply[2])
                        continue
                    kind = EXPIRED if channel == CHANNEL else HEXPIRED if channel == HEXPIRED_CHANNEL else None
                    if kind is None:
                        continue
                    heard += 1
                    # An event no route takes goes no further: it costs no queue, no history, no mark.
                    if match(reply[2], kind) is None:
                        unrouted += 1
                    else:
                        batch.append(Expiration(reply[2], node, now, kind))
            if learned and on_expire is not None:
                on_expire(self.address, learned)
            if heard:
                received.inc(heard)
            if unrouted:
                unrouted_counter.inc(unrouted)
            if batch:
                await self._enqueue(batch)

    async def _enqueue(self, batch: list[Expiration]) -> None:
        started = time.monotonic()
        self._enqueuing = True
        try:
            refused = await self._queue.put_within(batch, timeout=self._overflow_wait)
        finally:
            self._enqueuing = False
        waited = time.monotonic() - started
        self._metrics.queue_depth.set(len(self._queue))
        self._metrics.memory_bytes.labels(part="queue").set(self._queue.bytes)
        if waited > 0.001:
            self._metrics.queue_full_seconds.labels(node=self._node).inc(waited)
        if not refused:
            return
        self._metrics.events_dropped.labels(reason="queue_full").inc(refused)
        now = time.monotonic()
        if now - self._last_overflow_log >= _OVERFLOW_LOG_INTERVAL:
            self._last_overflow_log = now
            log.error(
                "merged queue full: dropping events",
                extra={"node": self._node, "dropped": refused, "capacity": self._queue.capacity},
            )

    async def _watch(self, writer: asyncio.StreamWriter, control: aioredis.Redis) -> None:
        """PING the subscribed socket every ``watchdog_interval``; raise once it is silent for ``watchdog_timeout``.

        Silence starts at the first PING sent after the last bytes read, so a
        dead socket is found within ``watchdog_interval + watchdog_timeout``.
        """
        ticks = 0
        next_ping = time.monotonic() + self._watchdog_interval
        # The checks run beside the watchdog: a stalled node holds them for up to a timeout each, and the
        # silence must still be found on time.
        checks: asyncio.Task[None] | None = None
        try:
            while True:
                now = time.monotonic()
                if now >= next_ping:
                    writer.write(_PING)
                    next_ping = now + self._watchdog_interval
                    if self._unanswered_since is None:
                        self._unanswered_since = now
                    ticks += 1
                    if checks is not None and checks.done():
                        checks.result()  # what the checks do not expect ends the session, as it did inline
                        checks = None
                    if ticks % _NOTIFICATION_CHECK_EVERY == 0 and checks is None:
                        checks = asyncio.create_task(self._look_after_node(control), name=f"checks {self._node}")
                if self._enqueuing:
                    self._unanswered_since = None  # the socket is not being read: nothing can be heard
                unanswered = self._unanswered_since
                if unanswered is not None and time.monotonic() - unanswered >= self._watchdog_timeout:
                    raise SubscriptionLost(
                        f"silent: no reply to PING on the subscribed connection for {self._watchdog_timeout:g}s"
                    )
                wake = next_ping if unanswered is None else min(next_ping, unanswered + self._watchdog_timeout)
                await asyncio.sleep(max(0.005, wake - time.monotonic()))
        finally:
            await cancel_and_wait([checks])

    async def _look_after_node(self, control: aioredis.Redis) -> None:
        """The periodic checks on the second connection; its failure says nothing about the subscription."""
        try:
            await self._check_node(control)
        except REDIS_FAILURES as error:
            log.warning(
                "cannot check the node's clock and notifications: retrying later",
                extra={"node": self._node, "error": describe_error(error)},
            )

    async def _check_node(self, control: aioredis.Redis) -> None:
        """Read the node's clock, check (and repair) its notifications, check its eviction policy."""
        await self._measure_clock(control)
        await self._check_notifications(control)
        await self._check_eviction(control)

    async def _measure_clock(self, control: aioredis.Redis) -> None:
        sent = time.time()
        try:
            seconds, microseconds = await asyncio.wait_for(control.time(), self._watchdog_timeout)
        except ResponseError as error:  # an ACL without +time: keep the subscription, say what it costs
            self._warn_once(
                "time_refused",
                f"TIME refused ({error}): this node's clock is not measured, and expiryd keeps time by the "
                "other nodes' clocks or, with none, by this host's",
            )
            return
        sample = sample_offset(sent=sent, node_time=seconds + microseconds / 1e6, received=time.time())
        self._clock.observe(self._node, sample)
        self._metrics.node_clock_offset.labels(node=self._node).set(self._clock.node_offset(self._node) or 0.0)

    async def _check_eviction(self, control: aioredis.Redis) -> None:
        policy = await asyncio.wait_for(read_eviction_policy(control), self._watchdog_timeout)
        if policy is None:
            return  # CONFIG refused: said once already, by the notification check
        self._metrics.node_eviction_possible.labels(node=self._node).set(policy.risk is not None)
        if policy.risk is not None:
            self._warn_once(
                f"eviction {policy.name}",
                f"maxmemory-policy {policy.name} with maxmemory {policy.maxmemory}: this node may evict {policy.risk}; "
                "set maxmemory-policy noeviction",
            )

    async def _check_notifications(self, control: aioredis.Redis) -> None:
        status = await asyncio.wait_for(
            ensure_notifications(control, repair=self._repair, required=self._classes), self._watchdog_timeout
        )
        self._metrics.node_notifications_ok.labels(node=self._node).set(status.ok)
        self._metrics.node_config_refused.labels(node=self._node).set(status.refused)
        if status.refused:
            self._warn_once(
                "config_refused",
                "CONFIG refused: cannot check or enable keyspace notifications; "
                f"set notify-keyspace-events to include {self._classes} on this node" + _without(self._classes),
            )
        elif status.repaired:
            log.warning(
                "enabled keyspace notifications",
                extra={"node": self._node, "before": status.before, "after": status.after},
            )
        elif status.expired_missing:
            self._warn_once(
                "notifications_off",
                "notify-keyspace-events lacks Ex and "
                "redis.ensure_notifications is off: this node's expirations are not published",
            )
        elif not status.ok:
            self._warn_once(
                "classes_off",
                f"notify-keyspace-events lacks {status.missing} and "
                "redis.ensure_notifications is off" + _without(status.missing),
            )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, extra={"node": self._node})

    def read_through(self) -> float | None:
        """Everything this subscription received before this time (cluster clock) is in the merged queue or past it.

        None while it is down, or while a batch it read waits for room in the queue. The PINGs keep it
        moving on a node that publishes nothing.
        """
        if not self.subscribed or self._enqueuing:
            return None
        return self._heard_at

    def _set_subscribed(self, subscribed: bool) -> None:
        if subscribed and not self.subscribed:
            self.subscribed_since = time.monotonic()
        if not subscribed:
            self.subscribed_since = None
        self.subscribed = subscribed
        self._metrics.node_subscribed.labels(node=self._node).set(subscribed)


async def _reply(reader: asyncio.StreamReader, parser: hiredis.Reader, *, what: str) -> Any:
    while (reply := parser.gets()) is False:
        data = await reader.read(_READ_SIZE)
        if not data:
            raise SubscriptionLost(f"closed: the server closed the connection during {what}")
        parser.feed(data)
    if isinstance(reply, hiredis.ReplyError):
        raise SubscriptionRefused(f"refused: {what} failed: {reply}")
    return reply


def _without(classes: str) -> str:
    """What a node loses without the optional classes among ``classes``, for a warning."""
    losses = []
    if SCHEDULE_CLASS in classes:
        losses.append(f"without {SCHEDULE_CLASS}, its keys fire on Redis's own timing, not on time")
    if "h" in classes:
        losses.append("without h, its hash-field expirations are not published")
    return f" ({'; '.join(losses)})" if losses else ""


def _backoff(failures: int) -> float:
    """0.1 s after the first failure, doubling to 2 s, with jitter so replicas do not reconnect in step."""
    return min(2.0, 0.1 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


def _reason(error: BaseException) -> str:
    if isinstance(error, SubscriptionLost):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timeout: the node did not answer in time"
    return f"error: {error.__class__.__name__}: {error}"
