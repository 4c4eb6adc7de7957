"""Handlers: what a route does with its events.

Four kinds, one per module: ``log`` (JSON lines), ``webhook`` (HTTP POST),
``stream`` (Redis ``XADD``) and ``python`` (a function of yours). Each takes a
batch of events for one route and either finishes all of them or raises (see
:mod:`expiryd.handlers.base` for what each failure means). The delivery of a
route (:mod:`expiryd.delivery`) calls it, retries it and dead-letters what
keeps failing::

    handler = build_handler(route_config, cluster=cluster_client, keepalive=config.redis.keepalive)
    await handler.handle(events)
    await handler.aclose()
"""

from __future__ import annotations

from typing import Any

from ..callables import load_callable
from ..config import KeepaliveConfig, RouteConfig
from ..connections import RedisOptions
from .base import Handler, PermanentFailure, RetryLater
from .log import LogHandler
from .python import PythonHandler
from .stream import StreamHandler
from .webhook import WebhookHandler

__all__ = [
    "Handler",
    "LogHandler",
    "PermanentFailure",
    "PythonHandler",
    "RetryLater",
    "StreamHandler",
    "WebhookHandler",
    "build_handler",
]


def build_handler(route: RouteConfig, *, cluster: Any, keepalive: KeepaliveConfig) -> Handler:
    """The handler ``route`` asks for; ``cluster`` is the client for streams on the cluster itself.

    ``keepalive``: the TCP keepalive of the connections the handler opens itself (webhooks, a stream's server).
    """
    if route.log is not None:
        return LogHandler(path=route.log.path)
    if route.webhook is not None:
        webhook = route.webhook
        secret = webhook.secret.encode("utf-8") if webhook.secret is not None else None
        return WebhookHandler(
            url=webhook.url, timeout=webhook.timeout, headers=webhook.headers, secret=secret, keepalive=keepalive
        )
    if route.stream is not None:
        stream = route.stream
        if stream.url is None:
            return StreamHandler(client=cluster, name=stream.name, maxlen=stream.maxlen, owns_client=False)
        client = RedisOptions.for_stream(stream, keepalive=keepalive).pooled_client(stream.url)
        return StreamHandler(client=client, name=stream.name, maxlen=stream.maxlen, owns_client=True)
    if route.python is not None:
        return PythonHandler(function=load_callable(route.python))
    raise ValueError(f"route {route.label!r} has no handler")
