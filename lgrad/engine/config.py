"""Experiment configs: flat dicts of JSON values, overridden by ``--set key=value``."""
from __future__ import annotations

import copy
import json
from typing import Any, Mapping

__all__ = ["ConfigError", "parse_override", "apply_overrides"]


class ConfigError(ValueError):
    """A bad ``--set`` (unknown key, or a value of the wrong type)."""


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _coerce(key: str, text: str, default: Any) -> Any:
    kind = type(default).__name__
    try:
        if isinstance(default, bool):
            return _parse_bool(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            v = float(text)
            return v
        if isinstance(default, str):
            return text
        if isinstance(default, (list, tuple)):
            v = json.loads(text) if text.strip().startswith("[") else [s for s in text.split(",") if s != ""]
            if not isinstance(v, list):
                raise ValueError(text)
            if default:
                v = [_coerce(key, json.dumps(x) if not isinstance(x, str) else x, default[0]) for x in v]
            return type(default)(v)
        if default is None:
            return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"--set {key}={text}: expected a value of type {kind}") from None
    raise ConfigError(f"--set {key}: values of type {kind} cannot be set from the command line")


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    return key, value


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``config`` with ``overrides`` applied and type-checked.

    String values are parsed to the type of the default; non-string values must
    already have a compatible type (ints are accepted for floats).
    """
    out = copy.deepcopy(dict(config))
    for key, value in (overrides or {}).items():
        if key not in out:
            valid = ", ".join(sorted(out))
            raise ConfigError(f"unknown config key {key!r}; valid keys: {valid}")
        default = out[key]
        if isinstance(value, str) and not isinstance(default, str):
            value = _coerce(key, value, default)
        elif default is not None:
            ok = isinstance(value, type(default)) or (
                isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
            ) or (isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)))
            if isinstance(default, bool) != isinstance(value, bool):
                ok = False
            if not ok:
                raise ConfigError(
                    f"config key {key!r}: expected {type(default).__name__}, got {type(value).__name__}"
                )
            if isinstance(default, float):
                value = float(value)
        out[key] = value
    return out
