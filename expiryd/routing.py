"""Routing: the first route that takes the event's kind and whose glob matches the key gets the event.

Globs are shell-style (``*``, ``?``, ``[abc]``), matched against the raw key
bytes, so keys that are not valid UTF-8 route like any other. A route takes
``expired`` events unless it lists other kinds (``hexpired``, a hash field's
expiry)::

    router = Router([Route(name="orders", pattern="order:*", handler=handler, concurrency=4)])
    router.match(b"order:42")                    # the "orders" route
    router.match(b"session:9")                   # None: counted as unrouted, not processed
    router.match(b"order:42", kind="hexpired")   # None: "orders" takes only expired events
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from .config import BatchConfig, RetryConfig
from .events import EXPIRED
from .handlers import Handler
from .payload import PayloadKeys

__all__ = ["Route", "Router"]


@dataclass(eq=False)
class Route:
    """A glob, the handler its events go to, and how they are delivered (see :mod:`expiryd.delivery`)."""

    name: str
    pattern: str
    handler: Handler
    concurrency: int = 1
    queue_size: int = 10_000
    batch: BatchConfig = field(default_factory=BatchConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    payload: PayloadKeys | None = None
    events: frozenset[str] = frozenset({EXPIRED})
    _regex: re.Pattern[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(fnmatch.translate(self.pattern).encode("utf-8"))

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
