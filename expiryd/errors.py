"""The exceptions expiryd raises, and those a handler raises to say how its batch failed.

Every one derives from :class:`ExpirydError`::

    ExpirydError
    ├── ConfigError            a setting is wrong; one line naming the source, key path and problem
    ├── PermanentFailure       raised by a handler: retrying cannot help, dead-letter the batch now
    ├── RetryLater             raised by a handler: retry, no sooner than ``after`` seconds
    ├── TopologyUnavailable    no known node answered ``CLUSTER NODES``
    ├── SubscriptionLost       a node subscription stopped delivering (the text says why); it reconnects
    │   └── SubscriptionRefused    the node answered a subscription command with an error
    └── RedisNotInstalled      the local cluster's server or redis-cli is missing (also a RuntimeError)

A handler signals its failures like this::

    from expiryd import Event, PermanentFailure, RetryLater

    async def handle(events: list[Event]) -> None:
        if not authorised:
            raise PermanentFailure("HTTP 403")        # retrying cannot help
        raise RetryLater("HTTP 429", after=2.0)       # the receiver asked for a pause

This module imports nothing, so that a handler's module can import it without
loading Redis, YAML or HTTP clients.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ExpirydError",
    "PermanentFailure",
    "RedisNotInstalled",
    "RetryLater",
    "SubscriptionLost",
    "SubscriptionRefused",
    "TopologyUnavailable",
]


class ExpirydError(Exception):
    """The base of every exception expiryd defines."""


class ConfigError(ExpirydError):
    """A configuration problem, worded as one line for the operator."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class PermanentFailure(ExpirydError):
    """The batch cannot succeed however often it is retried: dead-letter it now."""


class RetryLater(ExpirydError):
    """A failure worth retrying, no sooner than ``after`` seconds (when given)."""

    def __init__(self, message: str, *, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class TopologyUnavailable(ExpirydError):
    """No known node answered ``CLUSTER NODES``."""


class RedisNotInstalled(ExpirydError, RuntimeError):
    """The server binary (``redis-server`` or ``valkey-server``) or ``redis-cli`` cannot be found."""


class SubscriptionLost(ExpirydError):
    """A node subscription stopped delivering; the text says why. The subscription reconnects."""


class SubscriptionRefused(SubscriptionLost):
    """The node answered a command of the subscription (AUTH, SUBSCRIBE) with an error."""
