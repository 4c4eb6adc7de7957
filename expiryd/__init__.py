"""expiryd: turns Redis Cluster key expirations into reliable work.

What a ``python`` handler needs is importable from the package itself::

    from expiryd import Event, PermanentFailure, RetryLater

    async def on_expired(events: list[Event]) -> None:
        for event in events:
            reply = await orders.cancel(event.key.decode(), fencing_token=event.term)
            if reply.status == 409:
                raise PermanentFailure("order already shipped")     # dead-lettered at once
            if reply.status == 503:
                raise RetryLater("orders service busy", after=2.0)  # retried in 2 s or later

Importing it loads no Redis, YAML or HTTP client: :mod:`expiryd.events` and
:mod:`expiryd.errors` import only the standard library.
"""

from .errors import ConfigError, ExpirydError, PermanentFailure, RetryLater
from .events import Event, Expiration

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Event",
    "Expiration",
    "ExpirydError",
    "PermanentFailure",
    "RetryLater",
    "__version__",
]
