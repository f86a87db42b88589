"""One benchmark result."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Entry:
    """``ratio = ours / baseline``; ``met`` is computed from ``ratio`` and ``max_ratio``
    / ``min_ratio`` (None when the entry only reports). ``better`` says which way
    is good: ``"lower"`` or ``"higher"`` (default: from the target, else the unit:
    times and bytes lower, rates such as ``bytes/s`` higher)."""

    name: str  # short id, e.g. "diffgrad-update/adam"
    what: str  # one line: what is measured
    ours: float
    baseline: float
    unit: str  # "s", "bytes", "bytes/s", ...
    max_ratio: float | None = None  # target: ratio <= max_ratio
    min_ratio: float | None = None  # target: ratio >= min_ratio
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    better: str | None = None

    def __post_init__(self) -> None:
        if self.better not in (None, "lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', got {self.better!r}")

    @property
    def direction(self) -> str:
        """``"lower"`` or ``"higher"``: which ratio is the better one."""
        if self.better is not None:
            return self.better
        if self.max_ratio is not None:
            return "lower"
        if self.min_ratio is not None:
            return "higher"
        return "higher" if "/" in self.unit or "per" in self.unit.split() else "lower"

    @property
    def ratio(self) -> float:
        return float(self.ours) / float(self.baseline) if self.baseline else float("inf")

    @property
    def target(self) -> str | None:
        if self.max_ratio is not None:
            return f"ratio <= {self.max_ratio:g}"
        if self.min_ratio is not None:
            return f"ratio >= {self.min_ratio:g}"
        return None

    @property
    def met(self) -> bool | None:
        if self.max_ratio is not None:
            return bool(self.ratio <= self.max_ratio)
        if self.min_ratio is not None:
            return bool(self.ratio >= self.min_ratio)
        return None

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Entry":
        """Inverse of :meth:`to_dict` (a row of bench.json)."""
        return cls(
            row["name"], row["what"], row["ours"], row["baseline"], row["unit"],
            max_ratio=row.get("max_ratio"), min_ratio=row.get("min_ratio"), extra=row.get("extra", {}),
            better=row.get("better"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "what": self.what,
            "ours": float(self.ours),
            "baseline": float(self.baseline),
            "ratio": self.ratio,
            "unit": self.unit,
            "target": self.target,
            "max_ratio": self.max_ratio,
            "min_ratio": self.min_ratio,
            "met": self.met,
            "better": self.direction,
            **({"extra": self.extra} if self.extra else {}),
        }
