"""Configuration: built-in defaults, then a YAML file, then ``EXPIRYD_*`` environment, then flags.

Every setting lives in a dataclass below, with its default. The loader walks the
dataclasses, so the YAML file, the environment and the error messages all use
the same key paths::

    config = load_config(path="expiryd.yaml", environ=os.environ, overrides={"listen": "127.0.0.1:9102"})
    config.election.lease      # 5.0 (seconds)

Anything wrong raises :class:`ConfigError`, whose text is one line naming the
source (file or environment), the key path and the problem. Secrets never come
from the file or from flags: the Redis password is read from
``EXPIRYD_REDIS_PASSWORD`` or from the file named by ``redis.password_file``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import ssl
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union
from urllib.parse import urlsplit

import yaml

from .callables import load_callable
from .errors import ConfigError
from .events import EXPIRED, KINDS
from .keys import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_LOCK_NAME

__all__ = [
    "BatchConfig",
    "Config",
    "ConfigError",
    "DeadLetterConfig",
    "ElectionConfig",
    "HttpConfig",
    "LogConfig",
    "LogHandlerConfig",
    "PipelineConfig",
    "RedisConfig",
    "ReplayConfig",
    "RetryConfig",
    "RouteConfig",
    "ScheduleConfig",
    "StreamConfig",
    "TlsConfig",
    "WebhookConfig",
    "load_config",
    "parse_duration",
    "takeover_gap",
]

# Marks a float field as a duration in seconds, written as "500ms", "5s" or "1m".
DURATION = "duration"
Duration = Annotated[float, DURATION]
# A duration that may also be zero ("do not wait").
ZERO_OK = "zero_ok"
Wait = Annotated[float, DURATION, ZERO_OK]


@dataclass(frozen=True)
class TlsConfig:
    # Used when the URLs say rediss://. No ca_file: the system's trusted CAs.
    ca_file: str | None = None
    # A client certificate and its key, for servers that require one (mutual TLS).
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True


@dataclass(frozen=True)
class RedisConfig:
    nodes: list[str] = field(default_factory=list)
    tls: TlsConfig = field(default_factory=TlsConfig)
    username: str | None = None
    password_file: str | None = None
    ensure_notifications: bool = True
    topology_interval: Duration = 1.0
    connect_timeout: Duration = 2.0
    watchdog_interval: Duration = 1.0
    watchdog_timeout: Duration = 2.0
    # Filled from EXPIRYD_REDIS_PASSWORD or password_file, never from YAML or flags.
    password: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class ElectionConfig:
    lock_name: str = DEFAULT_LOCK_NAME
    masters: list[str] = field(default_factory=list)
    lease: Duration = 5.0
    renew_interval: Duration = 1.0
    renew_deadline: Duration = 3.0
    retry_interval: Duration = 0.5


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = 100_000
    overflow_wait: Duration = 5.0
    shutdown_grace: Duration = 10.0


@dataclass(frozen=True)
class ReplayConfig:
    enabled: bool = True
    # None: derived from the election timings (see _with_derived_replay).
    window: Duration | None = None
    warmup: Duration | None = None
    max_events: int = 200_000
    clock_tolerance: Duration = 2.0


@dataclass(frozen=True)
class ScheduleConfig:
    # Touch each routed key at its due time, so it expires then and not when Redis's own cycle finds it.
    enabled: bool = True
    # Keys held at most (about 150 MB per million on every replica); more fire on Redis's timing.
    max_keys: int = 1_000_000
    # Keys due further ahead wait for a rescan that finds them within the horizon.
    horizon: Duration = 3600.0
    # How often every primary is scanned again for routed keys (and for those beyond the horizon).
    rescan_interval: Duration = 600.0
    # Keys a recovery scan visits per second, per replica.
    scan_rate: int = 20_000


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:9101"
    # When set, /metrics is served here only, and no longer on listen.
    metrics_listen: str | None = None


@dataclass(frozen=True)
class LogConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class LogHandlerConfig:
    path: str | None = None


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: Duration = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    # The signing secret: from the environment variable named here, or from a file.
    secret_env: str | None = None
    secret_file: str | None = None
    # Allows sending a signed request over plain http to a host other than loopback.
    allow_insecure: bool = False
    secret: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class StreamConfig:
    name: str
    maxlen: int = 1_000_000
    # Another Redis server (redis://host:port/db or rediss://); by default the stream lives on the cluster.
    url: str | None = None
    # For a rediss:// url; the cluster's redis.tls does not apply to another server.
    tls: TlsConfig = field(default_factory=TlsConfig)
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class BatchConfig:
    size: int = 100
    max_wait: Wait = 0.0


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 5
    backoff: Duration = 0.5
    max_backoff: Duration = 30.0


@dataclass(frozen=True)
class RouteConfig:
    match: str
    name: str | None = None
    concurrency: int = 1
    queue_size: int = 10_000
    batch: BatchConfig = field(default_factory=BatchConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    # A template naming the key that holds the event's data, e.g. "{key}:payload".
    payload: str | None = None
    log: LogHandlerConfig | None = None
    webhook: WebhookConfig | None = None
    stream: StreamConfig | None = None
    # "package.module:function", called with a list of events; sync functions run in a thread.
    python: str | None = None
    # The keyevents this route takes: expired (a key expired), hexpired (fields of a hash expired).
    events: list[str] = field(default_factory=lambda: [EXPIRED])

    @property
    def label(self) -> str:
        """The route's name in metrics and logs: ``name``, or the glob itself."""
        return self.name or self.match


