"""``expiryd dlq``: read, redrive and purge the dead-letter stream, from any machine with the config.

    expiryd dlq list [--route R] [--error TEXT] [--since 1h] [--limit N] [--json]
    expiryd dlq show ID
    expiryd dlq redrive ID... | --route R | --error TEXT | --all
    expiryd dlq purge ID... | --route R | --error TEXT | --all  --yes

It connects with the same settings, credentials and TLS as a replica, and needs no replica
running to list, show or purge. A redrive does not call a handler itself: it puts each entry in its
route's retry set, due at once (see :mod:`expiryd.retries`), where the leader takes it and calls the
route's handler under its own term, with ``redriven`` set on the event. The entry leaves the
dead-letter stream only once handled, so a redrive that dies half way loses nothing, and a second
redrive does not repeat what the first finished: an entry is parked under an id made from its
dead-letter id, so parking it twice parks it once. Without a live leader there is no one to do
the work, and a redrive is refused.

Exit codes: 0 done; 1 nothing matched, or a redrive refused (no leader, an entry of a route the
config does not have); 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from .config import Config, parse_duration
from .connections import NodeAddress, RedisOptions
from .errors import TopologyUnavailable
from .events import Expiration, binary_field, printable
from .keys import lease_key, retry_keys
from .retries import Parked, RetrySet
from .topology import ClusterView, Topology, owner_client

__all__ = ["DeadLetter", "add_dlq_commands", "run_dlq"]

# Entries read per XRANGE call.
_PAGE = 1000
# How much of an error a table shows; --json and show give it whole.
_ERROR_WIDTH = 60


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    id: str
    route: str
    key: bytes
    error: str
    attempts: int
    fields: dict[str, bytes]

    @classmethod
    def of(cls, id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
        named = {_text(name): value for name, value in fields.items()}
        return cls(
            id=_text(id),
            route=_text(named.get("route", b"")),
            key=named.get("key", b""),
            error=_text(named.get("error", b"")),
            attempts=int(named.get("attempts", b"0") or 0),
            fields=named,
        )

    @property
    def at(self) -> float:
        """When it was dead-lettered (epoch seconds), from its stream id."""
        return int(self.id.split("-")[0]) / 1000

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"id": self.id, "route": self.route}
        for name, value in self.fields.items():
            if name in ("route", "id"):
                continue
            binary_field(document, name, value)
        return document

    def to_parked(self, *, now: float) -> Parked:
        """The entry as a retry-set entry due at once, its id made from the dead-letter id."""
        fields = self.fields
        due = fields.get("due_at")
        expiration = Expiration(
            self.key,
            _text(fields.get("node", b"")),
            float(fields.get("received_at", b"0") or 0),
            _text(fields.get("kind", b"expired")),
            None if due is None else float(due),
            fields.get("swept") == b"1",
        )
        return Parked(
            id=f"dlq:{self.id}",
            expiration=expiration,
            attempts=0,
            error=self.error,
            first_failed_at=self.at,
            due_at=now,
            dead_letter_id=self.id,
            payload=fields.get("payload"),
        )


@dataclass(frozen=True)
class Selection:
    """Which entries a command is about: named ids, or a filter, or all."""

    ids: tuple[str, ...] = ()
    route: str | None = None
    error: str | None = None
    since: float | None = None  # epoch seconds
    everything: bool = False

    @property
    def empty(self) -> bool:
        return not (self.ids or self.route or self.error or self.since or self.everything)

    def matches(self, entry: DeadLetter) -> bool:
        if self.ids and entry.id not in self.ids:
            return False
        if self.route is not None and entry.route != self.route:
            return False
        if self.error is not None and self.error not in entry.error:
            return False
        return self.since is None or entry.at >= self.since


def add_dlq_commands(commands: Any, add_config_flag: Any) -> None:
    """The ``dlq`` command and its subcommands, on the ``expiryd`` parser's subparsers."""
    dlq = commands.add_parser("dlq", help="list, show, redrive or purge dead-lettered events")
    verbs = dlq.add_subparsers(dest="verb", required=True)
    for name, text in (
        ("list", "list dead-lettered events, oldest first"),
        ("show", "one entry, whole"),
        ("redrive", "send entries again through their route's handler, by the leader"),
        ("purge", "delete entries for good"),
    ):
        verb = verbs.add_parser(name, help=text)
        add_config_flag(verb)
        verb.add_argument("ids", nargs="*", metavar="ID", help="entry ids (as list shows them)")
        if name == "show":
            continue
        verb.add_argument("--route", help="only this route's entries")
        verb.add_argument("--error", metavar="TEXT", help="only entries whose error contains TEXT")
        verb.add_argument("--since", metavar="DURATION", help="only entries dead-lettered within DURATION (1h, 30m)")
        if name == "list":
            verb.add_argument("--limit", type=int, default=100, help="at most this many (default 100; 0: all)")
            verb.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            verb.add_argument("--all", action="store_true", help="every entry")
        if name == "purge":
            verb.add_argument("--yes", action="store_true", help="confirm: the entries are deleted for good")


