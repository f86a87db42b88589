"""``run_sweep``: every cell of a sweep over one experiment, one table of results.

Two paths:

* **Batched** — an experiment opts in by defining, in its module,

  ``SWEEPABLE``  the numeric config keys that may be traced (optimizer
                 hyperparameters through ``optax.inject_hyperparams``, start points...);
  ``train_cell(static_config, hparams, key) -> dict of scalar metrics``
                 a pure, jax-traceable function: ``static_config`` holds every other
                 key as a Python value (shapes, step counts, control flow),
                 ``hparams`` the ``SWEEPABLE`` keys as scalar arrays, ``key`` is
                 ``PRNGKey(config["seed"])``;

  and optionally ``SWEEP_METRIC = (name, "min"|"max")`` (the best-configuration
  criterion), ``X64 = True`` (the experiment runs and is traced under
  ``jax.enable_x64``, checked by the registry) and
  ``sweep_claims(config, metrics) -> list[Claim]``. Cells whose non-sweepable keys
  agree form one group: one compiled program, run by
  :func:`lgrad.sweep.batched.run_cells` (vmap over the group, sharded over the local
  devices, or sequential, chosen by calibration or forced).
* **Sequential fallback** — any other experiment: each cell is a full
  :func:`lgrad.engine.run_experiment` into ``sweep/runs/<cell id>/``; its metrics are
  the numeric claim measurements (``claim:<id>``) and ``claims_passed``.

A sweep in progress writes into ``<out>/<name>/.sweep.partial/``, which replaces
``<out>/<name>/sweep/`` only when the sweep has finished: a failed or interrupted
sweep leaves the previous ``sweep/`` byte-identical. Under ``jax.distributed`` each
process runs its slice of the cells (:func:`process_slice`); finished cells are
written to ``cells/<id>.json`` as they complete, so ``resume=True`` skips them after
a kill (it reads the partial folder, or a finished ``sweep/`` of the same sweep). The records are gathered
to process 0 with a collective (no shared folder needed), which writes
``sweep.csv``, ``sweep.jsonl``, ``best.json`` and (for a 2-D grid) ``heatmap.png``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from lgrad.engine.claims import Claim, to_jsonable
from lgrad.engine.config import ConfigError, validate_config
from lgrad.engine.registry import get
from lgrad.engine.runner import check_writable, experiment_config, replace_dir
from lgrad.sweep.batched import STRATEGIES, run_cells
from lgrad.sweep.report import best_summary, write_heatmap, write_tables
from lgrad.sweep.spec import Cell, SweepSpec, process_slice

__all__ = ["SweepProtocol", "SweepResult", "protocol_of", "prepare_sweep", "run_sweep"]

SWEEP_FILE = "sweep.json"
WORK_DIR = ".sweep.partial"  # where a sweep in progress writes; replaces ``sweep/`` when it finishes


@dataclasses.dataclass(frozen=True)
class SweepProtocol:
    """An experiment's opt-in to batched sweeps (see the module docstring)."""

    train_cell: Callable[..., Any]
    sweepable: tuple[str, ...]
    metric: tuple[str, str] | None
    x64: bool
    claims: Callable[..., list[Claim]] | None

    def split(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(static config, traced hparams) of one cell's config."""
        hp = {k: config[k] for k in self.sweepable}
        static = {k: v for k, v in config.items() if k not in self.sweepable and k != "seed"}
        return static, hp


def protocol_of(exp: Any) -> SweepProtocol | None:
    """The experiment's :class:`SweepProtocol`, or None if it does not opt in. The
    registry checked the protocol at discovery (``Experiment.sweepable``, ``x64``)."""
    fn = getattr(exp.module, "train_cell", None)
    if fn is None:
        return None
    metric = getattr(exp.module, "SWEEP_METRIC", None)
    return SweepProtocol(fn, tuple(exp.sweepable), tuple(metric) if metric else None, bool(exp.x64),
                         getattr(exp.module, "sweep_claims", None))


@dataclasses.dataclass
class SweepResult:
    name: str
    out_dir: Path
    records: list[dict[str, Any]]
    best: dict[str, Any] | None
    groups: list[dict[str, Any]]
    runtime_s: float
    skipped: int


@dataclasses.dataclass
class _Plan:
    exp: Any
    mode: str
    base: dict[str, Any]
    spec: SweepSpec
    cells: list[Cell]
    proto: SweepProtocol | None
    metric: tuple[str, str]
    out_dir: Path
    fingerprint: dict[str, Any]

    @property
    def work_dir(self) -> Path:
        return self.out_dir.parent / WORK_DIR


def _flag_of(spec: SweepSpec) -> Callable[[str], str]:
    def flag(key: str) -> str:
        if key in spec.grid:
            return "--grid"
        if key in spec.random:
            return "--random"
        if any(key in c for c in spec.configs):
            return "--configs"
        return "--seeds" if key == "seed" and spec.seeds > 1 else "--set"

    return flag


def _validate_cells(exp: Any, mode: str, spec: SweepSpec, cells: list[Cell]) -> None:
    """Every cell against the experiment's limits and memory estimate (one line per refusal)."""
    base = exp.config(mode)
    limits = getattr(exp.module, "LIMITS", None)
    estimate = getattr(exp.module, "memory_estimate", None)
    flag = _flag_of(spec)
    seen: set[str] = set()
    for cell in cells:
        key = json.dumps(cell.overrides, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        validate_config(cell.config, limits, estimate=estimate, defaults=base, changed=cell.overrides,
                        check=getattr(exp.module, "check_config", None), source=flag)


def _stored_fingerprint(folder: Path) -> dict[str, Any] | None:
    f = folder / SWEEP_FILE
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text()).get("fingerprint", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        raise ConfigError(f"resume directory {folder} has an unreadable {SWEEP_FILE}") from None


def _fingerprint(name: str, mode: str, base: Mapping[str, Any], spec: SweepSpec) -> dict[str, Any]:
    return json.loads(json.dumps({"experiment": name, "mode": mode, "base": dict(base), "spec": spec.to_dict()}, sort_keys=True, default=str))


def prepare_sweep(
    name: str,
    spec: SweepSpec,
    *,
    mode: str = "quick",
    sets: Mapping[str, Any] | None = None,
    out: str | os.PathLike = "results",
    strategy: str = "auto",
    batch_size: int | None = None,
    metric: str | None = None,
    maximize: bool | None = None,
    resume: bool = False,
    check_out: bool = True,
) -> _Plan:
    """Validate a sweep request completely, before computing anything.

    Raises ``UnknownExperiment``, ``ConfigError`` (one-line reasons: unknown key,
    empty grid, wrong type, bad strategy/metric, a resume folder from another
    sweep) or ``PermissionError``.
    """

    exp = get(name)
    base = experiment_config(exp, mode, sets)
    cells = spec.cells(base)
    _validate_cells(exp, mode, spec, cells)
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    proto = protocol_of(exp)
    if proto is None and strategy == "vmap":
        raise ConfigError(f"experiment {exp.name!r} does not define train_cell/SWEEPABLE, so it can only be swept sequentially (--strategy sequential)")
    default = proto.metric if proto is not None and proto.metric else ("claims_passed", "max")
    direction = default[1] if maximize is None else ("max" if maximize else "min")
    if direction not in ("min", "max"):
        raise ConfigError(f"SWEEP_METRIC direction must be 'min' or 'max', got {direction!r}")
    metric_name = metric or default[0]
    if proto is not None:
        names = _metric_names(proto, cells[0].config)
        names |= {"claims_passed"} if proto.claims is not None else set()
        if metric_name not in names:
            raise ConfigError(f"--metric {metric_name!r} is not among {exp.name}'s cell metrics: {', '.join(sorted(names))}")
    elif not (metric_name == "claims_passed" or metric_name.startswith("claim:")):
        raise ConfigError(f"--metric for {exp.name!r} (swept by full runs) must be claims_passed or claim:<claim id>, got {metric_name!r}")
    if check_out:
        check_writable(out)
    out_dir = Path(out) / exp.name / "sweep"
    fp = _fingerprint(exp.name, mode, base, spec)
    if resume:
        from lgrad.train.checkpoint import fingerprint_diff

        for folder in (out_dir.parent / WORK_DIR, out_dir):
            stored = _stored_fingerprint(folder)
            if stored is not None:
                diff = fingerprint_diff(stored, fp)
                if diff:
                    raise ConfigError(f"resume directory {folder} is from a different sweep ({diff})")
                break
    return _Plan(exp, mode, base, spec, cells, proto, (metric_name, direction), out_dir, fp)


def _metric_names(proto: SweepProtocol, config: Mapping[str, Any]) -> set[str]:
    import jax

    static, hp = proto.split(config)
    with jax.enable_x64(True) if proto.x64 else contextlib.nullcontext():
        shapes = jax.eval_shape(lambda h, k: proto.train_cell(static, h, k), {k: jax.numpy.asarray(v) for k, v in hp.items()}, jax.random.PRNGKey(0))
    return set(shapes)


def _claims_record(claims: list[Claim]) -> dict[str, Any]:
    return {c.id: {"passed": c.passed, "measured": to_jsonable(c.measured), "target": c.target} for c in claims}


def _claim_metrics(claims: list[Claim]) -> dict[str, Any]:
    m: dict[str, Any] = {"claims_passed": sum(c.passed is True for c in claims), "claims_failed": sum(c.passed is False for c in claims)}
    for c in claims:
        v = c.measured
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            m[f"claim:{c.id}"] = float(v)
    return m


def run_sweep(
    name: str,
    spec: SweepSpec,
    *,
    mode: str = "quick",
    sets: Mapping[str, Any] | None = None,
    out: str | os.PathLike = "results",
    strategy: str = "auto",
    batch_size: int | None = None,
    metric: str | None = None,
    maximize: bool | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run the sweep ``spec`` over experiment ``name``; write ``<out>/<name>/sweep/``.

    ``resume`` skips cells already finished in that folder (refusing a folder written
    by a different sweep); ``checkpoint_every`` is passed to the full runs of the
    sequential fallback so a killed cell also resumes mid-run. ``process_index`` /
    ``process_count`` default to ``jax.process_index()`` / ``jax.process_count()``.
    """
    import jax

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    plan = prepare_sweep(name, spec, mode=mode, sets=sets, out=out, strategy=strategy, batch_size=batch_size, metric=metric, maximize=maximize, resume=resume)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    out_dir = plan.work_dir  # the finished sweep replaces plan.out_dir
    cells_dir = out_dir / "cells"
    if pi == 0:
        _prepare_work_dir(plan, resume)
    cells_dir.mkdir(parents=True, exist_ok=True)
    distributed = jax.process_count() > 1
    if distributed:  # nobody writes a cell before process 0 has cleared the folder
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("lgrad-sweep-start")
    start = time.perf_counter()
    mine = process_slice(plan.cells, pi, pc)
    done_ids = {p.stem for p in cells_dir.glob("*.json")} if resume else set()
    if distributed and resume:  # output folders need not be shared: pool what each process has
        done_ids = set().union(*map(set, _allgather_json(sorted(done_ids))))
    todo = [c for c in mine if c.id not in done_ids]
    skipped = len(mine) - len(todo)
    if skipped:
        say(f"resuming: {skipped} of {len(mine)} cells already finished")
    groups: list[dict[str, Any]] = []

    def write(cell: Cell, metrics: dict[str, Any], claims: list[Claim], group: int, how: str) -> None:
        rec = {
            "cell": cell.id,
            "index": cell.index,
            "seed": cell.seed,
            "overrides": to_jsonable(cell.overrides),
            "config": to_jsonable(cell.config),
            "metrics": to_jsonable(metrics),
            "claims": _claims_record(claims),
            "group": group,
            "strategy": how,
        }
        tmp = cells_dir / f".{cell.id}.tmp"
        tmp.write_text(json.dumps(rec) + "\n")
        tmp.replace(cells_dir / f"{cell.id}.json")

    if plan.proto is not None:
        _run_batched(plan, todo, write, groups, strategy, batch_size, show_progress, say)
    else:
        _run_sequential(plan, todo, write, groups, out_dir, checkpoint_every, resume, show_progress)

    by_id = {}
    for c in plan.cells:
        f = cells_dir / f"{c.id}.json"
        if f.exists():
            by_id[c.id] = json.loads(f.read_text())
    if distributed:  # every process's records reach process 0 through a collective
        for recs in _allgather_json([by_id[c.id] for c in mine if c.id in by_id]):
            for rec in recs:
                if rec["cell"] not in by_id and pi == 0:
                    (cells_dir / f"{rec['cell']}.json").write_text(json.dumps(rec) + "\n")
                by_id.setdefault(rec["cell"], rec)
    records = [by_id[c.id] for c in plan.cells if c.id in by_id]
    best = None
    if pi == 0:
        write_tables(out_dir, records, list(plan.cells[0].overrides) if plan.cells else [])
        best = best_summary(records, *plan.metric)
        (out_dir / "best.json").write_text(json.dumps({"groups": groups, **(best or {})}, indent=2, default=str) + "\n")
        axes = plan.spec.grid_axes
        if len(axes) == 2 and not plan.spec.random and not plan.spec.configs and records:
            write_heatmap(out_dir / "heatmap.png", records, axes, *plan.metric, title=f"{plan.exp.name} sweep")
        replace_dir(out_dir, plan.out_dir)
    return SweepResult(plan.exp.name, plan.out_dir, records, best, groups, time.perf_counter() - start, skipped)


def _prepare_work_dir(plan: _Plan, resume: bool) -> None:
    """A fresh partial folder; on resume keep it, or seed it with a finished ``sweep/``'s cells."""
    work = plan.work_dir
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    elif not work.exists() and (plan.out_dir / "cells").is_dir() and _stored_fingerprint(plan.out_dir) is not None:
        shutil.copytree(plan.out_dir / "cells", work / "cells")
    work.mkdir(parents=True, exist_ok=True)
    (work / SWEEP_FILE).write_text(json.dumps({"fingerprint": plan.fingerprint}, indent=1) + "\n")


def _allgather_json(obj: Any) -> list[Any]:
    """``obj`` of every process (JSON-able), gathered with a jax collective."""
    import numpy as np
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    every = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(every[i, : sizes[i]]).decode()) for i in range(len(sizes))]


def _run_batched(plan: _Plan, todo: list[Cell], write, groups, strategy, batch_size, show_progress, say) -> None:
    import jax

    proto = plan.proto
    group_of: dict[str, int] = {}  # group ids over the whole sweep (stable when resuming)
    for c in plan.cells:
        group_of.setdefault(json.dumps(proto.split(c.config)[0], sort_keys=True, default=str), len(group_of))
    by_static: dict[str, list[Cell]] = {}
    for c in todo:
        static, _ = proto.split(c.config)
        by_static.setdefault(json.dumps(static, sort_keys=True, default=str), []).append(c)
    for key, cells in by_static.items():
        gi = group_of[key]
        static = json.loads(key)
        hps = [proto.split(c.config)[1] for c in cells]
        seeds = [int(c.seed) if c.seed is not None else 0 for c in cells]
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), desc=f"{plan.exp.name} sweep group {gi + 1}/{len(group_of)}", leave=False, file=sys.stderr)

        # how each call ran: "sequential" or "vmap" (a two-argument wrapper of this
        # callback cannot say; then the forced strategy, or "auto")
        def on_done(idx, metrics, how=strategy, *, cells=cells, gi=gi, bar=bar):
            for i, m in zip(idx, metrics):
                claims = list(proto.claims(cells[i].config, m)) if proto.claims is not None else []
                if claims:
                    m = {**m, "claims_passed": sum(c.passed is True for c in claims)}
                write(cells[i], m, claims, gi, how)
            if bar is not None:
                bar.update(len(idx))

        fn = lambda hp, k, static=static: proto.train_cell(static, hp, k)  # noqa: E731
        with jax.enable_x64(True) if proto.x64 else contextlib.nullcontext():
            _, info = run_cells(fn, hps, seeds, strategy=strategy, batch_size=batch_size, on_done=on_done)
        if bar is not None:
            bar.close()
        changed = {k: v for k, v in static.items() if plan.base.get(k) != v}
        groups.append({"group": gi, "cells": len(cells), "static": changed, **info.to_dict()})
        say(f"group {gi + 1}/{len(group_of)} ({len(cells)} cells{', ' + json.dumps(changed) if changed else ''}): {info.strategy}"
            + (f", batch {info.batch_size} over {info.devices} device(s)" if info.strategy == "vmap" else "")
            + f", {info.seconds:.2f} s")


def _run_sequential(plan: _Plan, todo: list[Cell], write, groups, out_dir: Path, checkpoint_every: int, resume: bool, show_progress: bool) -> None:
    from lgrad.engine.runner import run_experiment

    t0 = time.perf_counter()
    for c in todo:
        overrides = dict(c.config)  # the full config: base (--set included) + the cell's keys
        run_dir = out_dir / "runs" / c.id
        label = " ".join(f"{k}={v}" for k, v in c.overrides.items()) or f"cell {c.index}"
        result = run_experiment(plan.exp.name, plan.mode, overrides, run_dir, show_progress=show_progress, checkpoint_every=checkpoint_every,
                                resume=resume and checkpoint_every > 0, variant=label)
        write(c, _claim_metrics(result.claims), result.claims, 0, "run_experiment")
    groups.append({"group": 0, "cells": len(todo), "strategy": "sequential (run_experiment)", "seconds": time.perf_counter() - t0})
