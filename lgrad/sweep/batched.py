"""Run many configurations of one pure training function: vmapped, sharded, or one by one.

``train_cell(hparams, key) -> metrics`` is a pure, jax-traceable function of a dict
of scalar hyperparameters (numeric optimizer settings travel as traced arrays, e.g.
through ``optax.inject_hyperparams``) and a PRNG key, returning a dict of scalar
metrics. Since all configurations share shapes, :func:`run_cells` can

* ``"vmap"``: stack ``b`` configurations and run ``jax.jit(jax.vmap(train_cell))``
  once per batch — one compiled program for the group. The batch axis is placed
  with a ``NamedSharding`` over a 1-D mesh of the local devices (``b`` is padded to
  a multiple of the devices used; the padding cells are discarded), so XLA splits
  the batch across devices;
* ``"sequential"``: ``jax.jit(train_cell)`` compiled once and called per configuration;
* ``"auto"``: calibrate on the sweep itself (no cell is computed twice): compile the
  sequential program and time two cells; only when the rest of the group is long
  enough for a vmap compile to pay back (the compile costs under ~8% of the
  sequential estimate) probe a small vmapped batch (~1/16 of the rest) and keep
  vmap, with one larger batch size, only when its per-cell time beats sequential.
  The worst case costs a few per cent over sequential; the benchmark
  ``lgrad/bench/entries/sweep.py`` measures it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["STRATEGIES", "RunInfo", "run_cells", "sweep_mesh"]

STRATEGIES = ("auto", "vmap", "sequential")
AXIS = "sweep"
# "auto" probes vmap only if a compile costs at most this fraction of the rest run sequentially.
PROBE_MAX_COMPILE_FRACTION = 0.08


@dataclasses.dataclass
class RunInfo:
    """How a group of cells was run (reported in the sweep's summary)."""

    strategy: str
    batch_size: int = 1
    devices: int = 1
    calibration: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sweep_mesh(batch: int, devices: Sequence[Any] | None = None) -> tuple[Mesh | None, int]:
    """A 1-D mesh over the first ``d = min(#devices, batch)`` devices and ``d``."""
    devices = list(jax.local_devices() if devices is None else devices)
    d = max(1, min(len(devices), batch))
    if d == 1:
        return None, 1
    return Mesh(np.asarray(devices[:d]), (AXIS,)), d


def _to_python(tree: Any) -> Any:
    def conv(x):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()

    return jax.tree.map(conv, jax.device_get(tree))


def _stack(hparams: Sequence[Mapping[str, Any]], idx: Sequence[int], names: Sequence[str]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(np.asarray([hparams[i][k] for i in idx])) for k in names}


def _keys(seeds: Sequence[int], idx: Sequence[int]) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(int(seeds[i])) for i in idx])


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _accepts_three(fn: Any) -> bool:
    """Whether ``fn`` takes a third positional argument (the strategy of the call)."""
    if fn is None:
        return False
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


class _Runner:
    def __init__(self, train_cell, hparams, seeds, devices, on_done):
        self.fn = train_cell
        self.hp = hparams
        self.seeds = seeds
        self.names = sorted(hparams[0]) if hparams else []
        self.devices = list(jax.local_devices() if devices is None else devices)
        self.on_done = on_done
        self._with_how = _accepts_three(on_done)
        self.results: dict[int, dict[str, Any]] = {}
        self._seq = None
        self._vmap: dict[int, Any] = {}

    def _finish(self, idx: list[int], metrics: list[dict[str, Any]], how: str) -> None:
        for i, m in zip(idx, metrics):
            self.results[i] = m
        if self.on_done is not None:
            self.on_done(idx, metrics, how) if self._with_how else self.on_done(idx, metrics)

    # --- sequential -----------------------------------------------------------
    def seq_compile(self) -> float:
        t0 = time.perf_counter()
        args = (_stack(self.hp, [0], self.names), _keys(self.seeds, [0]))
        args = jax.tree.map(lambda a: a[0], args)
        self._seq = jax.jit(self.fn).lower(*args).compile()
        return time.perf_counter() - t0

    def seq(self, i: int) -> float:
        if self._seq is None:
            self.seq_compile()
        hp = {k: jnp.asarray(np.asarray(self.hp[i][k])) for k in self.names}
        t0 = time.perf_counter()
        out = jax.block_until_ready(self._seq(hp, jax.random.PRNGKey(int(self.seeds[i]))))
        dt = time.perf_counter() - t0
        self._finish([i], [_to_python(out)], "sequential")
        return dt

    # --- vmap -------------------------------------------------------------------
    def _place(self, args: Any, b: int) -> Any:
        mesh, d = sweep_mesh(b, self.devices)
        if mesh is None:
            return args
        return jax.device_put(args, NamedSharding(mesh, P(AXIS)))

    def vmap_compile(self, b: int) -> float:
        t0 = time.perf_counter()
        idx = [0] * b
        args = self._place((_stack(self.hp, idx, self.names), _keys(self.seeds, idx)), b)
        self._vmap[b] = jax.jit(jax.vmap(self.fn)).lower(*args).compile()
        return time.perf_counter() - t0

    def vmap(self, idx: list[int], b: int) -> float:
        """Run cells ``idx`` (<= b of them, padded to b) in one vmapped call."""
        if b not in self._vmap:
            self.vmap_compile(b)
        padded = list(idx) + [idx[-1]] * (b - len(idx))
        args = self._place((_stack(self.hp, padded, self.names), _keys(self.seeds, padded)), b)
        t0 = time.perf_counter()
        out = jax.block_until_ready(self._vmap[b](*args))
        dt = time.perf_counter() - t0
        out = _to_python(out)
        self._finish(list(idx), [jax.tree.map(lambda col, j=j: col[j], out, is_leaf=lambda x: isinstance(x, list)) for j in range(len(idx))], "vmap")
        return dt

    def vmap_all(self, idx: list[int], b: int) -> None:
        for start in range(0, len(idx), b):
            self.vmap(idx[start : start + b], b)


