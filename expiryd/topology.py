"""Which nodes of the cluster are primaries right now.

Only primaries emit ``expired`` events, and which nodes are primaries changes
with every failover, so expiryd re-reads the topology on a timer. A read asks
one reachable node for ``CLUSTER NODES``, trying the node that answered last
time first, then every node it has ever learned of, then the seeds. The
connection to the node that answered stays open for the next read: at one read
a second, a new connection each time would cost the node a TCP (and TLS)
handshake and an AUTH every second, for every replica.

No single answer is trusted to shrink the cluster. A node that was ``CLUSTER
RESET``, or restarted without its ``nodes.conf``, knows only itself: taken at
its word, it would unsubscribe expiryd from every other primary. So an answer
that drops a primary the last view had (not failed, not demoted: simply not
listed) or serves fewer slots than the last view is *disputed*: every known node
is asked, and the view that most of them give wins (ties: the one that serves
the most slots). A disputed view that no other node confirms is not taken at
all: the last view stays::

    topology = Topology(seeds=[NodeAddress("127.0.0.1", 7000)], options=options)
    view = await topology.read()
    view.primaries      # frozenset of NodeAddress
    await topology.close()
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from .connections import REDIS_FAILURES, NodeAddress, RedisOptions, describe_error
from .errors import TopologyUnavailable

__all__ = [
    "ClusterView",
    "Topology",
    "TopologyUnavailable",
    "choose_view",
    "disputes",
    "owner_client",
    "parse_cluster_nodes",
]

SLOTS = 16384

log = logging.getLogger("expiryd.topology")

# Flags that mean a node cannot serve a subscription now.
_UNUSABLE = frozenset({"fail", "handshake", "noaddr"})


@dataclass(frozen=True)
class ClusterNodeInfo:
    node_id: str
    address: NodeAddress
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[str, ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags and not self.flags & _UNUSABLE

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags and not self.flags & _UNUSABLE

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The slots this node serves, as inclusive ranges."""
        ranges = []
        for slot_range in self.slots:
            if slot_range.startswith("["):
                continue  # a slot being migrated, listed again by its owner
            start, _, end = slot_range.partition("-")
            ranges.append((int(start), int(end or start)))
        return ranges


@dataclass(frozen=True)
class ClusterView:
    nodes: tuple[ClusterNodeInfo, ...]
    answered_by: NodeAddress

    @property
    def primaries(self) -> frozenset[NodeAddress]:
        """Every usable primary, including one that holds no slots yet.

        A primary receiving slots in a resharding holds keys, and so expires
        them, before the slots are wholly its own.
        """
        return frozenset(node.address for node in self.nodes if node.is_primary)

    @property
    def replicas(self) -> frozenset[NodeAddress]:
        return frozenset(node.address for node in self.nodes if node.is_replica)

    def replicas_of(self, primary: NodeAddress) -> list[NodeAddress]:
        ids = {node.node_id for node in self.nodes if node.address == primary}
        return [node.address for node in self.nodes if node.primary_id in ids]

    def slot_owners(self) -> list[NodeAddress | None]:
        """The primary serving each of the 16384 slots (None for a slot no usable primary serves).

        Worked out once per view, which every caller shares: do not change the list.
        """
        return self._slot_owners

    def owner(self, key: str | bytes) -> NodeAddress | None:
        """The primary serving ``key``'s slot (None when no usable primary serves it)."""
        return self._slot_owners[key_slot(key.encode() if isinstance(key, str) else key)]

    @cached_property
    def _slot_owners(self) -> list[NodeAddress | None]:
        owners: list[NodeAddress | None] = [None] * SLOTS
        for node in self.nodes:
            if not node.is_primary:
                continue
            for start, end in node.slot_ranges():
                owners[start : end + 1] = [node.address] * (end - start + 1)
        return owners

    def served_slots(self) -> int:
        """How many slots a usable primary serves."""
        return sum(owner is not None for owner in self.slot_owners())

    def shape(self) -> tuple[frozenset[NodeAddress], tuple[NodeAddress | None, ...]]:
        """What two views must share to agree: the primaries, and who serves each slot."""
        return self.primaries, tuple(self.slot_owners())

    def slot_count(self, primary: NodeAddress) -> int:
        return sum(
            end - start + 1 for node in self.nodes if node.address == primary for start, end in node.slot_ranges()
        )


def disputes(view: ClusterView, last: ClusterView) -> bool:
    """Whether ``view`` shrinks ``last`` without saying why: a primary left unlisted, or slots left unserved.

    A failover does not dispute: the failed primary is still listed, flagged ``fail``.
    """
    listed = {node.address for node in view.nodes}
    return bool(last.primaries - listed) or view.served_slots() < last.served_slots()


