"""Configuration: built-in defaults, then a YAML file, then ``EXPIRYD_*`` environment, then flags.

Every setting lives in a dataclass (:mod:`expiryd.config._schema`), with its
default. The loader (:mod:`expiryd.config._load`) walks the dataclasses, so the
YAML file, the environment and the error messages all use the same key paths::

    config = load_config(path="expiryd.yaml", environ=os.environ, overrides={"listen": "127.0.0.1:9102"})
    config.election.lease      # 5.0 (seconds)

Anything wrong raises :class:`ConfigError`, whose text is one line naming the
source (file or environment), the key path and the problem
(:mod:`expiryd.config._validate`). Secrets never come from the file or from
flags (:mod:`expiryd.config._secrets`): the Redis password is read from
``EXPIRYD_REDIS_PASSWORD`` or from the file named by ``redis.password_file``.
"""

from __future__ import annotations

from ..errors import ConfigError
from ._load import load_config, parse_duration, parse_size
from ._schema import (
    HANDLER_DEFAULTS,
    HANDLER_KINDS,
    RETRY_JITTER,
    BatchConfig,
    Config,
    DeadLetterConfig,
    ElectionConfig,
    HttpConfig,
    KeepaliveConfig,
    LogConfig,
    LogHandlerConfig,
    MemoryBounds,
    MemoryConfig,
    PipelineConfig,
    RedisConfig,
    ReplayConfig,
    ReplayTimings,
    RetryConfig,
    RouteConfig,
    ScheduleConfig,
    StreamConfig,
    SweepConfig,
    TlsConfig,
    WebhookConfig,
    memory_bounds,
    replay_timings,
    takeover_gap,
)

__all__ = [
    "HANDLER_DEFAULTS",
    "HANDLER_KINDS",
    "RETRY_JITTER",
    "BatchConfig",
    "Config",
    "ConfigError",
    "DeadLetterConfig",
    "ElectionConfig",
    "HttpConfig",
    "KeepaliveConfig",
    "LogConfig",
    "LogHandlerConfig",
    "MemoryBounds",
    "MemoryConfig",
    "PipelineConfig",
    "RedisConfig",
    "ReplayConfig",
    "ReplayTimings",
    "RetryConfig",
    "RouteConfig",
    "ScheduleConfig",
    "StreamConfig",
    "SweepConfig",
    "TlsConfig",
    "WebhookConfig",
    "memory_bounds",
    "load_config",
    "parse_duration",
    "parse_size",
    "replay_timings",
    "takeover_gap",
]
