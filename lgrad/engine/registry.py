"""Discovery of reproductions: packages named by the ``lgrad.experiments`` entry-point
group (``pyproject.toml`` declares ``experiments``) and by the environment variable
``LGRAD_EXPERIMENTS`` (comma-separated package names, e.g. a test fixture). A package
that defines ``NAME`` is one experiment; otherwise each of its subpackages that
defines ``NAME`` is. The library never imports an experiments package itself: only
:func:`discover` does, through these declarations.

An experiment module defines:

``NAME``      the CLI name (``diffgrad-synthetic``),
``PAPER``     the paper it reproduces (title, authors, year),
``CONFIGS``   ``{"quick": {...}, "full": {...}}`` flat dicts of JSON values (with ``seed``),
``SMOKE``     overrides of ``quick`` that make a seconds-long run for the test suite,
``CRITERIA``  ``{name: number}``: every threshold the claims use, in one table next to
              ``EXPECTED`` (a criterion changed after seeing a result is disclosed in
              the experiment's ``docs/papers`` page),
``measure(config, ctx) -> dict``  trains and measures (``ctx`` logs metrics, draws
              progress and saves plots); returns the measurements, JSON values or
              arrays (kept small: they are stored in ``result.json``),
``claims(measurements, config) -> list[Claim]``  pure: the claims computed from the
              measurements (as read back from JSON) and ``CRITERIA`` only, so a stored
              run's claims can be re-evaluated without training
              (:func:`lgrad.engine.runner.reevaluate`).

Optional: ``DESCRIPTION`` (one line), ``EXPECTED`` (the expected result, one line) and

``X64 = True``  the one way to ask for float64: the engine runs ``measure`` (and
                ``lgrad.sweep`` traces ``train_cell``) under ``jax.enable_x64``.

The batched-sweep opt-in (see :mod:`lgrad.sweep.runner`) is checked here, at
discovery: ``train_cell`` (callable), ``SWEEPABLE`` (config keys with numeric
values), ``SWEEP_METRIC`` (``(name, "min"|"max")``), ``sweep_claims`` (callable).
``SWEEP_X64`` is the former name of ``X64``; if present it must equal ``X64``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import os
import pkgutil
import sys
from types import ModuleType
from typing import Any, Callable

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "Experiment", "UnknownExperiment", "discover", "experiment_packages", "get"]

MODES = ("quick", "full")
ENTRY_POINT_GROUP = "lgrad.experiments"
ENV_VAR = "LGRAD_EXPERIMENTS"
_SWEEP_NAMES = ("SWEEPABLE", "SWEEP_METRIC", "sweep_claims")
_CONTRACT = ("NAME", "PAPER", "CONFIGS", "CRITERIA", "measure", "claims")


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
    measure: Callable[..., Any]
    claims: Callable[..., Any]
    criteria: dict[str, Any]
    module: ModuleType
    x64: bool = False  # run (and sweep cells) under jax.enable_x64
    sweepable: tuple[str, ...] = ()  # the batched-sweep keys (empty: no train_cell)

    def config(self, mode: str) -> dict[str, Any]:
        if mode not in self.configs:
            raise ValueError(f"{self.name}: mode must be one of {sorted(self.configs)}, got {mode!r}")
        return dict(self.configs[mode])


def _with_x64(run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import jax

        with jax.enable_x64(True):
            return run(*args, **kwargs)

    return wrapped


def _x64(module: ModuleType, name: str) -> bool:
    x64 = getattr(module, "X64", False)
    if not isinstance(x64, bool):
        raise TypeError(f"experiment {name}: X64 must be True or False, got {x64!r}")
    if hasattr(module, "SWEEP_X64") and module.SWEEP_X64 is not x64:
        raise TypeError(f"experiment {name}: SWEEP_X64 (the former name of X64) is {module.SWEEP_X64!r} but X64 is {x64!r}; define X64 only")
    return x64


def _sweep_protocol(module: ModuleType, name: str, quick: dict[str, Any]) -> tuple[str, ...]:
    """The checked ``SWEEPABLE`` keys (empty when the module has no ``train_cell``)."""
    fn = getattr(module, "train_cell", None)
    if fn is None:
        stray = [a for a in _SWEEP_NAMES if hasattr(module, a)]
        if stray:
            raise TypeError(f"experiment {name}: {', '.join(stray)} without train_cell; define train_cell(static, hparams, key) or drop them")
        return ()
    if not callable(fn):
        raise TypeError(f"experiment {name}: train_cell must be callable, got {type(fn).__name__}")
    keys = getattr(module, "SWEEPABLE", ())
    if isinstance(keys, str) or not isinstance(keys, (tuple, list)) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"experiment {name}: SWEEPABLE must be a tuple of config key names, got {keys!r}")
    for k in keys:
        v = quick.get(k)
        if k not in quick or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"experiment {name}: SWEEPABLE key {k!r} must be a numeric config key, got {'absent' if k not in quick else repr(v)}")
    metric = getattr(module, "SWEEP_METRIC", None)
    if metric is not None and not (
        isinstance(metric, (tuple, list)) and len(metric) == 2 and isinstance(metric[0], str) and metric[1] in ("min", "max")
    ):
        raise TypeError(f"experiment {name}: SWEEP_METRIC must be (metric name, 'min' or 'max'), got {metric!r}")
    claims = getattr(module, "sweep_claims", None)
    if claims is not None and not callable(claims):
        raise TypeError(f"experiment {name}: sweep_claims must be callable, got {type(claims).__name__}")
    return tuple(keys)


def _criteria(module: ModuleType, name: str) -> dict[str, Any]:
    table = module.CRITERIA
    if not isinstance(table, dict):
        raise TypeError(f"experiment {name}: CRITERIA must be a dict of threshold name -> number, got {type(table).__name__}")
    for k, v in table.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"experiment {name}: CRITERIA[{k!r}] must be a number under a string key, got {v!r}")
    return dict(table)


def _check_signature(fn: Any, name: str, attr: str, params: tuple[str, str]) -> None:
    if not callable(fn):
        raise TypeError(f"experiment {name}: {attr} must be callable, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise TypeError(f"experiment {name}: {attr} must take ({', '.join(params)})") from None
    except ValueError:  # builtins without a signature: trust them
        pass


def _build(module: ModuleType) -> Experiment:
    configs = dict(module.CONFIGS)
    for mode in MODES:
        if mode not in configs:
            raise TypeError(f"experiment {module.NAME}: CONFIGS lacks {mode!r}")
        if set(configs[mode]) != set(configs["quick"]):
            raise TypeError(f"experiment {module.NAME}: quick and {mode} configs must have the same keys")
    x64 = _x64(module, module.NAME)
    return Experiment(
        name=module.NAME,
        paper=module.PAPER,
        description=getattr(module, "DESCRIPTION", ""),
        expected=getattr(module, "EXPECTED", ""),
        configs=configs,
        smoke=dict(getattr(module, "SMOKE", {})),
        measure=_with_x64(module.measure) if x64 else module.measure,
        claims=module.claims,
        criteria=_criteria(module, module.NAME),
        module=module,
        x64=x64,
        sweepable=_sweep_protocol(module, module.NAME, configs["quick"]),
    )


def _load(module: ModuleType) -> Experiment:
    missing = [a for a in _CONTRACT if not hasattr(module, a)]
    if missing:
        legacy = " (run(config, ctx) is now measure(config, ctx) + claims(measurements, config))" if hasattr(module, "run") else ""
        raise TypeError(f"experiment module {module.__name__} lacks {', '.join(missing)}{legacy}")
    if hasattr(module, "run"):
        raise TypeError(f"experiment {module.NAME}: define measure and claims, not run (the engine composes them)")
    _check_signature(module.measure, module.NAME, "measure", ("config", "ctx"))
    _check_signature(module.claims, module.NAME, "claims", ("measurements", "config"))
    return _build(module)


def experiment_packages() -> list[str]:
    """Names of the packages searched: the entry points, then ``$LGRAD_EXPERIMENTS``."""
    names = [ep.module for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    names += [s.strip() for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]
    return list(dict.fromkeys(names))


def _modules(package: str) -> list[ModuleType]:
    try:
        pkg = importlib.import_module(package)
    except ImportError as e:
        print(f"lgrad: warning: experiment package {package!r} cannot be imported ({e}); skipping it", file=sys.stderr)
        return []
    if hasattr(pkg, "NAME") or not hasattr(pkg, "__path__"):
        return [pkg]
    infos = sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name)
    return [importlib.import_module(f"{pkg.__name__}.{i.name}") for i in infos if i.ispkg and not i.name.startswith("_")]


_CACHE: dict[tuple[str, ...], dict[str, Experiment]] = {}


def discover() -> dict[str, Experiment]:
    """All experiments, by name (sorted)."""
    packages = tuple(experiment_packages())
    if packages not in _CACHE:
        found: dict[str, Experiment] = {}
        for package in packages:
            for module in _modules(package):
                if not hasattr(module, "NAME"):
                    continue
                exp = _load(module)
                if exp.name in found:
                    raise TypeError(f"two experiments are named {exp.name!r} ({found[exp.name].module.__name__}, {module.__name__})")
                found[exp.name] = exp
        _CACHE[packages] = dict(sorted(found.items()))
    return _CACHE[packages]


def get(name: str) -> Experiment:
    table = discover()
    if name not in table:
        raise UnknownExperiment(name, list(table))
    return table[name]