HANDLER_KINDS = ("log", "webhook", "stream", "python")

# Where a route leaves them out, concurrency and batch.size depend on its handler, as measured in
# bursts of 100k-200k keys (BENCHMARKS.md, "Handlers"): a webhook call is an HTTP request and a
# stream batch one round trip to the stream's node, so with one lane of 100 events both mostly
# waited; bigger batches, and more of them in flight, went 1.7x (webhook) and 1.2-1.4x (stream)
# faster. Log and python routes keep RouteConfig's defaults.
HANDLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "webhook": {"concurrency": 2, "batch": {"size": 500}},
    "stream": {"concurrency": 4, "batch": {"size": 500}},
}


def _with_handler_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a route as written) with its handler's defaults for the settings it leaves out."""
    defaults = next((HANDLER_DEFAULTS[kind] for kind in HANDLER_DEFAULTS if raw.get(kind) is not None), None)
    if defaults is None:
        return raw
    raw = dict(raw)
    raw.setdefault("concurrency", defaults["concurrency"])
    batch = raw.get("batch")
    if batch is None or (isinstance(batch, dict) and "size" not in batch):
        raw["batch"] = {**(batch or {}), "size": defaults["batch"]["size"]}
    return raw


@dataclass(frozen=True)
class DeadLetterConfig:
    stream: str = DEFAULT_DEAD_LETTER_STREAM
    maxlen: int = 100_000


