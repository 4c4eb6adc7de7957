"""A real HTTP server that plays a webhook receiver, in a thread of the test process.

    with WebhookReceiver(respond=lambda request: 200) as receiver:
        ... receiver.url ...
        receiver.requests          # every request, in the order it arrived
        receiver.events()          # every event of every request that got a 2xx

``respond`` sees each :class:`Request` (its number, headers and parsed body)
and returns the status to answer with; ``delay`` slows every answer down.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    number: int
    headers: dict[str, str]
    body: bytes
    document: dict[str, Any]
    arrived: float = 0.0
    status: int = 0

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.document["events"])


class WebhookReceiver:
    def __init__(
        self,
        *,
        respond: Callable[[Request], int] = lambda request: 200,
        delay: float = 0.0,
        port: int = 0,
        refusal: bytes = b"",
    ) -> None:
        # The body of every answer that is not a 2xx: what a receiver says when it refuses.
        self._refusal = refusal
        self.requests: list[Request] = []
        self._respond = respond
        self._delay = delay
        self._lock = threading.Lock()
        # A port of the test's choosing: until the receiver exists, connections to it are refused.
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/expired"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def events(self) -> list[dict[str, Any]]:
        """Events of the requests answered with a 2xx, in the order they arrived."""
        with self._lock:
            return [event for request in self.requests if 200 <= request.status < 300 for event in request.events]

    def _receive(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            request = Request(len(self.requests) + 1, headers, body, json.loads(body), time.time())
            self.requests.append(request)
        if self._delay:
            time.sleep(self._delay)
        status = self._respond(request)
        request.status = status
        return status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would offer

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver._receive({k.lower(): v for k, v in self.headers.items()}, body)
                said = b"" if 200 <= status < 300 else receiver._refusal
                self.send_response(status)
                self.send_header("Content-Length", str(len(said)))
                self.end_headers()
                self.wfile.write(said)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler
