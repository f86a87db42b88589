"""lgrad: learning rules built on local gradients, in JAX.

Subpackages, imported on first use (``import lgrad; lgrad.optim.diffgrad``):
``lgrad.optim`` (optax transforms), ``lgrad.robust`` (robust aggregation),
``lgrad.federated``, ``lgrad.local`` (layer-local rules), ``lgrad.unlearn``,
``lgrad.analysis`` (Hessian and attention-SVM tools), ``lgrad.distributed`` (the
worker axis), ``lgrad.data``, ``lgrad.train`` (the training loop and checkpoints),
``lgrad.engine`` (claims, registry, runner), ``lgrad.sweep``, ``lgrad.bench`` and
``lgrad.testing``. The ``lgrad`` command is :mod:`lgrad.cli`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

SUBPACKAGES = (
    "analysis",
    "bench",
    "data",
    "distributed",
    "engine",
    "federated",
    "local",
    "optim",
    "robust",
    "sweep",
    "testing",
    "train",
    "unlearn",
)

__all__ = ["__version__", *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBPACKAGES))
