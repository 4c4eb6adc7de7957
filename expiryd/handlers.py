"""Handlers: what a route does with its events.

A handler takes a batch of events for one route and either finishes all of
them or raises. The ``log`` handler writes one JSON line per event, to standard
output or to a file::

    handler = LogHandler(path=None)             # standard output
    await handler.handle([event])               # {"key": "order:42", "node": ..., "term": 7, ...}
    await handler.close()

Standard output carries only event lines; expiryd's own log goes to standard
error, so ``expiryd ... > events.jsonl`` captures exactly the events.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Protocol

from .config import RouteConfig
from .events import Event

__all__ = ["Handler", "LogHandler", "build_handler"]


class Handler(Protocol):
    async def handle(self, events: list[Event]) -> None: ...

    async def close(self) -> None: ...


# An encoder of our own: importing pottery wraps json.dumps for every caller, which
# costs more than the encoding itself on the hot path.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode


class LogHandler:
    def __init__(self, *, path: str | None) -> None:
        self._owns_stream = path is not None
        self._stream: IO[str] = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115

    async def handle(self, events: list[Event]) -> None:
        lines = [_encode_json(event.to_json()) for event in events]
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()

    async def close(self) -> None:
        if self._owns_stream:
            self._stream.close()


def build_handler(route: RouteConfig) -> Handler:
    if route.log is not None:
        return LogHandler(path=route.log.path)
    raise ValueError(f"route {route.label!r} has no handler")