def run_dlq(config: Config, args: argparse.Namespace) -> int:
    try:
        since = None if getattr(args, "since", None) is None else time.time() - parse_duration(args.since)
    except ValueError as error:
        print(f"expiryd dlq: --since: {error}", file=sys.stderr)
        return 2
    selection = Selection(
        ids=tuple(args.ids),
        route=getattr(args, "route", None),
        error=getattr(args, "error", None),
        since=since,
        everything=getattr(args, "all", False),
    )
    if args.verb == "show" and len(selection.ids) != 1:
        print("expiryd dlq show: name exactly one entry id", file=sys.stderr)
        return 2
    if args.verb in ("redrive", "purge") and selection.empty:
        print(f"expiryd dlq {args.verb}: name entry ids, or --route, --error, --since or --all", file=sys.stderr)
        return 2
    if args.verb == "purge" and not args.yes:
        print("expiryd dlq purge: add --yes to delete the entries for good", file=sys.stderr)
        return 2
    return asyncio.run(_run(config, args, selection))


async def _run(config: Config, args: argparse.Namespace, selection: Selection) -> int:
    options = RedisOptions.from_config(config.redis)
    seeds = [NodeAddress.from_url(url) for url in config.redis.nodes]
    topology = Topology(seeds=seeds, options=options)
    try:
        view: ClusterView | None = await topology.read()
    except TopologyUnavailable:
        view = None  # the cluster client below reports what is wrong
    finally:
        await topology.aclose()
    stream = config.dead_letter.stream
    client = owner_client(stream, view=view, options=options, seeds=seeds)
    try:
        entries = [entry async for entry in _entries(client, stream, selection)]
        if args.verb == "list":
            return _list(entries, as_json=args.json, limit=args.limit)
        if args.verb == "show":
            return _show(entries)
        if not entries:
            print(f"expiryd dlq {args.verb}: no entry matches", file=sys.stderr)
            return 1
        if args.verb == "purge":
            await _on_set_aside(entries, "UNLINK", view=view, options=options, seeds=seeds)
            await client.xdel(stream, *(entry.id for entry in entries))
            print(f"purged {len(entries)} entries from {stream}")
            return 0
        return await _redrive(config, entries, view=view, options=options, seeds=seeds)
    finally:
        await client.aclose()


async def _entries(client: Any, stream: str, selection: Selection) -> Any:
    """The stream's entries that ``selection`` matches, oldest first, read a page at a time."""
    start = "-" if selection.since is None else str(int(selection.since * 1000))
    while True:
        page = await client.xrange(stream, min=start, max="+", count=_PAGE)
        for id, fields in page:
            entry = DeadLetter.of(id, fields)
            if selection.matches(entry):
                yield entry
        if len(page) < _PAGE:
            return
        start = "(" + _text(page[-1][0])


def _list(entries: list[DeadLetter], *, as_json: bool, limit: int) -> int:
    shown = entries if limit <= 0 else entries[:limit]
    if as_json:
        for entry in shown:
            print(json.dumps(entry.to_json()))
    else:
        print(f"{'ID':<16} {'DEAD-LETTERED':<19} {'ROUTE':<16} {'ATTEMPTS':>8}  {'KEY':<32} ERROR")
        for entry in shown:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
            error = entry.error if len(entry.error) <= _ERROR_WIDTH else entry.error[: _ERROR_WIDTH - 1] + "…"
            print(f"{entry.id:<16} {at:<19} {entry.route:<16} {entry.attempts:>8}  {printable(entry.key):<32} {error}")
        more = len(entries) - len(shown)
        print(f"{len(entries)} entries" + (f" ({more} more: --limit 0 shows all)" if more else ""))
    return 0 if entries else 1


def _show(entries: list[DeadLetter]) -> int:
    if not entries:
        print("expiryd dlq show: no such entry", file=sys.stderr)
        return 1
    print(json.dumps(entries[0].to_json(), indent=2))
    return 0


async def _redrive(
    config: Config,
    entries: list[DeadLetter],
    *,
    view: ClusterView | None,
    options: RedisOptions,
    seeds: list[NodeAddress],
) -> int:
    routes = {route.label: route for route in config.routes}
    unknown = sorted({entry.route for entry in entries} - routes.keys())
    if unknown:
        print(
            f"expiryd dlq redrive: the config has no route named {', '.join(map(repr, unknown))}: "
            "redrive those entries with the config that wrote them, or select the others",
            file=sys.stderr,
        )
        return 1
    if not await _a_leader_lives(config, view=view, options=options, seeds=seeds):
        print(
            "expiryd dlq redrive: no leader is alive to send the entries (no replica holds the lease): "
            "start a replica, then redrive again",
            file=sys.stderr,
        )
        return 1
    now = time.time()
    read = await _on_set_aside(entries, "GET", view=view, options=options, seeds=seeds)
    set_aside = {id_: value for id_, value in read.items() if value is not None}
    by_route: dict[str, list[Parked]] = {}
    for entry in entries:
        redriven = entry.to_parked(now=now)
        if entry.id in set_aside:
            # A payload too large to copy when it failed, read now from where it was set aside: the
            # operator redrives it knowingly (after raising routes[].payload_max_bytes, say).
            redriven = dataclasses.replace(redriven, payload=set_aside[entry.id])
        by_route.setdefault(entry.route, []).append(redriven)
    for name, parked in by_route.items():
        keys = retry_keys(config.election.lock_name, name)
        client = owner_client(keys.due, view=view, options=options, seeds=seeds)
        try:
            taken = await RetrySet(client=client, keys=keys, max_entries=routes[name].retry.max_parked).park(parked)
        finally:
            await client.aclose()
        if taken < len(parked):
            print(
                f"expiryd dlq redrive: route {name!r}: its retry set is full; "
                f"{len(parked) - taken} entries stay dead-lettered",
                file=sys.stderr,
            )
            return 1
        print(f"route {name}: {len(parked)} entries handed to the leader; each leaves the stream once handled")
    return 0


async def _on_set_aside(
    entries: list[DeadLetter],
    command: str,
    *,
    view: ClusterView | None,
    options: RedisOptions,
    seeds: list[NodeAddress],
) -> dict[str, Any]:
    """``command`` (GET, UNLINK) on each set-aside companion the entries refer to (``payload_ref``): replies by id."""
    replies: dict[str, Any] = {}
    for entry in entries:
        ref = entry.fields.get("payload_ref")
        if ref is None:
            continue
        client = owner_client(ref, view=view, options=options, seeds=seeds)
        try:
            replies[entry.id] = await client.execute_command(command, ref)
        finally:
            await client.aclose()
    return replies


async def _a_leader_lives(
    config: Config, *, view: ClusterView | None, options: RedisOptions, seeds: list[NodeAddress]
) -> bool:
    """Whether a replica holds the lease: on a majority of the independent masters, or on the cluster."""
    lease = lease_key(config.election.lock_name)
    masters: list[Any] = (
        [options.client_for_url(url) for url in config.election.masters]
        if config.election.masters
        else [owner_client(lease, view=view, options=options, seeds=seeds)]
    )
    try:
        held = await asyncio.gather(*(master.exists(lease) for master in masters), return_exceptions=True)
    finally:
        for master in masters:
            await master.aclose()
    return sum(1 for answer in held if answer == 1) > len(masters) // 2


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
