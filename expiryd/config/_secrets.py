"""Secrets: the Redis password, webhook signing secrets and stream passwords.

None of them is read from the YAML file or from flags: each comes from an
environment variable or from a file (a mounted Secret), named in the
configuration. The loader fills them in after the rest is built::

    config = with_password(config, os.environ, source="expiryd.yaml")
    config = with_route_secrets(config, os.environ, source="expiryd.yaml")
    config.redis.password      # from EXPIRYD_REDIS_PASSWORD or redis.password_file
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from ._schema import Config

__all__ = ["with_password", "with_route_secrets"]


def with_password(config: Config, environ: Mapping[str, str], source: str) -> Config:
    password = environ.get("EXPIRYD_REDIS_PASSWORD")
    password_file = environ.get("EXPIRYD_REDIS_PASSWORD_FILE") or config.redis.password_file
    if password is None and password_file:
        password = _read_secret_file(password_file, key="redis.password_file", source=source)
    return dataclasses.replace(config, redis=dataclasses.replace(config.redis, password=password))


def with_route_secrets(config: Config, environ: Mapping[str, str], source: str) -> Config:
    """Read each webhook's signing secret and each stream target's password from env or file."""
    routes = []
    for i, route in enumerate(config.routes):
        if route.webhook is not None:
            secret = _read_secret(
                environ,
                env=route.webhook.secret_env,
                file=route.webhook.secret_file,
                key=f"routes[{i}].webhook",
                source=source,
                what="secret",
            )
            route = dataclasses.replace(route, webhook=dataclasses.replace(route.webhook, secret=secret))
        if route.stream is not None:
            password = _read_secret(
                environ,
                env=route.stream.password_env,
                file=route.stream.password_file,
                key=f"routes[{i}].stream",
                source=source,
                what="password",
            )
            route = dataclasses.replace(route, stream=dataclasses.replace(route.stream, password=password))
        routes.append(route)
    return dataclasses.replace(config, routes=routes)


def _read_secret(
    environ: Mapping[str, str], *, env: str | None, file: str | None, key: str, source: str, what: str
) -> str | None:
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
