"""lgrad: learning rules built on local gradients, in JAX.

Subpackages, imported on first use (``import lgrad; lgrad.optim.diffgrad``):
``lgrad.optim`` (optax transforms), ``lgrad.robust`` (robust aggregation),
``lgrad.federated``, ``lgrad.local`` (layer-local rules), ``lgrad.unlearn``,
``lgrad.analysis`` (Hessian and attention-SVM tools), ``lgrad.distributed`` (the
worker axis), ``lgrad.data``, ``lgrad.train`` (the training loop and checkpoints),
``lgrad.engine`` (claims, registry, runner), ``lgrad.sweep``, ``lgrad.bench``,
``lgrad.testing`` and every other subpackage (:data:`SUBPACKAGES`). The ``lgrad``
command is :mod:`lgrad.cli` (imported explicitly).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__version__ = "0.1.0"


def _subpackages() -> list[str]:
    """Every public subpackage (found on disk, so new ones need no registration)."""
    return sorted(i.name for i in pkgutil.iter_modules(__path__) if i.ispkg and not i.name.startswith("_") and i.name != "cli")


SUBPACKAGES = tuple(_subpackages())

__all__ = ["__version__", *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBPACKAGES))
