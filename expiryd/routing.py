"""Routing: the first route that takes the event's kind and whose glob matches the key gets the event.

Globs are shell-style (``*``, ``?``, ``[abc]``), matched against the raw key
bytes, so keys that are not valid UTF-8 route like any other. A route takes
``expired`` events unless it lists other kinds (``hexpired``, a hash field's
expiry)::

    router = Router([Route(config=RouteConfig(match="order:*", name="orders", concurrency=4), handler=handler)])
    router.match(b"order:42")                    # the "orders" route
    router.match(b"session:9")                   # None: counted as unrouted, not processed
    router.match(b"order:42", kind="hexpired")   # None: "orders" takes only expired events
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from .config import BatchConfig, RetryConfig, RouteConfig
from .events import EXPIRED
from .handlers import Handler
from .payload import PayloadKeys
from .retries import RetrySet

__all__ = ["Route", "Router"]


# Compared and hashed by identity: the leader gate keys each term's deliveries and batches by route.
@dataclass(eq=False, kw_only=True)
class Route:
    """A route's settings, the handler its events go to and its payload keys (see :mod:`expiryd.delivery`)."""

    config: RouteConfig
    handler: Handler
    payload: PayloadKeys | None = None
    #: Where failed events wait for their next attempt once the in-memory ones are spent, and where
    #: ``expiryd dlq redrive`` puts dead letters for the leader to send again; None in tests that need none.
    retries: RetrySet | None = None
    # Looked up for every event, so built once rather than from the settings each time.
    _events: frozenset[str] = field(init=False, repr=False)
    _regex: re.Pattern[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._events = frozenset(self.config.events)
        self._regex = re.compile(fnmatch.translate(self.config.match).encode("utf-8"))

    @property
    def name(self) -> str:
        return self.config.label

    @property
    def pattern(self) -> str:
        return self.config.match

    @property
    def concurrency(self) -> int:
        return self.config.concurrency

    @property
    def queue_size(self) -> int:
        return self.config.queue_size

    @property
    def batch(self) -> BatchConfig:
        return self.config.batch

    @property
    def retry(self) -> RetryConfig:
        return self.config.retry

    @property
    def events(self) -> frozenset[str]:
        return self._events

    def matches(self, key: bytes) -> bool:
        return self._regex.match(key) is not None


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, key: bytes, kind: str = EXPIRED) -> Route | None:
        for route in self.routes:
            if kind in route.events and route.matches(key):
                return route
        return None