def choose_view(views: list[ClusterView]) -> ClusterView:
    """The view most nodes give; among equals, the one that serves the most slots, then the first asked."""
    votes = Counter(view.shape() for view in views)
    return max(views, key=lambda view: (votes[view.shape()], view.served_slots(), -views.index(view)))


def parse_cluster_nodes(text: str) -> tuple[ClusterNodeInfo, ...]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address_text = parts[1].split("@")[0].split(",")[0]
        if address_text.startswith(":"):
            continue  # a node that has not learned its own address yet
        nodes.append(
            ClusterNodeInfo(
                node_id=parts[0],
                address=NodeAddress.parse(address_text),
                flags=frozenset(parts[2].split(",")),
                primary_id=None if parts[3] == "-" else parts[3],
                slots=tuple(parts[8:]),
            )
        )
    return tuple(nodes)


class Topology:
    def __init__(self, *, seeds: list[NodeAddress], options: RedisOptions) -> None:
        self._seeds = list(seeds)
        self._known: list[NodeAddress] = []
        self._options = options
        self._connected: tuple[NodeAddress, aioredis.Redis] | None = None
        self._last: ClusterView | None = None
        #: Disputed answers so far (see the module's docstring).
        self.disputed = 0

    async def aclose(self) -> None:
        """Close the connection kept for the next read."""
        if self._connected is not None:
            _, client = self._connected
            self._connected = None
            await client.aclose()

    async def read(self) -> ClusterView:
        errors = []
        for address in self._candidates():
            try:
                view = await self._read_from(address)
            except REDIS_FAILURES as error:
                errors.append(f"{address}: {describe_error(error)}")
                continue
            if self._last is not None and disputes(view, self._last):
                view = await self._settle_dispute(view)
            self._remember(view)
            self._last = view
            return view
        raise TopologyUnavailable("no node answered CLUSTER NODES (" + "; ".join(errors) + ")")

    async def _settle_dispute(self, view: ClusterView) -> ClusterView:
        """Ask every other known node; the view most of them give wins (see :func:`choose_view`)."""
        assert self._last is not None
        self.disputed += 1
        others = [address for address in self._candidates() if address != view.answered_by]
        answers = await asyncio.gather(*(self._read_once(address) for address in others), return_exceptions=True)
        views = [view, *(answer for answer in answers if isinstance(answer, ClusterView))]
        chosen = choose_view(views)
        lost = sorted(str(address) for address in self._last.primaries - chosen.primaries)
        if len(views) == 1:
            log.warning(
                "a node's view of the cluster drops primaries and no other node answered: keeping the last view",
                extra={"node": str(view.answered_by), "dropped": lost},
            )
            return self._last
        if chosen is not view:
            log.warning(
                "a node's view of the cluster drops primaries that the other nodes still list: ignored",
                extra={"node": str(view.answered_by), "answers": len(views)},
            )
        return chosen

    async def _read_once(self, address: NodeAddress) -> ClusterView:
        """One answer on a connection of its own, closed at once (the kept connection stays where it is)."""
        client = self._options.client(address)
        try:
            raw = await client.execute_command("CLUSTER", "NODES")
        finally:
            await client.aclose()
        return _view(raw, address)

    def _candidates(self) -> list[NodeAddress]:
        ordered = []
        for address in [*self._known, *self._seeds]:
            if address not in ordered:
                ordered.append(address)
        return ordered

    def _remember(self, view: ClusterView) -> None:
        # The node that answered goes first next time; every node it knows of follows.
        others = sorted(node.address for node in view.nodes if node.address != view.answered_by)
        self._known = [view.answered_by, *others]

    async def _read_from(self, address: NodeAddress) -> ClusterView:
        client = await self._connect(address)
        try:
            raw = await client.execute_command("CLUSTER", "NODES")
        except Exception:
            await self.aclose()
            raise
        return _view(raw, address)

    async def _connect(self, address: NodeAddress) -> aioredis.Redis:
        """The kept client if it is for ``address``, else a new one kept in its place."""
        if self._connected is not None and self._connected[0] == address:
            return self._connected[1]
        await self.aclose()
        client = self._options.client(address)
        self._connected = (address, client)
        return client


def _view(raw: object, address: NodeAddress) -> ClusterView:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    nodes = parse_cluster_nodes(text)
    if not nodes:
        raise RedisError("empty CLUSTER NODES reply")
    return ClusterView(nodes=nodes, answered_by=address)


def owner_client(key: str | bytes, *, view: ClusterView | None, options: RedisOptions, seeds: list[NodeAddress]) -> Any:
    """A client of the primary that owns ``key``'s slot, for a one-shot tool; a cluster client without a view.

    Not a cluster client when the owner is known: a new redis-py cluster client's first command fails
    after the socket timeout while any primary is stopped, even one that owns none of the keys it reads.
    """
    owner = None if view is None else view.owner(key)
    return options.cluster_client(seeds) if owner is None else options.client(owner)
