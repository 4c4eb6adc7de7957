"""Loading: built-in defaults, then a YAML file, then ``EXPIRYD_*`` environment, then flags.

Each layer is a tree of raw values; the merged tree is converted field by
field into the dataclasses of :mod:`expiryd.config._schema`, so an error names
the key path and where the value came from::

    config = load_config(path="expiryd.yaml", environ=os.environ, overrides={"listen": "127.0.0.1:9102"})
    parse_duration("500ms")    # 0.5
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from ..errors import ConfigError
from ._schema import (
    DURATION,
    HANDLER_DEFAULTS,
    SIZE,
    ZERO_OK,
    Config,
    RouteConfig,
    memory_bounds,
    replay_timings,
)
from ._secrets import with_password, with_route_secrets
from ._validate import validate

__all__ = ["load_config", "parse_duration"]

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNIT_BYTES = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


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
    config = with_password(config, environ, source)
    config = with_route_secrets(config, environ, source)
    config = _with_derived_replay(config)
    validate(config, source)
    return config


def parse_duration(text: str) -> float:
    """``"500ms"`` → 0.5, ``"5s"`` → 5.0, ``"1m"`` → 60.0. A bare number means seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {text!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * _UNIT_SECONDS[unit]


def parse_size(text: str) -> int:
    """``"512KB"`` → 524288, ``"64MB"`` → 67108864, ``"1GB"``; powers of 1024. A bare number means bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?[bB])?\s*", text)
    if match is None:
        raise ValueError(f"expected a size like 512KB, 64MB or 1GB, got {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    return round(number * _UNIT_BYTES[unit])


def _read_yaml(path: str) -> dict[str, Any]:
    # Imported here, not at the top: the writing side of a payload route (``Companions``) uses the
    # settings' types and has no config file to read.
    import yaml

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


def _add_environment_settings(
    layer: dict[str, Any], environ: Mapping[str, str], cls: type, key_path: tuple[str, ...]
) -> None:
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
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
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
        if SIZE in marks:
            return _to_size(value, path=path, source=source)
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
        if SIZE in typing.get_args(hint):
            return _to_size(text, path=value.variable, source=source)
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


def _to_size(value: Any, *, path: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(source, path, f"expected a size like 512KB, 64MB or 1GB, got {_describe(value)}")
    try:
        size = value if isinstance(value, int) else parse_size(value)
    except ValueError as error:
        raise ConfigError(source, path, str(error)) from None
    if size <= 0:
        raise ConfigError(source, path, "must be greater than zero")
    return size


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


def _with_derived_replay(config: Config) -> Config:
    """Fill in the replay timings and byte bounds left unset, so that the loaded config shows them.

    See replay_timings and memory_bounds.
    """
    timings = replay_timings(config.replay, config.election)
    bounds = memory_bounds(config)
    return dataclasses.replace(
        config,
        replay=dataclasses.replace(
            config.replay, warmup=timings.warmup, window=timings.window, max_bytes=bounds.replay
        ),
        schedule=dataclasses.replace(config.schedule, max_bytes=bounds.schedule),
        pipeline=dataclasses.replace(config.pipeline, queue_bytes=bounds.queue),
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r}"