def run_cells(
    train_cell: Callable[[dict[str, jax.Array], jax.Array], Mapping[str, Any]],
    hparams: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    *,
    strategy: str = "auto",
    batch_size: int | None = None,
    devices: Sequence[Any] | None = None,
    on_done: Callable[[list[int], list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], RunInfo]:
    """Evaluate ``train_cell(hparams[i], PRNGKey(seeds[i]))`` for every ``i``.

    Args:
      train_cell: pure function ``(dict of scalar arrays, key) -> dict of scalars``.
      hparams: one dict per cell, all with the same keys, numeric values.
      seeds: one integer seed per cell.
      strategy: ``"auto"``, ``"vmap"`` or ``"sequential"`` (see the module docstring).
      batch_size: largest vmapped batch (default: the whole group for ``"vmap"``,
        256 for ``"auto"``); rounded up to a multiple of the devices used.
      devices: devices of the sweep mesh (default: ``jax.local_devices()``).
      on_done: called ``on_done(indices, metrics)`` after each call finishes (for
        writing results as they come, so a killed sweep can skip them); a callback
        with a third parameter also gets how the call ran (``"sequential"`` or ``"vmap"``).

    Returns:
      ``(metrics per cell as Python scalars, RunInfo)``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    n = len(hparams)
    if len(seeds) != n:
        raise ValueError(f"need one seed per cell: {len(seeds)} seeds for {n} cells")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n and any(set(h) != set(hparams[0]) for h in hparams):
        raise ValueError("every cell's hparams must have the same keys")
    r = _Runner(train_cell, hparams, seeds, devices, on_done)
    start = time.perf_counter()
    info = RunInfo(strategy="sequential")
    if n == 0:
        return [], info
    ndev = len(r.devices)
    idx = list(range(n))
    if strategy == "sequential" or (strategy == "auto" and n <= 2):
        for i in idx:
            r.seq(i)
    elif strategy == "vmap":
        b = min(batch_size or n, n)
        _, d = sweep_mesh(b, r.devices)
        b = _round_up(b, d)
        r.vmap_all(idx, b)
        info = RunInfo("vmap", b, d)
    else:
        cal: dict[str, float] = {}
        cal["compile_sequential_s"] = r.seq_compile()
        cal["cell_sequential_s"] = min(r.seq(0), r.seq(1))
        rest = idx[2:]
        t_seq = cal["cell_sequential_s"]
        # A vmap compile costs about what the sequential one did; probe only if that is
        # a small fraction of what the rest would take sequentially.
        if not rest or cal["compile_sequential_s"] > PROBE_MAX_COMPILE_FRACTION * t_seq * len(rest):
            for i in rest:
                r.seq(i)
            cal["decision"] = "sequential: the rest is too short to pay back a vmap compile"
        else:
            cap = batch_size or 256
            _, d = sweep_mesh(min(cap, len(rest)), r.devices)
            b1 = min(_round_up(max(1, math.ceil(len(rest) / 16)), d), _round_up(min(cap, len(rest)), d))
            probe, rest = rest[:b1], rest[b1:]
            cal["compile_vmap_s"] = r.vmap_compile(b1)
            cal["probe_batch"] = b1
            cal["cell_vmap_s"] = r.vmap(probe, b1) / len(probe)
            if cal["cell_vmap_s"] >= t_seq:
                for i in rest:
                    r.seq(i)
                cal["decision"] = "sequential: vmap was not faster per cell"
                info = RunInfo("sequential", 1, 1)
            else:
                b = b1
                big = _round_up(min(cap, len(rest)), d) if rest else b1
                # One larger batch if its compile is cheap next to the remaining work.
                if rest and big > b1 and cal["compile_vmap_s"] < 0.25 * cal["cell_vmap_s"] * len(rest):
                    b = big
                r.vmap_all(rest, b)
                cal["decision"] = f"vmap: {t_seq / cal['cell_vmap_s']:.2f}x faster per cell than sequential"
                info = RunInfo("vmap", b, d)
        info.calibration = cal
    info.seconds = time.perf_counter() - start
    return [r.results[i] for i in idx], info
