"""The shared table of lgrad.optim transforms. Every transform joins it with one
``Entry``; ``test_transform_table.py`` checks each for jit, inject_hyperparams,
dtype preservation, convergence on a quadratic, argument validation and agreement
with a plain numpy reference over 100 steps."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import lgrad.optim as lo
from lgrad.testing import numpy_reference as ref


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]  # returns an optax.GradientTransformation
    kwargs: dict[str, Any]  # arguments for the checks (learning rate included if any)
    reference: Callable[..., Any] | None  # numpy reference(grad_fn, x0, steps, **ref_kwargs)
    ref_kwargs: dict[str, Any] | None = None  # defaults to kwargs
    bad_args: tuple[dict[str, Any], ...] = ()  # each must raise ValueError
    converge_steps: int = 400
    scale_lr: float | None = None  # for "scale_by_*" pieces: chain with optax.scale(-lr)

    def __str__(self) -> str:
        return self.name


_COMMON_BAD = (
    {"learning_rate": -1e-3},
    {"learning_rate": float("nan")},
    {"learning_rate": float("inf")},
    {"b1": 1.0},
    {"b1": -0.1},
    {"b2": 1.0},
    {"eps": 0.0},
    {"eps": -1e-8},
)

ENTRIES: list[Entry] = [
    Entry(
        "diffgrad",
        lo.diffgrad,
        dict(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8),
        ref.diffgrad_reference,
        bad_args=_COMMON_BAD + ({"weight_decay": -1.0},),
    ),
    Entry(
        "diffgrad-weight-decay",
        lo.diffgrad,
        dict(learning_rate=0.05, b1=0.9, b2=0.99, eps=1e-7, weight_decay=1e-3),
        ref.diffgrad_reference,
    ),
    Entry(
        "diffgrad-constant-friction",
        lo.diffgrad,
        dict(learning_rate=0.05, constant_friction=True),
        ref.diffgrad_reference,
    ),
    Entry(
        "scale_by_diffgrad",
        lo.scale_by_diffgrad,
        dict(b1=0.9, b2=0.999, eps=1e-8),
        ref.diffgrad_reference,
        ref_kwargs=dict(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8),
        bad_args=({"b1": 1.5}, {"b2": -0.5}, {"eps": 0.0}),
        scale_lr=0.05,
    ),
]
