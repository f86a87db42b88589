"""The experiment engine: claims, configs, discovery and the runner.

The training loop lives in :mod:`lgrad.train`; ``FitResult``, ``TrainState``,
``batch_sampler``, ``fit`` and ``run_loop`` are re-exported here for the experiments
that still import them from ``lgrad.engine`` (import them from ``lgrad.train``)."""
from lgrad.engine.claims import Claim as Claim
from lgrad.engine.config import ConfigError as ConfigError
from lgrad.engine.config import apply_overrides as apply_overrides
from lgrad.engine.registry import Experiment as Experiment
from lgrad.engine.registry import UnknownExperiment as UnknownExperiment
from lgrad.engine.registry import discover as discover
from lgrad.engine.registry import get as get_experiment
from lgrad.engine.runner import Result as Result
from lgrad.engine.runner import RunContext as RunContext
from lgrad.engine.runner import check_writable as check_writable
from lgrad.engine.runner import reevaluate as reevaluate
from lgrad.engine.runner import run_experiment as run_experiment
from lgrad.train import FitResult as FitResult
from lgrad.train import TrainState as TrainState
from lgrad.train import batch_sampler as batch_sampler
from lgrad.train import fit as fit
from lgrad.train import run_loop as run_loop

__all__ = [
    "Claim",
    "ConfigError",
    "Experiment",
    "FitResult",
    "Result",
    "RunContext",
    "TrainState",
    "UnknownExperiment",
    "apply_overrides",
    "batch_sampler",
    "check_writable",
    "discover",
    "fit",
    "get_experiment",
    "reevaluate",
    "run_experiment",
    "run_loop",
]
