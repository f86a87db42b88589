"""Temporary re-export: the training loop lives in :mod:`lgrad.train` (import it from
there); kept while experiments still import it through ``lgrad.engine``."""
from lgrad.train._loop import FitResult as FitResult
from lgrad.train._loop import TrainState as TrainState
from lgrad.train._loop import batch_sampler as batch_sampler
from lgrad.train._loop import fit as fit
from lgrad.train._loop import run_loop as run_loop

__all__ = ["TrainState", "FitResult", "run_loop", "fit", "batch_sampler"]
