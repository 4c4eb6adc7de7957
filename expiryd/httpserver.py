"""The HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``, ``/leader`` and the status page ``/``.

A few read-only GET endpoints do not need a framework or a thread: this is a
small HTTP/1.1 server on asyncio streams, one request per connection. Each path
maps to a function that returns the status code and the body, or a coroutine function that
does (the status page, which reads Redis)::

    server = HttpServer(listen="127.0.0.1:9101", endpoints={"/leader": lambda: Reply(200, b"leader\\n")})
    async with server:     # binds, or raises OSError
        ...                # until aclose()

Because the server runs on the event loop itself, a wedged loop cannot answer
``/healthz`` at all, which is exactly what a liveness probe should see.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Self

__all__ = ["HttpServer", "Reply"]

log = logging.getLogger("expiryd.http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}
_REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class HttpServer:
    def __init__(self, *, listen: str, endpoints: Mapping[str, Callable[[], Reply | Awaitable[Reply]]]) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._endpoints = endpoints
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply, head_only = await asyncio.wait_for(self._reply_to(reader), _REQUEST_TIMEOUT)
            writer.write(_encode(reply, head_only=head_only))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _reply_to(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        request_line = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # headers are not needed
        if len(request_line) != 3:
            return Reply(400, b"bad request\n"), False
        method, target, _ = request_line
        if method not in ("GET", "HEAD"):
            return Reply(405, b"only GET and HEAD\n"), False
        endpoint = self._endpoints.get(target.split("?", 1)[0])
        if endpoint is None:
            return Reply(404, b"not found\n"), method == "HEAD"
        try:
            reply = endpoint()
            if inspect.isawaitable(reply):
                reply = await reply
            return reply, method == "HEAD"
        except Exception:
            log.exception("endpoint failed", extra={"path": target})
            return Reply(503, b"endpoint failed\n"), False


def _encode(reply: Reply, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + reply.body
