"""The training core: one pure scanned loop, its host driver and checkpoints.

* :func:`scan_steps` — pure ``lax.scan`` of a step function with periodic evals
  (jit- and vmap-able: a sweep cell is ``jax.vmap`` of it);
* :func:`run_loop` — the host driver around it (compiled chunks, progress,
  ``on_chunk``, orbax checkpoints); :func:`fit` — ``run_loop`` with the standard
  gradient step;
* :mod:`lgrad.train.checkpoint` — ``Checkpointer``, ``LoopCheckpoint``,
  ``CheckpointSession`` (orbax is imported only when a checkpoint is written).

This package sits below the rules and analysis (they may use it) and below
``lgrad.engine`` (which only re-exports it); it imports neither.
"""
from lgrad.train._loop import FitResult as FitResult
from lgrad.train._loop import TrainState as TrainState
from lgrad.train._loop import batch_sampler as batch_sampler
from lgrad.train._loop import fit as fit
from lgrad.train._loop import gradient_step as gradient_step
from lgrad.train._loop import run_loop as run_loop
from lgrad.train._loop import scan_steps as scan_steps
from lgrad.train.checkpoint import CheckpointMismatch as CheckpointMismatch
from lgrad.train.checkpoint import Checkpointer as Checkpointer
from lgrad.train.checkpoint import CheckpointSession as CheckpointSession
from lgrad.train.checkpoint import LoopCheckpoint as LoopCheckpoint
from lgrad.train.checkpoint import active_session as active_session

__all__ = [
    "CheckpointMismatch",
    "CheckpointSession",
    "Checkpointer",
    "FitResult",
    "LoopCheckpoint",
    "TrainState",
    "active_session",
    "batch_sampler",
    "fit",
    "gradient_step",
    "run_loop",
    "scan_steps",
]
