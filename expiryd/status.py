"""``expiryd status``: one view of the deployment, from any machine with the config.

    expiryd status --config expiryd.yaml          # text
    expiryd status --config expiryd.yaml --json   # for scripts

It reads what the replicas publish beside the lease (each one's coverage report and what it says of
itself: its term while it leads, whether it may lead, its schedule), the cluster's topology and
every primary's notification setting, the last leader's progress marks, and the dead-letter
stream's length. A :class:`Status` is those facts as values; :func:`attention` says what needs
someone's attention in them, and the command exits 1 when anything does: no leader, a primary no
replica hears, a primary without the notifications expiryd needs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import Config
from .connections import REDIS_FAILURES, NodeAddress, RedisOptions
from .coverage import Coverage, CoverageStore
from .errors import TopologyUnavailable
from .keys import coverage_key
from .notifications import ensure_notifications, required_classes
from .progress import ProgressStore
from .topology import Topology, owner_client

__all__ = ["Primary", "ReplicaView", "Status", "attention", "read_status", "run_status"]


@dataclass(frozen=True)
class ReplicaView:
    id: str
    #: The term while it leads, else None.
    term: int | None
    eligible: bool
    #: Seconds it has deferred to a better-placed replica (None when it does not).
    deferring_for: float | None
    #: Per primary, how far back its unbroken history reaches (seconds), None while unsubscribed.
    history: dict[str, float | None]
    scheduled: int | None = None
    next_due: float | None = None
    listen: str | None = None
    report_age: float = 0.0
    #: What it holds of its memory budget (schedule, history, merged queue), and the budget, in bytes.
    memory: int | None = None
    memory_budget: int | None = None


@dataclass(frozen=True)
class Primary:
    address: str
    slots: int
    #: The replicas subscribed to it now.
    heard_by: list[str]
    #: "ok", or what is missing, or why it could not be read.
    notifications: str
    notifications_ok: bool
    #: Seconds since the last leader's mark of it moved (None: no mark).
    mark_age: float | None


@dataclass(frozen=True)
class Status:
    at: float
    replicas: list[ReplicaView]
    primaries: list[Primary]
    dead_letters: int | None
    dead_letter_stream: str
    problems: list[str] = field(default_factory=list)

    @property
    def leader(self) -> ReplicaView | None:
        leading = [replica for replica in self.replicas if replica.term is not None]
        return max(leading, key=lambda replica: replica.term or 0, default=None)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        leader = self.leader
        document["leader"] = None if leader is None else {"id": leader.id, "term": leader.term}
        document["attention"] = attention(self)
        return document


def attention(status: Status) -> list[str]:
    """What needs someone's attention in ``status``: one line each; empty when all is well."""
    lines = list(status.problems)
    if not status.replicas:
        lines.append("no replica reports: none is running, or none can reach the lease's masters")
    elif status.leader is None:
        lines.append("no leader: no replica holds the lease")
    for primary in status.primaries:
        if not primary.heard_by:
            lines.append(f"primary {primary.address} ({primary.slots} slots): no replica hears it")
        if not primary.notifications_ok:
            lines.append(f"primary {primary.address}: notifications {primary.notifications}")
    return lines


def run_status(config: Config, *, as_json: bool) -> int:
    status = asyncio.run(read_status(config))
    if as_json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(render_text(status))
    return 1 if attention(status) else 0


async def read_status(config: Config) -> Status:
    options = RedisOptions.from_config(config.redis)
    seeds = [NodeAddress.from_url(url) for url in config.redis.nodes]
    now = time.time()
    problems: list[str] = []
    topology = Topology(seeds=seeds, options=options)
    try:
        view = await topology.read()
    except TopologyUnavailable as error:
        problems.append(f"cannot read the topology: {error}")
        view = None
    finally:
        await topology.aclose()
    masters: list[Any] = (
        [options.client_for_url(url) for url in config.election.masters]
        if config.election.masters
        else [owner_client(coverage_key(config.election.lock_name), view=view, options=options, seeds=seeds)]
    )
    data = owner_client(config.dead_letter.stream, view=view, options=options, seeds=seeds)
    try:
        store = CoverageStore(
            masters=masters, key=coverage_key(config.election.lock_name), interval=config.election.renew_interval
        )
        reports = await _or_note(store.live(now=now), [], problems, "cannot read the replicas' reports")
        marks = await _or_note(
            ProgressStore(masters=masters, lock_name=config.election.lock_name).read(),
            {},
            problems,
            "cannot read the progress marks",
        )
        dead_letters = await _or_note(
            data.xlen(config.dead_letter.stream), None, problems, "cannot read the dead-letter stream"
        )
        primaries: list[Primary] = []
        if view is not None:
            required = required_classes(
                schedule=config.schedule.enabled, kinds=[kind for route in config.routes for kind in route.events]
            )
            primaries = list(
                await asyncio.gather(
                    *(
                        _primary(node, view.slot_count(node), options, required, reports, marks, now)
                        for node in sorted(view.primaries)
                    )
                )
            )
    finally:
        await data.aclose()
        for master in masters:
            await master.aclose()
    return Status(
        at=now,
        replicas=[_replica(report, now) for report in reports],
        primaries=primaries,
        dead_letters=dead_letters,
        dead_letter_stream=config.dead_letter.stream,
        problems=problems,
    )


