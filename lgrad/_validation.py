"""Argument checks shared by every user-facing factory.

Checks run only on concrete Python/NumPy numbers: inside ``optax.inject_hyperparams``
the factories are called again with (possibly traced) JAX arrays, which cannot be
inspected and were already validated when the user first passed them.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "is_concrete_number",
    "check_learning_rate",
    "check_in_interval",
    "check_positive",
    "check_nonnegative",
    "check_int",
]


def is_concrete_number(x: Any) -> bool:
    """True for a Python/NumPy scalar whose value can be checked now."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Real):
        return True
    return isinstance(x, np.ndarray) and x.ndim == 0 and np.issubdtype(x.dtype, np.number)


def _value(name: str, x: Any) -> float | None:
    if isinstance(x, bool):
        raise ValueError(f"{name} must be a number, got a bool ({x!r})")
    if not is_concrete_number(x):
        return None
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


def check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> None:
    """A learning rate is a finite number >= 0 or a schedule (callable)."""
    if callable(learning_rate):
        return
    v = _value(name, learning_rate)
    if v is not None and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}")


def check_in_interval(
    x: Any, name: str, low: float, high: float, *, low_closed: bool = True, high_closed: bool = False
) -> None:
    """Raise ``ValueError`` unless ``x`` lies in the interval (bounds as flagged)."""
    v = _value(name, x)
    if v is None:
        return
    ok_low = v >= low if low_closed else v > low
    ok_high = v <= high if high_closed else v < high
    if not (ok_low and ok_high):
        lb = "[" if low_closed else "("
        hb = "]" if high_closed else ")"
        raise ValueError(f"{name} must lie in {lb}{low}, {high}{hb}, got {v!r}")


def check_positive(x: Any, name: str) -> None:
    v = _value(name, x)
    if v is not None and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v!r}")


def check_nonnegative(x: Any, name: str) -> None:
    v = _value(name, x)
    if v is not None and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}")


def check_int(x: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x!r}")
    return int(x)
