"""Experiment configs: flat dicts of JSON values, overridden by ``--set key=value``,
and checked against declared limits before anything is computed.

An experiment module may declare, next to ``CONFIGS``::

    LIMITS = {
        "steps": Int(min=1, max=10**7),
        "learning_rate": Float(gt=0),        # a Float is always finite
        "beta": Float(min=0, lt=1),
        "backend": Choice("vmap", "mesh"),
        "alphas": Float(gt=0),               # a list-valued key: every element
    }

    def memory_estimate(config) -> int:      # bytes its arrays need (a cheap estimate)
        ...

    def check_config(config) -> None:        # optional: constraints between keys
        ...                                  # raise ValueError("key=value: what is allowed")

Keys without an entry fall back to :data:`GENERIC_LIMITS` (matched by name, e.g.
``steps``, ``n_*``, ``learning_rate``). :func:`validate_config` applies both, plus the
memory guard, and raises :class:`ConfigError` with one line naming the key, the
value and what is allowed. ``lgrad run --set``, every ``lgrad sweep`` cell and
``lgrad reproduce`` go through it.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import math
import numbers
import os
from typing import Any, Callable, Mapping

__all__ = [
    "ConfigError",
    "Int",
    "Float",
    "Choice",
    "Bool",
    "GENERIC_LIMITS",
    "parse_override",
    "apply_overrides",
    "limits_for",
    "validate_config",
    "available_memory",
    "format_bytes",
]


class ConfigError(ValueError):
    """A bad config value (unknown key, wrong type, out of range, too large)."""


# ----------------------------------------------------------------------------- limit specs


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class Int:
    """An integer in ``[min, max]`` (either bound optional)."""

    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max

    def allowed(self) -> str:
        parts = [f">= {self.min}" if self.min is not None else "", f"<= {self.max}" if self.max is not None else ""]
        return "an integer" + (" " + " and ".join(p for p in parts if p) if any(parts) else "")

    def ok(self, v: Any) -> bool:
        return _is_int(v) and (self.min is None or v >= self.min) and (self.max is None or v <= self.max)

    def __repr__(self) -> str:
        return f"Int(min={self.min}, max={self.max})"


class Float:
    """A finite number with optional bounds: ``min <= v``, ``v <= max``, ``gt < v``, ``v < lt``."""

    def __init__(self, min: float | None = None, max: float | None = None, gt: float | None = None, lt: float | None = None):
        self.min, self.max, self.gt, self.lt = min, max, gt, lt

    def allowed(self) -> str:
        parts = [f"{op} {b:g}" for op, b in ((">=", self.min), (">", self.gt), ("<=", self.max), ("<", self.lt)) if b is not None]
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    def ok(self, v: Any) -> bool:
        if not _is_real(v) or not math.isfinite(float(v)):
            return False
        v = float(v)
        return (
            (self.min is None or v >= self.min)
            and (self.max is None or v <= self.max)
            and (self.gt is None or v > self.gt)
            and (self.lt is None or v < self.lt)
        )

    def __repr__(self) -> str:
        return f"Float(min={self.min}, max={self.max}, gt={self.gt}, lt={self.lt})"


class Choice:
    """One of the listed values."""

    def __init__(self, *values: Any):
        if not values:
            raise ValueError("Choice needs at least one value")
        self.values = tuple(values)

    def allowed(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)

    def ok(self, v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in self.values) or (
            _is_real(v) and any(_is_real(c) and v == c for c in self.values)
        )

    def __repr__(self) -> str:
        return f"Choice{self.values!r}"


class Bool:
    """``true`` or ``false``."""

    def allowed(self) -> str:
        return "true or false"

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool)

    def __repr__(self) -> str:
        return "Bool()"


Limit = Int | Float | Choice | Bool

_COUNT_MAX = 2**31 - 1  # step counters are int32 on the device

# Applied by key name where an experiment declares no limit of its own (first match wins).
GENERIC_LIMITS: list[tuple[str, Limit]] = [
    ("seed", Int(min=0, max=2**32 - 1)),
    ("steps", Int(min=1, max=_COUNT_MAX)),
    ("epochs", Int(min=1, max=_COUNT_MAX)),
    ("rounds", Int(min=1, max=_COUNT_MAX)),
    ("*_steps", Int(min=0, max=_COUNT_MAX)),
    ("*_epochs", Int(min=1, max=_COUNT_MAX)),
    ("*_every", Int(min=0, max=_COUNT_MAX)),
    ("n_*", Int(min=1)),
    ("batch_size", Int(min=1)),
    ("*_size", Int(min=1)),
    ("learning_rate", Float(gt=0)),
    ("lr", Float(gt=0)),
    ("*_lr", Float(gt=0)),
    ("eps", Float(gt=0)),
    ("b1", Float(min=0, lt=1)),
    ("b2", Float(min=0, lt=1)),
    ("beta", Float(min=0, lt=1)),
    ("momentum", Float(min=0, lt=1)),
    ("*_fraction", Float(min=0, max=1)),
    ("backend", Choice("vmap", "mesh", "pmap", "auto")),
    ("strategy", Choice("auto", "vmap", "sequential")),
]


def limits_for(key: str, limits: Mapping[str, Limit] | None = None) -> Limit | None:
    """The limit of ``key``: the experiment's own, else the first matching generic one."""
    if limits and key in limits:
        return limits[key]
    for pattern, limit in GENERIC_LIMITS:
        if fnmatch.fnmatchcase(key, pattern):
            return limit
    return None


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value.isprintable() else repr(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, default=str)


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, float) and _is_real(value):
        return math.isfinite(float(value))
    return True


