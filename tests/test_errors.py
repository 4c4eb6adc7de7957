"""Every exception expiryd defines derives from ExpirydError and is still raised and caught where it was."""

from __future__ import annotations

import pytest

import expiryd.config
import expiryd.devtools.localcluster
import expiryd.handlers
import expiryd.handlers.base
import expiryd.topology
from expiryd.errors import (
    ConfigError,
    ExpirydError,
    PermanentFailure,
    RedisNotInstalled,
    RetryLater,
    SubscriptionLost,
    SubscriptionRefused,
    TopologyUnavailable,
)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError,
        PermanentFailure,
        RetryLater,
        TopologyUnavailable,
        SubscriptionLost,
        SubscriptionRefused,
        RedisNotInstalled,
    ],
)
def test_every_error_is_an_expiryd_error(error: type[Exception]) -> None:
    assert issubclass(error, ExpirydError)


def test_a_refused_subscription_is_a_lost_one() -> None:
    assert issubclass(SubscriptionRefused, SubscriptionLost)


def test_redis_not_installed_is_still_a_runtime_error() -> None:
    assert issubclass(RedisNotInstalled, RuntimeError)


def test_the_old_locations_name_the_same_classes() -> None:
    assert expiryd.config.ConfigError is ConfigError
    assert expiryd.handlers.PermanentFailure is expiryd.handlers.base.PermanentFailure is PermanentFailure
    assert expiryd.handlers.RetryLater is expiryd.handlers.base.RetryLater is RetryLater
    assert expiryd.topology.TopologyUnavailable is TopologyUnavailable
    assert expiryd.devtools.localcluster.RedisNotInstalled is RedisNotInstalled


def test_config_error_keeps_its_parts_and_one_line_text() -> None:
    error = ConfigError("expiryd.yaml", "redis.nodes", "at least one seed node is required")
    assert str(error) == "expiryd.yaml: redis.nodes: at least one seed node is required"
    assert (error.source, error.key, error.problem) == (
        "expiryd.yaml",
        "redis.nodes",
        "at least one seed node is required",
    )


def test_retry_later_takes_after_by_keyword_only() -> None:
    assert RetryLater("HTTP 429", after=2.0).after == 2.0
    assert RetryLater("HTTP 503").after is None
    with pytest.raises(TypeError):
        RetryLater("HTTP 429", 2.0)  # type: ignore[misc]
