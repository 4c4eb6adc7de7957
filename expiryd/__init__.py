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

and so is the application's side of a payload route, which writes a key and its companion
together (see :mod:`expiryd.companions`)::

    from expiryd import Companions

    companions = Companions(client=cluster, template="{key}:payload")
    await companions.schedule("order:{42}", b'{"customer": 7}', ttl=900)

Importing the package loads no Redis, YAML or HTTP client: :mod:`expiryd.events` and
:mod:`expiryd.errors` import only the standard library, and ``Companions`` (which needs
redis-py) is imported on first use.
"""

from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ExpirydError, PermanentFailure, RetryLater
from .events import Event, Expiration

if TYPE_CHECKING:
    from .companions import Companions

__version__ = "0.1.0"

__all__ = [
    "Companions",
    "ConfigError",
    "Event",
    "Expiration",
    "ExpirydError",
    "PermanentFailure",
    "RetryLater",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Companions":
        from .companions import Companions

        return Companions
    raise AttributeError(f"module 'expiryd' has no attribute {name!r}")