@dataclass(frozen=True)
class Config:
    id: str = field(default_factory=socket.gethostname)
    redis: RedisConfig = field(default_factory=RedisConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dead_letter: DeadLetterConfig = field(default_factory=DeadLetterConfig)
    routes: list[RouteConfig] = field(default_factory=list)
    source: str = field(default="defaults", compare=False, metadata={"internal": True})


# Flags and the environment name a few settings by short names.
_SHORT_NAMES = {
    "id": ("id",),
    "listen": ("http", "listen"),
    "log_format": ("log", "format"),
    "log_level": ("log", "level"),
}


def load_config(
    *,
    path: str | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> Config:
    """Load the configuration from defaults, ``path``, ``environ`` and ``overrides``, in that order.

    ``overrides`` holds flag values by short name (``id``, ``listen``,
    ``log_format``, ``log_level``); ``None`` means the flag was not given.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = path
        raw = _read_yaml(path)
    raw_env = _environment_layer(environ)
    merged = _merge(raw, raw_env)
    for short, value in (overrides or {}).items():
        if value is not None:
            _set_path(merged, _SHORT_NAMES[short], value)
    config = _build(Config, merged, path="", source=source)
    config = dataclasses.replace(config, source=source)
    config = _with_password(config, environ, source)
    config = _with_route_secrets(config, environ, source)
    config = _with_derived_replay(config)
    _validate(config, source)
    return config


def parse_duration(text: str) -> float:
    """``"500ms"`` → 0.5, ``"5s"`` → 5.0, ``"1m"`` → 60.0. A bare number means seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {text!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(path, "(file)", f"cannot read: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(path, where, f"invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "(top level)", "expected a mapping of settings")
    return data


def _environment_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``EXPIRYD_SECTION_KEY=value`` into ``{"section": {"key": value}}``.

    Values stay strings here; ``_build`` parses them like YAML scalars, so an
    error names the variable.
    """
    layer: dict[str, Any] = {}
    for short, key_path in _SHORT_NAMES.items():
        value = environ.get(f"EXPIRYD_{short.upper()}")
        if value is not None:
            _set_path(layer, key_path, _EnvValue(f"EXPIRYD_{short.upper()}", value))
    for section in dataclasses.fields(Config):
        section_type = _hints(Config)[section.name]
        if not isinstance(section_type, type) or not dataclasses.is_dataclass(section_type):
            continue
        _add_environment_settings(layer, environ, section_type, (section.name,))
    return layer


def _add_environment_settings(layer: dict[str, Any], environ: Mapping[str, str], cls: type,
                              key_path: tuple[str, ...]) -> None:
    hints = _hints(cls)
    for setting in dataclasses.fields(cls):
        if setting.metadata.get("secret"):
            continue
        setting_path = (*key_path, setting.name)
        if dataclasses.is_dataclass(hints[setting.name]):
            _add_environment_settings(layer, environ, hints[setting.name], setting_path)
            continue
        name = "EXPIRYD_" + "_".join(setting_path).upper()
        if name in environ:
            _set_path(layer, setting_path, _EnvValue(name, environ[name]))


@dataclass(frozen=True)
class _EnvValue:
    """A string from the environment, remembered with its variable name for errors."""

    variable: str
    text: str


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_path(tree: dict[str, Any], key_path: tuple[str, ...], value: Any) -> None:
    for key in key_path[:-1]:
        child = tree.get(key)
        if not isinstance(child, dict):
            child = tree[key] = {}
        tree = child
    tree[key_path[-1]] = value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _build(cls: type, raw: Any, *, path: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(source, path or "(top level)", f"expected a mapping, got {_describe(raw)}")
    if cls is RouteConfig:
        raw = _with_handler_defaults(raw)
    settable = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in settable or settable[key].metadata.get("secret"):
            raise ConfigError(source, _join(path, str(key)), _unknown_key_problem(cls, str(key), settable))
    hints = _hints(cls)
    values = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, path=_join(path, name), source=source)
    try:
        return cls(**values)
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(source, _join(path, missing[0]), "is required") from None


def _unknown_key_problem(cls: type, key: str, settable: dict[str, dataclasses.Field[Any]]) -> str:
    if key == "password":
        return "passwords are not read from the config file; set EXPIRYD_REDIS_PASSWORD or redis.password_file"
    known = ", ".join(name for name, f in settable.items() if not f.metadata.get("secret"))
    return f"unknown key (expected one of: {known})"


def _convert(hint: Any, value: Any, *, path: str, source: str) -> Any:
    if isinstance(value, _EnvValue):
        return _convert_env(hint, value, path=path)
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *marks = typing.get_args(hint)
        if DURATION in marks:
            return _to_duration(value, path=path, source=source, zero_ok=ZERO_OK in marks)
        return _convert(base, value, path=path, source=source)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, path=path, source=source)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(source, path, f"expected a list, got {_describe(value)}")
        return [_convert(item, v, path=f"{path}[{i}]", source=source) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected a mapping, got {_describe(value)}")
        return {str(k): _convert(item, v, path=f"{path}.{k}", source=source) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, path=path, source=source)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, path, f"expected a whole number, got {_describe(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a string, got {_describe(value)}")
        return value
    raise ConfigError(source, path, f"unsupported setting type {hint!r}")


def _convert_env(hint: Any, value: _EnvValue, *, path: str) -> Any:
    """Parse an environment string into the setting's type; errors name the variable."""
    source, text = "environment", value.text
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is Annotated:
        return _to_duration(text, path=value.variable, source=source, zero_ok=ZERO_OK in typing.get_args(hint))
    if origin is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(source, value.variable, f"expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(source, value.variable, f"expected a whole number, got {text!r}") from None
    return text


def _to_duration(value: Any, *, path: str, source: str, zero_ok: bool = False) -> float:
    if isinstance(value, bool):
        raise ConfigError(source, path, f"expected a duration like 500ms, 5s or 1m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            raise ConfigError(source, path, str(error)) from None
    else:
        raise ConfigError(source, path, f"expected a duration like 500ms, 5s or 1m, got {_describe(value)}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        raise ConfigError(source, path, "must be greater than zero")
    return seconds


def _with_password(config: Config, environ: Mapping[str, str], source: str) -> Config:
    password = environ.get("EXPIRYD_REDIS_PASSWORD")
    password_file = environ.get("EXPIRYD_REDIS_PASSWORD_FILE") or config.redis.password_file
    if password is None and password_file:
        password = _read_secret_file(password_file, key="redis.password_file", source=source)
    return dataclasses.replace(config, redis=dataclasses.replace(config.redis, password=password))


def _with_route_secrets(config: Config, environ: Mapping[str, str], source: str) -> Config:
    """Read each webhook's signing secret and each stream target's password from env or file."""
    routes = []
    for i, route in enumerate(config.routes):
        if route.webhook is not None:
            secret = _read_secret(environ, env=route.webhook.secret_env, file=route.webhook.secret_file,
                                  key=f"routes[{i}].webhook", source=source, what="secret")
            route = dataclasses.replace(route, webhook=dataclasses.replace(route.webhook, secret=secret))
        if route.stream is not None:
            password = _read_secret(environ, env=route.stream.password_env, file=route.stream.password_file,
                                    key=f"routes[{i}].stream", source=source, what="password")
            route = dataclasses.replace(route, stream=dataclasses.replace(route.stream, password=password))
        routes.append(route)
    return dataclasses.replace(config, routes=routes)


def _read_secret(environ: Mapping[str, str], *, env: str | None, file: str | None, key: str, source: str,
                 what: str) -> str | None:
    if env is not None:
        if env not in environ:
            raise ConfigError(source, f"{key}.{what}_env", f"environment variable {env} is not set")
        return environ[env]
    if file is None:
        return None
    return _read_secret_file(file, key=f"{key}.{what}_file", source=source)


def _read_secret_file(path: str, *, key: str, source: str) -> str:
    """A secret from a file (a mounted Secret), without its trailing newline."""
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise ConfigError(source, key, f"cannot read: {error.strerror or error}") from None


def takeover_gap(election: ElectionConfig) -> float:
    """The longest a dead leader's last progress record can precede its successor's takeover."""
    return election.lease + election.retry_interval * 1.2 + election.renew_interval


def _with_derived_replay(config: Config) -> Config:
    """Fill in the replay timings left unset: both must outlast the worst takeover gap.

    With the default election timings the warm-up is 8 s and the window 15 s.
    """
    gap = takeover_gap(config.election)
    replay = config.replay
    warmup = replay.warmup if replay.warmup is not None else round(gap + 1.4, 3)
    window = replay.window if replay.window is not None else round(2 * gap + 1.8, 3)
    return dataclasses.replace(config, replay=dataclasses.replace(replay, warmup=warmup, window=window))


def _validate(config: Config, source: str) -> None:
    if not config.redis.nodes:
        raise ConfigError(source, "redis.nodes", "at least one seed node is required")
    for i, url in enumerate(config.redis.nodes):
        _check_url(url, key=f"redis.nodes[{i}]", source=source)
    for i, url in enumerate(config.election.masters):
        _check_url(url, key=f"election.masters[{i}]", source=source)
    _check_tls(config, source)
    election = config.election
    if election.renew_interval >= election.renew_deadline:
        raise ConfigError(source, "election.renew_interval", "must be shorter than election.renew_deadline")
    if election.renew_deadline >= election.lease:
        raise ConfigError(source, "election.renew_deadline",
                          "must be shorter than election.lease, so a leader steps down before its lease expires")
    if config.pipeline.queue_size < 1:
        raise ConfigError(source, "pipeline.queue_size", "must be at least 1")
    if config.replay.max_events < 1:
        raise ConfigError(source, "replay.max_events", "must be at least 1")
    gap = takeover_gap(election)
    replay = config.replay
    assert replay.warmup is not None and replay.window is not None
    if replay.enabled and replay.warmup <= gap:
        raise ConfigError(source, "replay.warmup",
                          f"must be longer than the takeover gap, lease + 1.2 x retry_interval + renew_interval "
                          f"({gap:g}s), or a replica that joined after the last leader's final record could take over")
    if replay.enabled and replay.window <= gap:
        raise ConfigError(source, "replay.window",
                          f"must be longer than the takeover gap, lease + 1.2 x retry_interval + renew_interval "
                          f"({gap:g}s), or events expiring while nobody leads leave the buffer before they are replayed")
    _check_schedule(config.schedule, source)
    if config.log.format not in ("json", "text"):
        raise ConfigError(source, "log.format", f"expected json or text, got {config.log.format!r}")
    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(source, "log.level", f"expected debug, info, warning or error, got {config.log.level!r}")
    _check_listen(config.http.listen, key="http.listen", source=source)
    if config.http.metrics_listen is not None:
        _check_listen(config.http.metrics_listen, key="http.metrics_listen", source=source)
        if config.http.metrics_listen == config.http.listen:
            raise ConfigError(source, "http.metrics_listen", "must differ from http.listen")
    if not config.routes:
        raise ConfigError(source, "routes", "at least one route is required")
    for i, route in enumerate(config.routes):
        _check_route(route, key=f"routes[{i}]", source=source)
    if config.dead_letter.maxlen < 1:
        raise ConfigError(source, "dead_letter.maxlen", "must be at least 1")


def _check_schedule(schedule: ScheduleConfig, source: str) -> None:
    if schedule.max_keys < 1:
        raise ConfigError(source, "schedule.max_keys", "must be at least 1")
    if schedule.scan_rate < 1:
        raise ConfigError(source, "schedule.scan_rate", "must be at least 1")
    if schedule.rescan_interval >= schedule.horizon:
        raise ConfigError(source, "schedule.rescan_interval",
                          "must be shorter than schedule.horizon, or a key due beyond the horizon at one scan "
                          "could be due before the next")


def _check_route(route: RouteConfig, *, key: str, source: str) -> None:
    kinds = [kind for kind in HANDLER_KINDS if getattr(route, kind) is not None]
    if len(kinds) != 1:
        raise ConfigError(source, key, f"needs exactly one handler ({', '.join(HANDLER_KINDS)}), got {len(kinds)}")
    for setting, value in (("concurrency", route.concurrency), ("queue_size", route.queue_size),
                           ("batch.size", route.batch.size), ("retry.max_attempts", route.retry.max_attempts)):
        if value < 1:
            raise ConfigError(source, f"{key}.{setting}", "must be at least 1")
    if not route.events:
        raise ConfigError(source, f"{key}.events", f"needs at least one of {', '.join(KINDS)}")
    for i, kind in enumerate(route.events):
        if kind not in KINDS:
            raise ConfigError(source, f"{key}.events[{i}]", f"expected {' or '.join(KINDS)}, got {kind!r}")
    if len(set(route.events)) != len(route.events):
        raise ConfigError(source, f"{key}.events", "lists the same event twice")
    if route.payload is not None and "{key}" not in route.payload:
        raise ConfigError(source, f"{key}.payload", f"must contain {{key}}, got {route.payload!r}")
    if route.webhook is not None:
        _check_webhook(route.webhook, key=f"{key}.webhook", source=source)
    if route.stream is not None:
        if route.stream.url is not None:
            _check_url(route.stream.url, key=f"{key}.stream.url", source=source)
            _check_tls_files(route.stream.tls, key=f"{key}.stream.tls", source=source)
        if route.stream.maxlen < 1:
            raise ConfigError(source, f"{key}.stream.maxlen", "must be at least 1")
    if route.python is not None:
        try:
            load_callable(route.python)
        except ValueError as error:
            raise ConfigError(source, f"{key}.python", str(error)) from None


def _check_webhook(webhook: WebhookConfig, *, key: str, source: str) -> None:
    parts = urlsplit(webhook.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(source, f"{key}.url", f"expected an http:// or https:// URL, got {webhook.url!r}")
    if webhook.secret_env is not None and webhook.secret_file is not None:
        raise ConfigError(source, f"{key}.secret_file", "set secret_env or secret_file, not both")
    plain_text_off_host = parts.scheme == "http" and not _is_loopback(parts.hostname)
    if webhook.secret is not None and plain_text_off_host and not webhook.allow_insecure:
        raise ConfigError(source, f"{key}.url",
                          "a signed webhook over plain http to a host other than loopback exposes the "
                          "signatures; use https, or set allow_insecure: true")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_tls(config: Config, source: str) -> None:
    schemes = {urlsplit(url).scheme for url in [*config.redis.nodes, *config.election.masters]}
    if len(schemes) > 1:
        raise ConfigError(source, "redis.nodes", "mixes redis:// and rediss://; use one for the cluster and masters")
    _check_tls_files(config.redis.tls, key="redis.tls", source=source)


def _check_tls_files(tls: TlsConfig, *, key: str, source: str) -> None:
    """The CA, certificate and key exist and load, so a typo fails at start rather than at the first connection."""
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(source, f"{key}.cert_file", "a client certificate needs both cert_file and key_file")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(source, f"{key}.{name}", f"no such file: {path}")
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(source, f"{key}.ca_file", f"not a usable CA certificate: {error}") from None
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(source, f"{key}.cert_file", f"certificate and key do not load: {error}") from None


def _check_url(url: str, *, key: str, source: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(source, key, f"expected a URL like redis://host:6379 or rediss://host:6379, got {url!r}")
    if parts.password:
        raise ConfigError(source, key,
                          "the URL holds a password; give it from the environment or a password file instead")
    try:
        _ = parts.port  # parsing the port is what can fail
    except ValueError:
        raise ConfigError(source, key, f"invalid port in {url!r}") from None


def _check_listen(listen: str, *, key: str, source: str) -> None:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(source, key, f"expected host:port, got {listen!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r}"
