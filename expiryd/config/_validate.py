"""Validation: what each setting may be, alone and together with the others.

Runs once the configuration is built and its secrets are read, so that a
mistake stops expiryd at start with one line rather than at the first event::

    validate(config, source="expiryd.yaml")   # raises ConfigError, or returns None
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from ..callables import load_callable
from ..errors import ConfigError
from ..events import KINDS
from ..schedule import MAX_HORIZON
from ._schema import (
    HANDLER_KINDS,
    RETRY_JITTER,
    Config,
    RouteConfig,
    ScheduleConfig,
    SweepConfig,
    TlsConfig,
    WebhookConfig,
    memory_bounds,
    replay_timings,
    takeover_gap,
)

__all__ = ["validate"]

# How takeover_gap is reckoned, for the messages that name it.
_GAP_FORMULA = f"lease + {RETRY_JITTER[1]:g} x retry_interval + renew_interval"


def validate(config: Config, source: str) -> None:
    if not config.redis.nodes:
        raise ConfigError(source, "redis.nodes", "at least one seed node is required")
    for i, url in enumerate(config.redis.nodes):
        _check_url(url, key=f"redis.nodes[{i}]", source=source)
    for i, url in enumerate(config.election.masters):
        _check_url(url, key=f"election.masters[{i}]", source=source)
    _check_tls(config, source)
    keepalive = config.redis.keepalive
    for name in ("idle", "interval"):
        if getattr(keepalive, name) < 1:
            raise ConfigError(source, f"redis.keepalive.{name}", "must be at least 1s (TCP counts whole seconds)")
    if keepalive.count < 1:
        raise ConfigError(source, "redis.keepalive.count", "must be at least 1")
    election = config.election
    if election.renew_interval >= election.renew_deadline:
        raise ConfigError(source, "election.renew_interval", "must be shorter than election.renew_deadline")
    if election.renew_deadline >= election.lease:
        raise ConfigError(
            source,
            "election.renew_deadline",
            "must be shorter than election.lease, so a leader steps down before its lease expires",
        )
    if config.pipeline.queue_size < 1:
        raise ConfigError(source, "pipeline.queue_size", "must be at least 1")
    _check_memory(config, source)
    gap = takeover_gap(election)
    timings = replay_timings(config.replay, election)
    # Each must outlast the takeover gap, or else:
    for setting, seconds, otherwise in (
        ("warmup", timings.warmup, "a replica that joined after the last leader's final record could take over"),
        ("window", timings.window, "events expiring while nobody leads leave the buffer before they are replayed"),
    ):
        if config.replay.enabled and seconds <= gap:
            raise ConfigError(
                source,
                f"replay.{setting}",
                f"must be longer than the takeover gap, {_GAP_FORMULA} ({gap:g}s), or {otherwise}",
            )
    _check_schedule(config.schedule, source)
    _check_sweep(config.sweep, source)
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


def _check_sweep(sweep: SweepConfig, source: str) -> None:
    for name in ("interval", "scan_rate", "count", "max_candidates"):
        if getattr(sweep, name) <= 0:
            raise ConfigError(source, f"sweep.{name}", f"must be positive, got {getattr(sweep, name)!r}")


def _check_memory(config: Config, source: str) -> None:
    bounds = memory_bounds(config)
    parts = {
        "schedule.max_bytes": bounds.schedule,
        "replay.max_bytes": bounds.replay,
        "pipeline.queue_bytes": bounds.queue,
    }
    total = sum(parts.values())
    if total > config.memory.budget:
        raise ConfigError(
            source,
            "memory.budget",
            f"{', '.join(parts)} come to {_mb(total)}, more than the budget of {_mb(config.memory.budget)}",
        )
    for key, size in parts.items():
        if size < 1 << 20:
            raise ConfigError(source, key, f"must be at least 1MB, got {size} bytes (raise memory.budget)")


def _mb(size: int) -> str:
    return f"{size / (1 << 20):g}MB"


def _check_schedule(schedule: ScheduleConfig, source: str) -> None:
    if schedule.horizon > MAX_HORIZON:
        raise ConfigError(source, "schedule.horizon", f"must be at most {MAX_HORIZON / 86_400:.0f} days")
    if schedule.scan_rate < 1:
        raise ConfigError(source, "schedule.scan_rate", "must be at least 1")
    if schedule.rescan_interval >= schedule.horizon:
        raise ConfigError(
            source,
            "schedule.rescan_interval",
            "must be shorter than schedule.horizon, or a key due beyond the horizon at one scan "
            "could be due before the next",
        )


def _check_route(route: RouteConfig, *, key: str, source: str) -> None:
    kinds = [kind for kind in HANDLER_KINDS if getattr(route, kind) is not None]
    if len(kinds) != 1:
        raise ConfigError(source, key, f"needs exactly one handler ({', '.join(HANDLER_KINDS)}), got {len(kinds)}")
    for setting, value in (
        ("concurrency", route.concurrency),
        ("queue_size", route.queue_size),
        ("batch.size", route.batch.size),
        ("retry.max_attempts", route.retry.max_attempts),
        ("retry.in_memory", route.retry.in_memory),
        ("retry.max_parked", route.retry.max_parked),
    ):
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
        raise ConfigError(
            source,
            f"{key}.url",
            "a signed webhook over plain http to a host other than loopback exposes the "
            "signatures; use https, or set allow_insecure: true",
        )


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
        raise ConfigError(
            source, key, "the URL holds a password; give it from the environment or a password file instead"
        )
    try:
        _ = parts.port  # parsing the port is what can fail
    except ValueError:
        raise ConfigError(source, key, f"invalid port in {url!r}") from None


def _check_listen(listen: str, *, key: str, source: str) -> None:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(source, key, f"expected host:port, got {listen!r}")
