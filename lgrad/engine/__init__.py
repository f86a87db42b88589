"""The experiment engine: claims, configs, discovery and the runner (the training
loop lives in :mod:`lgrad.train`).

An experiment is a module with ``measure(config, ctx) -> measurements`` and a pure
``claims(measurements, config) -> list[Claim]`` whose thresholds are its ``CRITERIA``
table (see :mod:`lgrad.engine.registry`); :func:`run_experiment` runs one and writes
``result.json`` with the measurements, so :func:`reevaluate` recomputes the claims of
a stored run without training."""
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

__all__ = [
    "Claim",
    "ConfigError",
    "Experiment",
    "Result",
    "RunContext",
    "UnknownExperiment",
    "apply_overrides",
    "check_writable",
    "discover",
    "get_experiment",
    "reevaluate",
    "run_experiment",
]
