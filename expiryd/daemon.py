"""One expiryd replica: the data path wired together, and its orderly shutdown.

The path an expired key takes, module by module::

    subscription (one per node) → eventqueue → dispatch (leader gate) → routing → delivery → handlers

and the path that makes it on time: subscription (``expire`` events) → scheduler → schedule → a touch
of each key on its primary at its due time, which makes Redis expire it then.

:class:`Daemon` builds each part from the configuration, owns every
long-running task, serves the HTTP endpoints and, when asked to stop, shuts
down in the order that loses least: stop taking events, let the batch in hand
finish within the grace period, release the lease so another replica takes
over at once, then close the subscriptions::

    stop = asyncio.Event()
    await Daemon(config).run(stop=stop)      # returns after stop is set
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .config import Config, RouteConfig
from .connections import REDIS_FAILURES, NodeAddress, RedisOptions
from .deadletter import DeadLetters
from .dispatch import Dispatcher, Replay
from .election import Elector
from .eventqueue import EventQueue
from .fanin import FanIn
from .handlers import build_handler
from .httpserver import HttpServer, Reply
from .keys import lease_key, progress_key, term_key
from .metrics import Metrics
from .notifications import required_classes
from .payload import PayloadKeys
from .progress import ProgressStore
from .replay import ReplayBuffer
from .routing import Route, Router
from .schedule import Schedule
from .scheduler import NoSchedule, Scheduler
from .topology import Topology

__all__ = ["Daemon"]

log = logging.getLogger("expiryd.daemon")


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        options = RedisOptions.from_config(config.redis)
        seeds = [NodeAddress.from_url(url) for url in config.redis.nodes]
        self._queue = EventQueue(capacity=config.pipeline.queue_size)
        self._topology = Topology(seeds=seeds, options=options)
        self._scheduler: Scheduler | None = None
        kinds = frozenset(kind for route in config.routes for kind in route.events)
        self._fanin = FanIn(
            topology=self._topology,
            queue=self._queue,
            metrics=self.metrics,
            options=options,
            settings=config.redis,
            overflow_wait=config.pipeline.overflow_wait,
            notification_classes=required_classes(schedule=config.schedule.enabled, kinds=kinds),
            kinds=kinds,
            on_expire=self._learn if config.schedule.enabled else None,
        )
        if config.election.masters:
            self._masters: list[Any] = [options.client_for_url(url) for url in config.election.masters]
        else:
            self._masters = [options.cluster_client(seeds)]
        # Payload keys, streams on the cluster and the dead-letter stream share one client.
        self._data = options.cluster_client(seeds)
        self._progress = ProgressStore(masters=self._masters, lock_name=config.election.lock_name)
        # on_elected wakes the leader gate: a new leader must not wait for the next event
        # to replay what the last one left.
        self._elector = Elector(masters=self._masters, settings=config.election, metrics=self.metrics,
                                on_elected=self._queue.wake, may_lead=self._may_lead)
        self._routes = [self._route(r) for r in config.routes]
        router = Router(self._routes)
        internal_keys = _internal_keys(config.election.lock_name)
        if config.schedule.enabled:
            assert config.replay.window is not None  # load_config fills it in
            self._scheduler = Scheduler(
                schedule=Schedule(max_keys=config.schedule.max_keys, horizon=config.schedule.horizon,
                                  keep_due_for=config.replay.window),
                settings=config.schedule,
                options=options,
                router=router,
                leadership=self._elector,
                view=self._fanin.view,
                subscription_starts=self._fanin.subscription_starts,
                metrics=self.metrics,
                internal_keys=internal_keys,
            )
        self._dispatcher = Dispatcher(
            queue=self._queue,
            leadership=self._elector,
            router=router,
            replica=config.id,
            metrics=self.metrics,
            replay=self._replay_settings(),
            dead_letters=DeadLetters(client=self._data, stream=config.dead_letter.stream,
                                     maxlen=config.dead_letter.maxlen),
            overflow_wait=config.pipeline.overflow_wait,
            grace=config.pipeline.shutdown_grace,
            due_times=self._scheduler or NoSchedule(),
            internal_keys=internal_keys,
        )
        status = {
            "/healthz": self._health_reply,
            "/readyz": self._readiness_reply,
            "/leader": self._leader_reply,
        }
        metrics_listen = config.http.metrics_listen
        if metrics_listen is None:
            self._listeners = [HttpServer(listen=config.http.listen, endpoints={"/metrics": self._metrics_reply,
                                                                               **status})]
        else:
            self._listeners = [HttpServer(listen=config.http.listen, endpoints=status),
                               HttpServer(listen=metrics_listen, endpoints={"/metrics": self._metrics_reply})]

    async def run(self, *, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set or a core task fails; return the exit code."""
        for listener in self._listeners:
            await listener.start()
        log.info("started", extra={"listen": self.config.http.listen, "metrics_listen": self.config.http.metrics_listen,
                                   "routes": len(self._routes)})
        fanin = asyncio.create_task(self._fanin.run(), name="fan-in")
        election = asyncio.create_task(self._elector.run(), name="election")
        dispatching = self._dispatcher.start()
        stopping = asyncio.create_task(stop.wait(), name="stop signal")
        core = {fanin, election, dispatching, stopping}
        if self._scheduler is not None:
            core.add(self._scheduler.start())
        done, _ = await asyncio.wait(core, return_when=asyncio.FIRST_COMPLETED)
        failed = [task for task in done if task is not stopping]
        for task in failed:
            log.error("core task ended unexpectedly: shutting down",
                      extra={"task": task.get_name()}, exc_info=task.exception())
        stopping.cancel()
        await self._shut_down(fanin=fanin, election=election)
        return 1 if failed else 0

    async def _shut_down(self, *, fanin: asyncio.Task[None], election: asyncio.Task[None]) -> None:
        log.info("shutting down", extra={"grace": self.config.pipeline.shutdown_grace})
        await self._dispatcher.stop()
        if self._scheduler is not None:
            await self._scheduler.aclose()
        election.cancel()
        await asyncio.gather(election, return_exceptions=True)
        await self._elector.resign()
        fanin.cancel()
        await asyncio.gather(fanin, return_exceptions=True)
        await self._topology.close()
        for route in self._routes:
            await route.handler.close()
        for master in self._masters:
            await master.aclose()
        await self._data.aclose()
        for listener in self._listeners:
            await listener.stop()
        log.info("stopped")

    def _learn(self, address: NodeAddress, keys: list[bytes]) -> None:
        if self._scheduler is not None:
            self._scheduler.learn(address, keys)

    def _route(self, config: RouteConfig) -> Route:
        payload = None if config.payload is None else PayloadKeys(template=config.payload, client=self._data)
        return Route(config=config, handler=build_handler(config, cluster=self._data), payload=payload)

    def _replay_settings(self) -> Replay | None:
        settings = self.config.replay
        if not settings.enabled:
            return None
        assert settings.window is not None  # load_config fills both in
        return Replay(
            buffer=ReplayBuffer(window=settings.window, max_events=settings.max_events),
            store=self._progress,
            tolerance=settings.clock_tolerance,
            record_interval=self.config.election.renew_interval,
        )

    async def _may_lead(self) -> bool:
        """Whether this replica's replay buffer is complete enough for it to take over.

        A replica that joined, or reconnected to a primary, after the last
        leader's final progress record lacks the events in between. Such a
        replica waits until its subscriptions have run unbroken for
        ``replay.warmup``, longer than any takeover gap, so that a replica with
        the whole history wins. When no leader has ever recorded progress there
        is nothing to miss, and no reason to wait.
        """
        settings = self.config.replay
        assert settings.warmup is not None  # load_config fills it in
        covered = self._fanin.covered_for()
        self.metrics.subscriptions_unbroken_seconds.set(covered)
        eligible = not settings.enabled or covered >= settings.warmup
        if not eligible:
            try:
                eligible = not await asyncio.wait_for(self._progress.exists(), self.config.election.renew_deadline)
            except REDIS_FAILURES:
                eligible = False
        self.metrics.leader_eligible.set(eligible)
        return eligible

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
        states = self._fanin.primary_states()
        down = [node for node, up in states.items() if not up]
        if not states or down:
            return Reply(503, ("not subscribed: " + ", ".join(down or ["no primaries yet"]) + "\n").encode())
        return Reply(200, b"ready\n")

    def _leader_reply(self) -> Reply:
        term = self._elector.term()
        if term is None:
            return Reply(503, b"follower\n")
        return Reply(200, f"leader term={term}\n".encode())


def _internal_keys(lock_name: str) -> frozenset[bytes]:
    """expiryd's own keys: the lease expires when a leader dies, and that is not an event for a handler."""
    return frozenset(key.encode() for key in (lease_key(lock_name), term_key(lock_name), progress_key(lock_name)))
