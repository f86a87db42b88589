"""Discovery of reproductions: every subpackage of the top-level ``experiments``
package that defines ``NAME`` is one experiment.

An experiment module defines:

``NAME``      the CLI name (``diffgrad-synthetic``),
``PAPER``     the paper it reproduces (title, authors, year),
``CONFIGS``   ``{"quick": {...}, "full": {...}}`` flat dicts of JSON values (with ``seed``),
``SMOKE``     overrides of ``quick`` that make a seconds-long run for the test suite,
``run(config, ctx) -> list[Claim]``  the measurement, using ``ctx`` for metrics and plots.

Optional: ``DESCRIPTION`` (one line) and ``EXPECTED`` (the expected result, one line).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from types import ModuleType
from typing import Any, Callable

__all__ = ["Experiment", "UnknownExperiment", "discover", "get"]

MODES = ("quick", "full")


class UnknownExperiment(KeyError):
    def __init__(self, name: str, valid: list[str]):
        super().__init__(name)
        self.name = name
        self.valid = valid

    def __str__(self) -> str:
        return f"unknown experiment {self.name!r}; valid names: {', '.join(self.valid) or '(none)'}"


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    paper: str
    description: str
    expected: str
    configs: dict[str, dict[str, Any]]
    smoke: dict[str, Any]
    run: Callable[..., Any]
    module: ModuleType

    def config(self, mode: str) -> dict[str, Any]:
        if mode not in self.configs:
            raise ValueError(f"{self.name}: mode must be one of {sorted(self.configs)}, got {mode!r}")
        return dict(self.configs[mode])


def _load(module: ModuleType) -> Experiment:
    missing = [a for a in ("NAME", "PAPER", "CONFIGS", "run") if not hasattr(module, a)]
    if missing:
        raise TypeError(f"experiment module {module.__name__} lacks {', '.join(missing)}")
    configs = dict(module.CONFIGS)
    for mode in MODES:
        if mode not in configs:
            raise TypeError(f"experiment {module.NAME}: CONFIGS lacks {mode!r}")
        if set(configs[mode]) != set(configs["quick"]):
            raise TypeError(f"experiment {module.NAME}: quick and {mode} configs must have the same keys")
    return Experiment(
        name=module.NAME,
        paper=module.PAPER,
        description=getattr(module, "DESCRIPTION", ""),
        expected=getattr(module, "EXPECTED", ""),
        configs=configs,
        smoke=dict(getattr(module, "SMOKE", {})),
        run=module.run,
        module=module,
    )


_CACHE: dict[str, Experiment] | None = None


def discover() -> dict[str, Experiment]:
    """All experiments, by name (sorted)."""
    global _CACHE
    if _CACHE is None:
        import experiments as pkg

        found: dict[str, Experiment] = {}
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.ispkg or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            if not hasattr(module, "NAME"):
                continue
            exp = _load(module)
            if exp.name in found:
                raise TypeError(f"two experiments are named {exp.name!r}")
            found[exp.name] = exp
        _CACHE = dict(sorted(found.items()))
    return _CACHE


def get(name: str) -> Experiment:
    table = discover()
    if name not in table:
        raise UnknownExperiment(name, list(table))
    return table[name]
