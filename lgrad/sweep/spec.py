"""Sweep specifications: grids, random draws and explicit lists over config keys.

A sweep's cells are the product of

* the explicit ``configs`` list (default: one empty override),
* the ``grid`` (every combination of the listed values),
* ``samples`` random draws of the ``random`` keys (``uniform``, ``loguniform``,
  ``int`` or ``choice``; drawn with ``numpy`` from ``random_seed``),
* ``seeds`` seeds ``seed, seed + 1, ...`` starting at the config's own ``seed``,

in that nesting order (seeds innermost). Every value is type-checked against the
experiment's config with :func:`lgrad.engine.apply_overrides`, so an unknown key, a
value of the wrong type or an empty list is refused before anything is computed;
:func:`lgrad.sweep.prepare_sweep` then checks every cell's ranges and memory
estimate (:func:`lgrad.engine.config.validate_config`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from lgrad.engine.config import ConfigError, apply_overrides

__all__ = ["Cell", "SweepSpec", "parse_grid", "parse_random", "process_slice"]

RANDOM_KINDS = ("uniform", "loguniform", "int", "choice")
MAX_CELLS = 100_000  # a sweep larger than this is refused before its cells are built


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of a sweep: ``overrides`` (the swept keys) applied to the base."""

    index: int
    overrides: dict[str, Any]
    config: dict[str, Any]

    @property
    def id(self) -> str:
        """A stable id of the full config (resumed sweeps recognise finished cells by it)."""
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


def _split_values(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"cannot parse the list {text!r}") from None
        if not isinstance(values, list):
            raise ConfigError(f"expected a list, got {text!r}")
        return [v if isinstance(v, str) else json.dumps(v) for v in values]
    return [v.strip() for v in text.split(",") if v.strip() != ""]


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lr=1e-3,1e-2", "wd=[0, 1e-4]"]`` -> ``{"lr": ["1e-3", "1e-2"], ...}`` (strings)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected key=v1,v2,...")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key:
            raise ConfigError(f"--grid {item!r}: empty key")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice")
        values = _split_values(text)
        if not values:
            raise ConfigError(f"--grid {key}: empty list of values")
        grid[key] = values
    return grid


