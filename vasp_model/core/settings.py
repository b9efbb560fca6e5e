"""Typed, frozen configs with environment overrides.

Every component has a frozen dataclass config. Defaults live in the class; an
environment variable ``VASP_<FIELD>`` (upper case) overrides a default, and explicit
keyword arguments (CLI flags) override both. Values are validated by each class's
``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "VASP_"
# hours, minutes, seconds, each at most once and in that order: 2h, 30m, 900s, 1h30m, 3m20s
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d*)?)\s*h)?\s*(?:(\d+(?:\.\d*)?)\s*m)?\s*(?:(\d+(?:\.\d*)?)\s*s)?\s*$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid."""


def read_bool(text: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case); else ValueError."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _coerce(value: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value.strip().lower() in ("", "none", "null"):
            return None
        *others, kind = args
        for member in others:  # the first member that reads the value (``bool | str``: "true" a bool, "auto" a str)
            try:
                return _coerce(value, member, name)
            except ConfigError:
                continue
    try:
        if kind is bool:
            return read_bool(value)
        if kind in (int, float, str):
            return kind(value)
        if typing.get_origin(kind) is tuple:
            inner = typing.get_args(kind)[0]
            return tuple(inner(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(kind, '__name__', kind)}") from exc
    return value


def parse_duration(text: str, name: str = "budget") -> float:
    """Seconds of a duration written ``900s``, ``30m``, ``2h`` or in parts, ``1h30m``, ``3m20s`` (as this package
    prints durations; ``name``: what the error calls it)."""
    match = _DURATION.match(str(text))
    parts = (
        [float(value) * unit for value, unit in zip(match.groups(), (3600, 60, 1), strict=True) if value]
        if match
        else []
    )
    if not parts or sum(parts) <= 0:
        raise ValueError(f"{name} must be a positive duration such as 900s, 30m, 2h or 1h30m, got {text!r}")
    return float(sum(parts))


def build_config(
    cls: type[T],
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls``: its defaults, then ``base`` (e.g. a preset), then ``VASP_*`` env vars, then ``overrides``.

    ``None`` values in ``overrides`` are skipped (an unset CLI flag overrides nothing).
    """
    fields = dataclasses.fields(cls)
    unknown = (set(base or {}) | set(overrides or {})) - {f.name for f in fields}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values = dict(base or {})
    for field in fields:
        key = ENV_PREFIX + field.name.upper()
        if key in env:
            values[field.name] = _coerce(env[key], hints[field.name], key)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def as_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a (nested) dataclass config into string params, e.g. for MLflow."""
    out: dict[str, str] = {}
    for key, value in dataclasses.asdict(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                out[f"{name}.{sub}"] = str(subvalue)
        else:
            out[name] = str(value)
    return out
