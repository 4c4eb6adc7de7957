"""Fan-in: one subscription per node, all merged into one queue, following the topology.

:class:`FanIn` re-reads the cluster topology every ``topology_interval`` and at
once whenever a subscription reports trouble. It subscribes to every primary it
finds, and to every Redis replica as well, and drops the subscriptions of nodes
that leave the cluster or fail. Only primaries publish ``expired``; a replica is
subscribed (and has its notifications switched on) ahead of time, so that when
a failover promotes it, its first expirations already have a listener. Waiting
for the next topology read instead would lose what it expires in between.
Every expiryd replica runs the fan-in, leader or not, so that a follower that
takes over has no gap in its subscriptions::

    fanin = FanIn(topology=topology, queue=queue, metrics=metrics, options=options, settings=config.redis,
                  overflow_wait=5.0, clock=clock)
    fanin.start()
    fanin.take_gaps()      # {node: heard until}: where a broken subscription may have missed events
    ...
    await fanin.aclose()   # stops every subscription
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from .clock import ClusterClock
from .config import RedisConfig
from .connections import NodeAddress, RedisOptions
from .eventqueue import EventQueue
from .metrics import Metrics
from .notifications import EXPIRED_CLASSES
from .routing import Router
from .subscription import NodeSubscription
from .tasks import Service
from .topology import SLOTS, ClusterView, Topology, TopologyUnavailable

__all__ = ["FanIn"]

log = logging.getLogger("expiryd.fanin")


class FanIn(Service):
    name = "fan-in"

    def __init__(
        self,
        *,
        topology: Topology,
        queue: EventQueue,
        metrics: Metrics,
        clock: ClusterClock,
        options: RedisOptions,
        settings: RedisConfig,
        overflow_wait: float,
        router: Router,
        notification_classes: str = EXPIRED_CLASSES,
        on_expire: Callable[[NodeAddress, list[bytes]], None] | None = None,
    ) -> None:
        self._topology = topology
        self._router = router
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._options = options
        self._settings = settings
        self._overflow_wait = overflow_wait
        self._classes = notification_classes
        self._on_expire = on_expire
        # Node → the earliest moment since the last take after which its subscription may have missed events.
        self._gaps: dict[str, float] = {}
        self._view: ClusterView | None = None
        self._subscriptions: dict[NodeAddress, NodeSubscription] = {}
        self._primaries: frozenset[NodeAddress] = frozenset()
        # Every node the last view listed, failed ones included: their series stay while they are being lost.
        self._listed: frozenset[str] = frozenset()
        self._refresh_now = asyncio.Event()
        self._unheard_reported: set[str] = set()
        self._last_topology_ok = 0.0

    @property
    def cluster_reachable(self) -> bool:
        """True when a topology read succeeded within the last three intervals."""
        return time.monotonic() - self._last_topology_ok < 3 * self._settings.topology_interval + 2.0

    def covered_for(self) -> float:
        """Seconds every current primary has been subscribed without a break (0 if one is not)."""
        starts = [self._subscriptions[p].subscribed_since for p in self._primaries if p in self._subscriptions]
        if not starts or None in starts:
            return 0.0
        return time.monotonic() - max(s for s in starts if s is not None)

    def view(self) -> ClusterView | None:
        """The last topology read that succeeded (None before the first)."""
        return self._view

    def subscription_starts(self) -> dict[NodeAddress, float | None]:
        """When each current primary's subscription began (monotonic), None while it is down.

        A new value means the subscription restarted, and may have missed events in between.
        """
        return {
            p: self._subscriptions[p].subscribed_since if p in self._subscriptions else None for p in self._primaries
        }

    def coverage_since(self) -> dict[str, float | None]:
        """When each current primary's unbroken subscription began, in epoch seconds; None while it is down."""
        monotonic_now, now = time.monotonic(), self._clock.now()
        return {
            str(primary): None if since is None else now - (monotonic_now - since)
            for primary, since in self.subscription_starts().items()
        }

    def read_through(self) -> dict[str, float | None]:
        """Per current primary, up to when everything it published has been read (see ``read_through``)."""
        return {
            str(primary): self._subscriptions[primary].read_through() if primary in self._subscriptions else None
            for primary in self._primaries
        }

    def take_gaps(self) -> dict[str, float]:
        """The nodes whose subscription broke since the last call, each with when it was last heard."""
        gaps, self._gaps = self._gaps, {}
        return gaps

    def _note_gap(self, address: NodeAddress, heard_until: float) -> None:
        node = str(address)
        self._gaps[node] = min(heard_until, self._gaps.get(node, heard_until))

    def unheard(self) -> dict[str, int]:
        """Slots whose expirations this replica cannot hear now, by primary ("no primary" for unserved slots).

        Empty when every slot's primary is subscribed: what readiness needs.
        """
        if self._view is None:
            return {"no topology read yet": SLOTS}
        heard = {address for address, subscription in self._subscriptions.items() if subscription.subscribed}
        return dict(
            Counter(
                "no primary" if owner is None else str(owner)
                for owner in self._view.slot_owners()
                if owner not in heard
            )
        )

    def report_unheard(self) -> dict[str, int]:
        """:meth:`unheard`, also set on the metrics (a series per primary missed, dropped once heard again)."""
        unheard = self.unheard()
        self._metrics.unheard_slots.set(sum(unheard.values()))
        for node in self._unheard_reported - set(unheard):
            with contextlib.suppress(KeyError):
                self._metrics.unheard_node.remove(node)
        for node, count in unheard.items():
            self._metrics.unheard_node.labels(node=node).set(count)
        self._unheard_reported = set(unheard)
        return unheard

    def request_refresh(self) -> None:
        self._refresh_now.set()

    async def _run(self) -> None:
        while True:
            self._refresh_now.clear()
            await self._refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), self._settings.topology_interval)

    async def _close(self) -> None:
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        await asyncio.gather(*(subscription.aclose() for subscription in subscriptions))

    async def _refresh(self) -> None:
        disputed = self._topology.disputed
        try:
            view = await self._topology.read()
        except TopologyUnavailable as error:
            self._metrics.topology_refreshes.labels(result="error").inc()
            log.warning("cannot read the cluster topology", extra={"reason": str(error)})
            return
        self._last_topology_ok = time.monotonic()
        self._view = view
        self._metrics.topology_refreshes.labels(result="ok").inc()
        if self._topology.disputed > disputed:
            self._metrics.topology_refreshes.labels(result="disputed").inc()
        self._metrics.cluster_primaries.set(len(view.primaries))
        self._log_role_changes(view.primaries)
        self._primaries = view.primaries
        await self._reconcile(view.primaries | view.replicas)
        listed = frozenset(str(node.address) for node in view.nodes)
        for node in self._listed - listed:
            self._metrics.forget_node(node)
        self._listed = listed
        self.report_unheard()

    def _log_role_changes(self, primaries: frozenset[NodeAddress]) -> None:
        for address in sorted(primaries - self._primaries):
            log.info("node is a primary", extra={"node": str(address)})
        for address in sorted(self._primaries - primaries):
            log.info("node is no longer a primary", extra={"node": str(address)})

    async def _reconcile(self, nodes: frozenset[NodeAddress]) -> None:
        for address in sorted(set(self._subscriptions) - nodes):
            log.info("node left or failed: unsubscribing", extra={"node": str(address)})
            await self._subscriptions.pop(address).aclose()
        for address in sorted(nodes - set(self._subscriptions)):
            log.info("new node: subscribing", extra={"node": str(address)})
            subscription = NodeSubscription(
                address=address,
                options=self._options,
                queue=self._queue,
                metrics=self._metrics,
                clock=self._clock,
                repair_notifications=self._settings.ensure_notifications,
                watchdog_interval=self._settings.watchdog_interval,
                watchdog_timeout=self._settings.watchdog_timeout,
                overflow_wait=self._overflow_wait,
                on_trouble=self.request_refresh,
                notification_classes=self._classes,
                router=self._router,
                on_expire=self._on_expire,
                on_lost=self._note_gap,
            )
            self._subscriptions[address] = subscription
            subscription.start()
