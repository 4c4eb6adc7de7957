"""One expiryd replica: the data path wired together, and its orderly shutdown.

The path an expired key takes, module by module::

    subscription (one per node) → eventqueue (merged queue) → gate (leader gate) → routing
    → delivery (lanes, attempts) → handlers → deadletter (what could not be handled)

and the path that makes it on time: subscription (``expire`` events) → scheduler → schedule → a touch
of each key on its primary at its due time, which makes Redis expire it then.

:class:`Daemon` builds each part from the configuration, owns every
service (each one task, see :mod:`expiryd.tasks`), serves the HTTP endpoints and, when asked to stop, shuts
down in the order that loses least: stop taking events, let the batch in hand
finish within the grace period, release the lease so another replica takes
over at once, then close the subscriptions::

    stop = asyncio.Event()
    await Daemon(config).run(stop=stop)      # returns after stop is set
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .clock import ClusterClock
from .config import Config, ConfigError, RouteConfig, memory_bounds, replay_timings
from .connections import REDIS_FAILURES, NodeAddress, RedisOptions
from .coverage import CoverageReporter, CoverageStore, another_process_publishes
from .deadletter import DeadLetters
from .election import Elector
from .eventqueue import EventQueue
from .fanin import FanIn
from .gate import LeaderGate
from .handlers import build_handler
from .httpserver import HttpServer, Reply
from .keys import coverage_key, lease_key, progress_key, retry_keys, term_key
from .leadership import TermSignal
from .metrics import Metrics
from .notifications import required_classes
from .payload import PayloadKeys
from .progress import ProgressStore
from .recorder import ProgressRecorder
from .replay import NoReplay, Replay, ReplayBuffer
from .retries import RetrySet
from .routing import Route, Router
from .schedule import Schedule
from .scheduler import NoSchedule, Scheduler
from .shift import ShiftSettings
from .status import read_status
from .statuspage import StatusPage
from .succession import Succession
from .sweep import Sweeper
from .tasks import Service, cancel_and_wait
from .topology import Topology

__all__ = ["Daemon"]

log = logging.getLogger("expiryd.daemon")


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._replay_timings = replay_timings(config.replay, config.election)
        self._memory = memory_bounds(config)
        self.metrics = Metrics()
        for part, bound in dataclasses.asdict(self._memory).items():
            self.metrics.memory_bound_bytes.labels(part=part).set(bound)
        # Every time compared across replicas or with Redis is the cluster's, whatever this host's clock says.
        self._clock = ClusterClock()
        self.metrics.clock_offset.set_function(self._clock.offset)
        options = RedisOptions.from_config(config.redis)
        seeds = [NodeAddress.from_url(url) for url in config.redis.nodes]
        self._queue = EventQueue(capacity=config.pipeline.queue_size, max_bytes=self._memory.queue)
        if config.election.masters:
            self._masters: list[Any] = [options.client_for_url(url) for url in config.election.masters]
        else:
            self._masters = [options.cluster_client(seeds)]
        # Payload keys, streams on the cluster and the dead-letter stream share one client.
        self._data = options.cluster_client(seeds)
        self._routes = [self._route(r) for r in config.routes]
        router = Router(self._routes)
        self._topology = Topology(seeds=seeds, options=options)
        self._scheduler: Scheduler | None = None
        kinds = frozenset(kind for route in config.routes for kind in route.events)
        self._fanin = FanIn(
            topology=self._topology,
            queue=self._queue,
            metrics=self.metrics,
            clock=self._clock,
            options=options,
            settings=config.redis,
            overflow_wait=config.pipeline.overflow_wait,
            notification_classes=required_classes(schedule=config.schedule.enabled, kinds=kinds),
            router=router,
            on_expire=self._learn if config.schedule.enabled else None,
        )
        # Read at each scrape, on the leader as on a follower.
        self.metrics.subscriptions_unbroken_seconds.set_function(self._fanin.covered_for)
        self._progress = ProgressStore(masters=self._masters, lock_name=config.election.lock_name)
        self._coverage_store = CoverageStore(
            masters=self._masters, key=coverage_key(config.election.lock_name), interval=config.election.renew_interval
        )
        # Tells this process's reports apart from those of another started with the same id by mistake.
        self._instance = uuid.uuid4().hex[:12]
        self._coverage = CoverageReporter(
            store=self._coverage_store,
            replica=config.id,
            instance=self._instance,
            since=self._fanin.coverage_since,
            facts=self.facts,
            interval=config.election.renew_interval,
            now=self._clock.now,
        )
        self._history = self._replay()
        self._succession = Succession(
            progress=self._progress,
            reports=self._coverage_store,
            coverage=self._coverage,
            history=self._history,
            settings=config.replay,
            warmup=self._replay_timings.warmup,
            deadline=config.election.renew_deadline,
            replica=config.id,
            now=self._clock.now,
            metrics=self.metrics,
        )
        signal = TermSignal(queue=self._queue)
        self._elector = Elector(
            masters=self._masters,
            settings=config.election,
            metrics=self.metrics,
            now=self._clock.now,
            succession=self._succession,
            signal=signal,
        )
        internal_keys = _internal_keys(config.election.lock_name)
        if config.schedule.enabled:
            self._scheduler = Scheduler(
                schedule=Schedule(
                    max_bytes=self._memory.schedule,
                    horizon=config.schedule.horizon,
                    keep_due_for=self._replay_timings.window,
                ),
                settings=config.schedule,
                options=options,
                router=router,
                leadership=self._elector,
                view=self._fanin.view,
                subscription_starts=self._fanin.subscription_starts,
                metrics=self.metrics,
                clock=self._clock,
                internal_keys=internal_keys,
            )
        self._gate = LeaderGate(
            queue=self._queue,
            signal=signal,
            leadership=self._elector,
            replay=self._history,
            due_times=self._scheduler or NoSchedule(),
            settings=ShiftSettings(
                replica=config.id,
                router=router,
                leadership=self._elector,
                dead_letters=DeadLetters(
                    client=self._data,
                    stream=config.dead_letter.stream,
                    maxlen=config.dead_letter.maxlen,
                    max_bytes=config.dead_letter.max_bytes,
                    metrics=self.metrics,
                ),
                metrics=self.metrics,
                upstream_blocked=self._queue.blocked_for,
                overflow_wait=config.pipeline.overflow_wait,
                grace=config.pipeline.shutdown_grace,
                now=self._clock.now,
                internal_keys=internal_keys,
            ),
            metrics=self.metrics,
        )
        self._recorder = ProgressRecorder(
            gate=self._gate,
            queue=self._queue,
            replay=self._history,
            leadership=self._elector,
            subscriptions=self._fanin,
            succession=self._succession,
            metrics=self.metrics,
            # An idle primary's mark moves up with time once it is older than the tolerance within
            # which a time-only mark replays.
            idle_after=config.replay.clock_tolerance,
        )
        self._sweeper = Sweeper(
            settings=config.sweep,
            router=router,
            options=options,
            leadership=self._elector,
            view=self._fanin.view,
            gate=self._gate,
            metrics=self.metrics,
            now=self._clock.now,
        )
        page = StatusPage(config=config, read=read_status, dead_letters=self._data, replica=config.id)
        status: dict[str, Callable[[], Reply | Awaitable[Reply]]] = {
            "/": page.reply,
            "/healthz": self._health_reply,
            "/readyz": self._readiness_reply,
            "/leader": self._leader_reply,
        }
        metrics_listen = config.http.metrics_listen
        if metrics_listen is None:
            self._listeners = [
                HttpServer(listen=config.http.listen, endpoints={"/metrics": self._metrics_reply, **status})
            ]
        else:
            self._listeners = [
                HttpServer(listen=config.http.listen, endpoints=status),
                HttpServer(listen=metrics_listen, endpoints={"/metrics": self._metrics_reply}),
            ]

    async def run(self, *, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set or a service fails; return the exit code."""
        async with contextlib.AsyncExitStack() as stack:
            # Closed in the reverse order: the gate first (it finishes the batch in hand and
            # records progress), then the scheduler, the election (which releases the lease, so
            # another replica takes over at once), the subscriptions, and the connections.
            for listener in self._listeners:
                await stack.enter_async_context(listener)
            stack.push_async_callback(self._data.aclose)
            for master in self._masters:
                stack.push_async_callback(master.aclose)
            for route in self._routes:
                stack.push_async_callback(route.handler.aclose)
            stack.push_async_callback(self._topology.aclose)
            await self._refuse_a_second_process_with_this_id()
            services = self.services()
            for service in services:
                await stack.enter_async_context(service)
            log.info(
                "started",
                extra={
                    "listen": self.config.http.listen,
                    "metrics_listen": self.config.http.metrics_listen,
                    "routes": len(self._routes),
                },
            )
            stopping = asyncio.create_task(stop.wait(), name="stop signal")
            done, _ = await asyncio.wait(
                {stopping, *(service.task for service in services)}, return_when=asyncio.FIRST_COMPLETED
            )
            failed = [task for task in done if task is not stopping]
            for task in failed:
                log.error(
                    "core task ended unexpectedly: shutting down",
                    extra={"task": task.get_name()},
                    exc_info=task.exception(),
                )
            await cancel_and_wait([stopping])
            log.info("shutting down", extra={"grace": self.config.pipeline.shutdown_grace})
        log.info("stopped")
        return 1 if failed else 0

    def services(self) -> list[Service]:
        """Every service, in the order they start; they stop in the reverse order.

        The sweeper stops first, so that nothing enters the routes while they drain; then the gate,
        which lets the routes finish within the grace period; then the recorder, which records the
        marks they finished with; the coverage report is withdrawn before the lease is released, so
        that followers wait for no one; the subscriptions close last.
        """
        return [
            self._fanin,
            self._elector,
            self._coverage,
            *([] if self._scheduler is None else [self._scheduler]),
            self._recorder,
            self._gate,
            *([self._sweeper] if self._sweeper.has_work else []),
        ]

    def _learn(self, address: NodeAddress, keys: list[bytes]) -> None:
        if self._scheduler is not None:
            self._scheduler.learn(address, keys)

    def _route(self, config: RouteConfig) -> Route:
        payload = (
            None
            if config.payload is None
            else PayloadKeys(
                template=config.payload,
                client=self._data,
                keep_for=config.payload_keep_for,
                max_bytes=config.payload_max_bytes,
                batch_bytes=config.payload_batch_bytes,
            )
        )
        # Every route has one: a route that keeps its attempts in memory still takes redriven entries.
        retries = RetrySet(
            client=self._data,
            keys=retry_keys(self.config.election.lock_name, config.label),
            max_entries=config.retry.max_parked,
        )
        return Route(
            config=config,
            handler=build_handler(config, cluster=self._data, keepalive=self.config.redis.keepalive),
            payload=payload,
            retries=retries,
        )

    def _replay(self) -> Replay | NoReplay:
        settings = self.config.replay
        if not settings.enabled:
            return NoReplay()
        return Replay(
            buffer=ReplayBuffer(window=self._replay_timings.window, max_bytes=self._memory.replay, now=self._clock.now),
            store=self._progress,
            tolerance=settings.clock_tolerance,
            record_interval=self.config.election.renew_interval,
            metrics=self.metrics,
        )

    async def _refuse_a_second_process_with_this_id(self) -> None:
        """Raise :class:`ConfigError` when a running process already publishes reports under this replica id.

        Two processes with one id would share one coverage report and one identity in every record.
        A report left by a crashed predecessor stops moving; a live one moves within an interval.
        """
        interval = self.config.election.renew_interval
        store, replica = self._coverage_store, self.config.id
        try:
            before = await asyncio.wait_for(store.report(replica=replica, now=self._clock.now()), interval)
            if before is None or before.instance == self._instance:
                return  # none live: at most one a crashed predecessor left long enough ago
            await asyncio.sleep(1.5 * interval)
            after = await asyncio.wait_for(store.report(replica=replica, now=self._clock.now()), interval)
        except REDIS_FAILURES:
            return  # Redis will be waited for by the services; this check is not worth blocking on
        if another_process_publishes(before, after, instance=self._instance):
            assert after is not None
            raise ConfigError(
                self.config.source,
                "id",
                f"replica id {self.config.id!r} is already live: another process published under it "
                f"{max(0.0, self._clock.now() - after.written_at):.1f} s ago; give each replica its own id "
                "(--id, EXPIRYD_ID)",
            )

    def facts(self) -> dict[str, Any]:
        """What this replica says of itself in its coverage report, for ``expiryd status``."""
        term = self._elector.term()
        facts: dict[str, Any] = {
            **self._succession.standing(),
            "term": term,
            "listen": self.config.http.listen,
            "history_seconds": round(self._history.oldest_age(), 1),
            # As each part last reported it (expiryd_memory_bytes): the schedule, the history, the queue.
            "memory_bytes": round(
                sum(
                    self.metrics.registry.get_sample_value("expiryd_memory_bytes", {"part": part}) or 0.0
                    for part in dataclasses.asdict(self._memory)
                )
            ),
            "memory_budget": self.config.memory.budget,
        }
        if term is not None:
            facts["eligible"] = True  # it leads: the last verdict let it
        if self._scheduler is not None:
            facts.update(self._scheduler.summary())
        return facts

    def _metrics_reply(self) -> Reply:
        return Reply(200, self.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")

    def _health_reply(self) -> Reply:
        # The longest an election loop turn can take is an acquire plus a term
        # write, each bounded by renew_deadline; past that, the loop is wedged.
        settings = self.config.election
        limit = 3 * settings.renew_deadline + settings.lease
        silent_for = time.monotonic() - self._elector.heartbeat
        if silent_for > limit:
            return Reply(503, f"election loop silent for {silent_for:.1f}s\n".encode())
        return Reply(200, b"ok\n")

    def _readiness_reply(self) -> Reply:
        if not self._fanin.cluster_reachable:
            return Reply(503, b"cluster unreachable\n")
        # Judged by the slots: a replica is ready when it hears the primary of every one of them.
        unheard = self._fanin.report_unheard()
        if unheard:
            missed = ", ".join(f"{node} ({count} slots)" for node, count in sorted(unheard.items()))
            return Reply(503, f"not subscribed: {missed}\n".encode())
        return Reply(200, b"ready\n")

    def _leader_reply(self) -> Reply:
        term = self._elector.term()
        if term is None:
            return Reply(503, b"follower\n")
        return Reply(200, f"leader term={term}\n".encode())


def _internal_keys(lock_name: str) -> frozenset[bytes]:
    """expiryd's own keys: the lease expires when a leader dies, and that is not an event for a handler."""
    return frozenset(
        key.encode()
        for key in (lease_key(lock_name), term_key(lock_name), progress_key(lock_name), coverage_key(lock_name))
    )
