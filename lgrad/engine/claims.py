"""Claims: a paper's statement, the number this run measured, and the criterion.

``passed`` is always computed from ``measured`` and the criterion by the factory
methods below, never set by hand. A *finding* (``Claim.finding``) reports a measured
quantity the paper states qualitatively; it has no criterion and ``passed`` is None.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

__all__ = ["Claim", "from_jsonable", "json_roundtrip", "to_jsonable"]


def to_jsonable(x: Any) -> Any:
    """Convert numpy/jax scalars and arrays (nested in lists/dicts) to JSON types."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
        a = np.asarray(x)
        if a.ndim == 0:
            return to_jsonable(a.item())
        return [to_jsonable(v) for v in a.tolist()]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no NaN/Inf; keep it visible rather than silently null
    return x


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def from_jsonable(x: Any) -> Any:
    """Inverse of :func:`to_jsonable` for what JSON cannot hold: the strings ``"nan"``,
    ``"inf"`` and ``"-inf"`` (nested in lists/dicts) become floats again."""
    if isinstance(x, dict):
        return {k: from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_jsonable(v) for v in x]
    if isinstance(x, str) and x in _NON_FINITE:
        return _NON_FINITE[x]
    return x


def json_roundtrip(x: Any) -> Any:
    """``x`` as it reads back from ``result.json``: dicts with string keys, lists,
    Python numbers and strings (non-finite floats kept as floats). What an
    experiment's ``claims`` receives, so its claims can be re-evaluated from a file."""
    return from_jsonable(json.loads(json.dumps(to_jsonable(x))))


def _num(x: Any) -> float:
    return float(np.asarray(x))


SKIPPED = "skipped (did not run)"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One measured claim of a reproduction."""

    id: str
    statement: str
    measured: Any
    target: str
    passed: bool | None
    note: str = ""

    # ---- factories: each computes ``passed`` from the measurement -------------
    @classmethod
    def at_least(cls, id: str, statement: str, measured: Any, threshold: float, *, note: str = "") -> "Claim":
        m = _num(measured)
        return cls(id, statement, m, f">= {threshold:g}", bool(m >= threshold), note)

    @classmethod
    def at_most(cls, id: str, statement: str, measured: Any, threshold: float, *, note: str = "") -> "Claim":
        m = _num(measured)
        return cls(id, statement, m, f"<= {threshold:g}", bool(m <= threshold), note)

    @classmethod
    def within(
        cls, id: str, statement: str, measured: Any, reference: float, tol: float, *, note: str = ""
    ) -> "Claim":
        m = _num(measured)
        return cls(id, statement, m, f"within {tol:g} of {reference:g}", bool(abs(m - reference) <= tol), note)

    @classmethod
    def holds(cls, id: str, statement: str, measured: Any, target: str, condition: bool, *, note: str = "") -> "Claim":
        """A claim whose criterion is a boolean computed by the caller from ``measured``."""
        return cls(id, statement, to_jsonable(measured), target, bool(condition), note)

    @classmethod
    def finding(cls, id: str, statement: str, measured: Any, *, note: str = "") -> "Claim":
        """A reported measurement with no pass criterion (the paper is qualitative)."""
        return cls(id, statement, to_jsonable(measured), "reported (finding)", None, note)

    @classmethod
    def skipped(cls, id: str, statement: str, *, reason: str) -> "Claim":
        """A check that did not run (e.g. it needs several devices): neither a pass,
        a failure nor a finding; ``reason`` says why and how to run it."""
        if not reason:
            raise ValueError("a skipped claim needs a reason")
        return cls(id, statement, "not run", SKIPPED, None, reason)

    @property
    def is_skipped(self) -> bool:
        return self.passed is None and self.target == SKIPPED

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @property
    def status(self) -> str:
        if self.is_skipped:
            return "skip"
        return {True: "pass", False: "FAIL", None: "info"}[self.passed]
