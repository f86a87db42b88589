"""Hyperparameter sweeps over any experiment: ``lgrad sweep NAME --grid k=v1,v2 --seeds 5``.

See ``docs/sweeps.md``. Experiments that define ``SWEEPABLE`` + ``train_cell`` are
run as vmapped, device-sharded compiled groups; others cell by cell through
``run_experiment``. Results: ``<out>/<name>/sweep/{sweep.csv, sweep.jsonl, best.json,
heatmap.png}``.
"""
from lgrad.sweep.batched import STRATEGIES as STRATEGIES
from lgrad.sweep.batched import RunInfo as RunInfo
from lgrad.sweep.batched import run_cells as run_cells
from lgrad.sweep.batched import sweep_mesh as sweep_mesh
from lgrad.sweep.report import best_summary as best_summary
from lgrad.sweep.report import format_best as format_best
from lgrad.sweep.runner import SweepProtocol as SweepProtocol
from lgrad.sweep.runner import SweepResult as SweepResult
from lgrad.sweep.runner import prepare_sweep as prepare_sweep
from lgrad.sweep.runner import protocol_of as protocol_of
from lgrad.sweep.runner import run_sweep as run_sweep
from lgrad.sweep.spec import Cell as Cell
from lgrad.sweep.spec import SweepSpec as SweepSpec
from lgrad.sweep.spec import parse_grid as parse_grid
from lgrad.sweep.spec import parse_random as parse_random
from lgrad.sweep.spec import process_slice as process_slice

__all__ = [
    "STRATEGIES",
    "Cell",
    "RunInfo",
    "SweepProtocol",
    "SweepResult",
    "SweepSpec",
    "best_summary",
    "format_best",
    "parse_grid",
    "parse_random",
    "prepare_sweep",
    "process_slice",
    "protocol_of",
    "run_cells",
    "run_sweep",
    "sweep_mesh",
]