def _check_one(key: str, value: Any, limit: Limit | None, default: Any) -> str | None:
    """What is allowed, when ``value`` is not."""
    if isinstance(value, (list, tuple)):
        for v in value:
            d = default[0] if isinstance(default, (list, tuple)) and default else None
            bad = _check_one(key, v, limit, d)
            if bad:
                return f"every element {bad}" if not bad.startswith("every element") else bad
        return None
    if limit is not None and not limit.ok(value):
        return limit.allowed()
    if _is_real(value) and not math.isfinite(float(value)):
        return "a finite number"
    if not _type_ok(value, default):
        return "a finite number"
    return None


# ----------------------------------------------------------------------------- memory guard


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def generic_memory_estimate(config: Mapping[str, Any]) -> int:
    """A crude guess when an experiment declares no ``memory_estimate``: a per-step
    history of one float64 per step (``steps``, ``epochs`` or ``rounds``, the largest)
    for each item of the largest ``n_*`` count. It only catches absurd sizes; an
    experiment's own ``memory_estimate`` is the real guard."""
    length = max([int(config[k]) for k in ("steps", "epochs", "rounds") if _is_int(config.get(k))] or [1])
    width = max([int(v) for k, v in config.items() if k.startswith("n_") and _is_int(v)] or [1])
    return 8 * max(length, 1) * max(width, 1)


# ----------------------------------------------------------------------------- validation


def validate_config(
    config: Mapping[str, Any],
    limits: Mapping[str, Limit] | None = None,
    *,
    estimate: Callable[[Mapping[str, Any]], int] | None = None,
    defaults: Mapping[str, Any] | None = None,
    changed: Mapping[str, Any] | None = None,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    source: str | Callable[[str], str] = "config",
    available: int | None = None,
) -> None:
    """Refuse (``ConfigError``, one line) a config that breaks a limit or would not fit in memory.

    Args:
      config: the full config (after overrides).
      limits: the experiment's ``LIMITS`` (override :data:`GENERIC_LIMITS` key by key).
      estimate: ``memory_estimate(config) -> bytes`` (default: :func:`generic_memory_estimate`).
      defaults: the unmodified config (types of float keys: a float key stays finite).
      changed: the keys the user set (named in the memory error), default none.
      check: the experiment's ``check_config(config)`` (constraints between keys);
        a ``ValueError`` it raises is refused with its message.
      source: how the user set values, for the message (``--set``, ``--grid``, ...), or
        a function of the key giving it.
      available: bytes available (default: :func:`available_memory`).
    """
    where = source if callable(source) else (lambda key: source)
    for key in (limits or {}):
        if key not in config:
            raise ConfigError(f"LIMITS names {key!r}, which is not a config key")
    for key, value in config.items():
        default = (defaults or config).get(key)
        bad = _check_one(key, value, limits_for(key, limits), default)
        if bad:
            raise ConfigError(f"{where(key)} {key}={_show(value)}: expected {bad}")
    if check is not None:
        try:
            check(config)
        except ValueError as e:
            first = next(iter(changed or {}), "")
            raise ConfigError(f"{where(first)} {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        need = int((estimate or generic_memory_estimate)(config))
    except (OverflowError, ValueError, TypeError, KeyError, ZeroDivisionError) as e:
        raise ConfigError(f"{where('')}: cannot estimate the memory this config needs ({type(e).__name__}: {e})") from None
    have = available_memory() if available is None else available
    if have is not None and need > have:
        keys = " ".join(f"{k}={_show(v)}" for k, v in (changed or {}).items())
        what = f"{where(next(iter(changed)))} {keys}: its arrays need" if changed else "this config's arrays need"
        raise ConfigError(
            f"{what} about {format_bytes(need)} (estimated from the config), "
            f"more than the {format_bytes(have)} of memory available"
        )


# ----------------------------------------------------------------------------- overrides


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
            return float(text)
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
    already have a compatible type (ints are accepted for floats). Ranges are
    checked separately by :func:`validate_config`.
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
