"""The ``webhook`` handler: POST a batch of events as JSON.

The body is always ``{"events": [event, ...]}``, each event as
:meth:`expiryd.events.Event.to_json` writes it. With a secret, the request
carries ``X-Expiryd-Signature: sha256=<hex HMAC-SHA256 of the body>``, so the
receiver can check that expiryd sent it; ``X-Expiryd-Term`` carries the
leadership term, so the receiver can refuse a stale leader::

    handler = WebhookHandler(url="https://orders.internal/expired", timeout=10.0, headers={}, secret=b"s3cret",
                             keepalive=KeepaliveConfig())
    await handler.handle(events)

A 2xx response means done. 408, 429 and 5xx responses and connection errors
raise :class:`RetryLater` (honouring ``Retry-After`` in seconds); any other
status raises :class:`PermanentFailure`, which sends the batch straight to the
dead-letter stream. One connection pool per route is reused for every request.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx

from ..config import KeepaliveConfig
from ..connections import describe_error, keepalive_socket_options
from ..events import Event
from .base import PermanentFailure, RetryLater, encode_json

__all__ = ["WebhookHandler", "signature"]

_RETRYABLE = frozenset({408, 429})


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Expiryd-Signature`` value for ``body``; a receiver computes the same and compares."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# How much of a refusing receiver's answer an error (and so a dead-letter entry) keeps.
_SAID_LENGTH = 200


class WebhookHandler:
    def __init__(
        self,
        *,
        url: str,
        timeout: float,
        headers: dict[str, str],
        secret: bytes | None,
        keepalive: KeepaliveConfig,
    ) -> None:
        self._url = url
        self._secret = secret
        # A receiver behind a NAT or load balancer: the pooled connection must not die silently between events.
        self._client = httpx.AsyncClient(
            timeout=timeout,
            headers=headers,
            follow_redirects=False,
            transport=httpx.AsyncHTTPTransport(socket_options=keepalive_socket_options(keepalive)),
        )

    async def handle(self, events: list[Event]) -> None:
        body = encode_json({"events": [event.to_json() for event in events]}).encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Expiryd-Term": str(events[0].term)}
        if self._secret is not None:
            headers["X-Expiryd-Signature"] = signature(self._secret, body)
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as error:
            # The message names the failure, never the URL: it may carry credentials.
            raise RetryLater(describe_error(error)) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        # The start of what the receiver said: why, for whoever reads the dead letters.
        start = _start_of(response)
        said = f"HTTP {status}: {start}" if start else f"HTTP {status}"
        if status in _RETRYABLE or status >= 500:
            raise RetryLater(said, after=_retry_after(response))
        raise PermanentFailure(said)

    async def aclose(self) -> None:
        await self._client.aclose()


def _start_of(response: httpx.Response) -> str:
    """The first ``_SAID_LENGTH`` characters of a response body, on one line."""
    text = response.content[: _SAID_LENGTH * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:_SAID_LENGTH] + ("…" if len(text) > _SAID_LENGTH else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