async def _or_note(call: Any, fallback: Any, problems: list[str], what: str) -> Any:
    try:
        return await call
    except (*REDIS_FAILURES, ValueError, KeyError) as error:
        problems.append(f"{what}: {error.__class__.__name__}")
        return fallback


async def _primary(
    node: NodeAddress,
    slots: int,
    options: RedisOptions,
    required: str,
    reports: list[Coverage],
    marks: dict[str, Any],
    now: float,
) -> Primary:
    client = options.client(node)
    try:
        found = await ensure_notifications(client, repair=False, required=required)
    except REDIS_FAILURES as error:
        notifications, ok = f"unreadable ({error.__class__.__name__})", False
    else:
        if found.refused:
            notifications, ok = "unknown: CONFIG refused", True
        elif found.ok:
            notifications, ok = "ok", True
        else:
            notifications, ok = f"{found.before!r} lacks {found.missing}", False
    finally:
        await client.aclose()
    address = str(node)
    mark = marks.get(address)
    return Primary(
        address=address,
        slots=slots,
        heard_by=[report.replica for report in reports if report.since.get(address) is not None],
        notifications=notifications,
        notifications_ok=ok,
        mark_age=None if mark is None else round(max(0.0, now - mark.received_at), 1),
    )


def _replica(report: Coverage, now: float) -> ReplicaView:
    facts = report.facts
    return ReplicaView(
        id=report.replica,
        term=facts.get("term"),
        eligible=bool(facts.get("eligible", False)),
        deferring_for=facts.get("deferring_for"),
        history={node: None if since is None else round(now - since, 1) for node, since in report.since.items()},
        scheduled=facts.get("scheduled"),
        next_due=facts.get("next_due"),
        listen=facts.get("listen"),
        report_age=round(max(0.0, now - report.written_at), 1),
        memory=facts.get("memory_bytes"),
        memory_budget=facts.get("memory_budget"),
    )


def render_text(status: Status) -> str:
    leader = status.leader
    lines = [f"leader    {'none' if leader is None else f'{leader.id} (term {leader.term})'}"]
    for replica in status.replicas:
        if replica.term is not None:
            role = f"leader, term {replica.term}"
        elif replica.eligible:
            role = "follower, eligible"
        elif replica.deferring_for is not None:
            role = f"follower, deferring for {replica.deferring_for:.0f} s to a replica whose history reaches further"
        else:
            role = "follower, not eligible yet"
        shortest = min((age for age in replica.history.values() if age is not None), default=None)
        reach = "no primary subscribed" if shortest is None else f"history reaches back {shortest:.0f} s"
        schedule = "" if replica.scheduled is None else f", {replica.scheduled} keys scheduled"
        if replica.memory is not None and replica.memory_budget:
            schedule += f", memory {replica.memory / (1 << 20):.0f} of {replica.memory_budget / (1 << 20):.0f} MB"
        lines.append(f"replica   {replica.id}: {role}; {reach}{schedule}; report {replica.report_age:.1f} s old")
    for primary in status.primaries:
        heard = ", ".join(primary.heard_by) or "NOBODY"
        mark = "no mark" if primary.mark_age is None else f"mark {primary.mark_age:.0f} s old"
        lines.append(
            f"primary   {primary.address}  {primary.slots} slots  heard by {heard}  "
            f"notifications {primary.notifications}  {mark}"
        )
    if leader is not None and leader.next_due is not None:
        lines.append(f"schedule  next key due in {max(0.0, leader.next_due - status.at):.1f} s")
    count = "unknown" if status.dead_letters is None else str(status.dead_letters)
    lines.append(f"dead      {count} entries in {status.dead_letter_stream}")
    needs = attention(status)
    lines.append("attention " + ("none" if not needs else f"{len(needs)}"))
    lines += [f"  - {line}" for line in needs]
    return "\n".join(lines)