def parse_random(items: Sequence[str]) -> dict[str, tuple]:
    """``["lr=loguniform:1e-4:1e-1", "width=choice:32,64"]`` -> ``{"lr": ("loguniform", 1e-4, 0.1), ...}``."""
    out: dict[str, tuple] = {}
    for item in items:
        if "=" not in item or ":" not in item:
            raise ConfigError(f"--random {item!r}: expected key=KIND:LOW:HIGH or key=choice:v1,v2 (KIND: {', '.join(RANDOM_KINDS)})")
        key, text = (s.strip() for s in item.split("=", 1))
        kind, _, rest = text.partition(":")
        if kind not in RANDOM_KINDS:
            raise ConfigError(f"--random {key}: unknown distribution {kind!r}; valid: {', '.join(RANDOM_KINDS)}")
        if key in out:
            raise ConfigError(f"--random {key}: given twice")
        if kind == "choice":
            values = _split_values(rest)
            if not values:
                raise ConfigError(f"--random {key}: empty list of choices")
            out[key] = ("choice", values)
            continue
        parts = rest.split(":")
        if len(parts) != 2:
            raise ConfigError(f"--random {key}: expected {kind}:LOW:HIGH")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--random {key}: LOW and HIGH must be numbers, got {rest!r}") from None
        out[key] = (kind, low, high)
    return out


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What to sweep. Values may be strings (parsed to the config's types) or Python values.

    Args:
      grid: key -> list of values (all combinations).
      random: key -> ``("uniform"|"loguniform"|"int", low, high)`` or ``("choice", values)``.
      samples: number of random draws (required with ``random``).
      configs: explicit list of override dicts.
      seeds: number of seeds per configuration (>= 1), starting at the config's ``seed``.
      random_seed: seed of the random draws.
    """

    grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    random: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    samples: int = 0
    configs: Sequence[Mapping[str, Any]] = ()
    seeds: int = 1
    random_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(
            json.dumps(
                {
                    "grid": {k: list(v) for k, v in self.grid.items()},
                    "random": {k: list(v) for k, v in self.random.items()},
                    "samples": self.samples,
                    "configs": [dict(c) for c in self.configs],
                    "seeds": self.seeds,
                    "random_seed": self.random_seed,
                },
                default=str,
            )
        )

    @property
    def grid_axes(self) -> list[str]:
        """Grid keys with more than one value (the axes of a heat map)."""
        return [k for k, v in self.grid.items() if len(v) > 1]

    def validate(self, base: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Check everything against the base config; return the grid with typed values."""
        valid = ", ".join(sorted(base))

        def known(key: str, flag: str) -> None:
            if key not in base:
                raise ConfigError(f"{flag} {key}: unknown config key {key!r}; valid keys: {valid}")

        def typed(key: str, value: Any, flag: str) -> Any:
            try:
                return apply_overrides(base, {key: value})[key]
            except ConfigError as e:
                msg = str(e)
                if msg.startswith("--set ") and ": " in msg:
                    msg = msg.split(": ", 1)[1]
                raise ConfigError(f"{flag} {key}={value}: {msg}") from None

        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise ConfigError(f"--seeds must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or self.samples < 0:
            raise ConfigError(f"--samples must be an integer >= 0, got {self.samples!r}")
        n_cells = max(len(self.configs), 1) * math.prod(len(v) for v in self.grid.values()) * max(self.samples, 1) * self.seeds
        if n_cells > MAX_CELLS:
            raise ConfigError(f"the sweep would have {n_cells} cells; at most {MAX_CELLS} are allowed (fewer --grid values, --samples or --seeds)")
        if self.seeds > 1 and "seed" not in base:
            raise ConfigError("--seeds: this experiment's config has no 'seed' key")
        grid: dict[str, list[Any]] = {}
        for key, values in self.grid.items():
            known(key, "--grid")
            values = list(values)
            if not values:
                raise ConfigError(f"--grid {key}: empty list of values")
            grid[key] = [typed(key, v, "--grid") for v in values]
            if len({json.dumps(v, sort_keys=True) for v in grid[key]}) != len(grid[key]):
                raise ConfigError(f"--grid {key}: repeated values")
        for key, dist in self.random.items():
            known(key, "--random")
            if key in grid:
                raise ConfigError(f"--random {key}: also in --grid")
            kind = dist[0]
            if kind == "choice":
                if not list(dist[1]):
                    raise ConfigError(f"--random {key}: empty list of choices")
                for v in dist[1]:
                    typed(key, v, "--random")
                continue
            if kind not in RANDOM_KINDS:
                raise ConfigError(f"--random {key}: unknown distribution {kind!r}; valid: {', '.join(RANDOM_KINDS)}")
            default = base[key]
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                raise ConfigError(f"--random {key}: {kind} needs a numeric key, {key!r} is {type(default).__name__}")
            if kind != "int" and isinstance(default, int):
                raise ConfigError(f"--random {key}: {key!r} is an int; use int:LOW:HIGH or choice")
            if kind == "int" and not isinstance(default, int):
                raise ConfigError(f"--random {key}: int draws need an int key, {key!r} is {type(default).__name__}")
            low, high = float(dist[1]), float(dist[2])
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ConfigError(f"--random {key}: LOW and HIGH must be finite, got {low:g} and {high:g}")
            if not low < high:
                raise ConfigError(f"--random {key}: LOW must be < HIGH, got {low:g} and {high:g}")
            if kind == "loguniform" and low <= 0:
                raise ConfigError(f"--random {key}: loguniform needs LOW > 0, got {low:g}")
        if self.random and self.samples < 1:
            raise ConfigError("--random needs --samples N (N >= 1)")
        if self.samples and not self.random:
            raise ConfigError("--samples needs at least one --random key")
        if self.seeds > 1 and ("seed" in grid or "seed" in self.random or any("seed" in c for c in self.configs)):
            raise ConfigError("--seeds cannot be combined with sweeping 'seed' itself")
        for i, c in enumerate(self.configs):
            if not isinstance(c, Mapping):
                raise ConfigError(f"--configs entry {i}: expected an object of config keys, got {type(c).__name__}")
            for key, value in c.items():
                known(key, f"--configs[{i}]")
                typed(key, value, f"--configs[{i}]")
        return grid

    def cells(self, base: Mapping[str, Any]) -> list[Cell]:
        """The sweep's cells over ``base`` (validated first; raises ``ConfigError``)."""
        grid = self.validate(base)
        rng = np.random.default_rng(self.random_seed)
        draws: list[dict[str, Any]] = []
        for _ in range(self.samples if self.random else 1):
            d: dict[str, Any] = {}
            for key, dist in self.random.items():
                kind = dist[0]
                if kind == "choice":
                    d[key] = apply_overrides(base, {key: dist[1][int(rng.integers(len(dist[1])))]})[key]
                elif kind == "uniform":
                    d[key] = float(rng.uniform(float(dist[1]), float(dist[2])))
                elif kind == "loguniform":
                    d[key] = float(np.exp(rng.uniform(np.log(float(dist[1])), np.log(float(dist[2])))))
                else:
                    d[key] = int(rng.integers(int(float(dist[1])), int(float(dist[2])) + 1))
            draws.append(d)
        explicit = [dict(c) for c in self.configs] or [{}]
        keys = list(grid)
        cells: list[Cell] = []
        for c in explicit:
            for combo in itertools.product(*(grid[k] for k in keys)):
                for d in draws:
                    for s in range(self.seeds):
                        over = {**c, **dict(zip(keys, combo)), **d}
                        if self.seeds > 1:
                            over["seed"] = int(base["seed"]) + s
                        config = apply_overrides(base, over)
                        over = {k: config[k] for k in over}
                        cells.append(Cell(len(cells), over, config))
        ids = [cell.id for cell in cells]
        if len(set(ids)) != len(ids):
            raise ConfigError("the sweep lists the same configuration twice")
        return cells


def process_slice(cells: Sequence[Any], process_index: int, process_count: int) -> list[Any]:
    """The cells process ``process_index`` of ``process_count`` runs: every
    ``process_count``-th cell (round-robin keeps groups and costs balanced). The
    slices of all processes partition ``cells``: every cell runs exactly once."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}")
    return list(cells[process_index::process_count])
