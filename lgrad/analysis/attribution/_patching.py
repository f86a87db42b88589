r"""Activation patching, attribution patching and RelP (docs/papers/relp-patching.md).

For a component tapped as ``layer`` (activation :math:`a`, last axis the features),
a clean and a corrupted input, and a metric :math:`m` of the outputs (one value per
example):

* activation patching (ground truth): :math:`m(\text{corrupted with } a \leftarrow a_{clean}) - m(\text{corrupted})`;
* attribution patching (Nanda 2023): :math:`(a_{clean} - a_{corr}) \cdot \partial m / \partial a` at the corrupted run;
* RelP: the same product with the backward pass through the LRP rules of
  :func:`lgrad.analysis.attribution.rules` ``("relp")``: LayerNorm divides by
  stop-gradient σ, the attention pattern is detached, GELU/SiLU become
  :math:`x\,\mathrm{sg}(\mathrm{act}(x)/x)`, gated products :math:`y/2 + \mathrm{sg}(y/2)`.
  The model must be written with the library's ``layer_norm``, ``softmax_pattern``,
  ``gelu``/``silu`` and ``gated`` (values are unchanged; only gradients differ).

``per_position=True`` keeps the second axis of the activation (tokens): patching then
replaces one position at a time and the estimates are summed over features only.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lgrad.analysis.attribution._core import Apply, layer_forward, layer_shape, replace_layer, rules

__all__ = ["activation_patching", "attribution_patching", "relp_patching"]

Metric = Callable[[jax.Array], jax.Array]


def _activation(apply: Apply, params: Any, x: jax.Array, layer: str) -> jax.Array:
    shape = layer_shape(apply, params, x, layer)
    return layer_forward(apply, layer)(params, x, jnp.zeros(shape.shape, shape.dtype))[1]


def activation_patching(
    apply: Apply, params: Any, clean: jax.Array, corrupted: jax.Array, *, layer: str, metric: Metric,
    per_position: bool = False,
) -> jax.Array:
    """Effect on ``metric`` of patching the clean activation into the corrupted run:
    ``(n,)``, or ``(n, T)`` with ``per_position``."""
    a_clean = _activation(apply, params, clean, layer)
    base = metric(apply(params, corrupted))
    if not per_position:
        return metric(replace_layer(apply, layer, lambda h: a_clean)(params, corrupted)) - base

    def one(t):
        patch = lambda h: h.at[:, t].set(a_clean[:, t])  # noqa: E731
        return metric(replace_layer(apply, layer, patch)(params, corrupted)) - base

    return jax.lax.map(one, jnp.arange(a_clean.shape[1])).T


def _linear_estimate(apply, params, clean, corrupted, layer, metric, per_position):
    a_clean = _activation(apply, params, clean, layer)
    fwd = layer_forward(apply, layer)
    grad = jax.grad(lambda d: jnp.sum(metric(fwd(params, corrupted, d)[0])))(jnp.zeros_like(a_clean))
    a_corr = _activation(apply, params, corrupted, layer)
    prod = (a_clean - a_corr) * grad
    axes = tuple(range(2, prod.ndim)) if per_position else tuple(range(1, prod.ndim))
    return jnp.sum(prod, axis=axes)


def attribution_patching(
    apply: Apply, params: Any, clean: jax.Array, corrupted: jax.Array, *, layer: str, metric: Metric,
    per_position: bool = False,
) -> jax.Array:
    r"""Attribution patching :math:`(a_{clean} - a_{corr}) \cdot \nabla_a m` (plain gradients)."""
    with rules("plain"):
        return _linear_estimate(apply, params, clean, corrupted, layer, metric, per_position)


def relp_patching(
    apply: Apply, params: Any, clean: jax.Array, corrupted: jax.Array, *, layer: str, metric: Metric,
    per_position: bool = False,
) -> jax.Array:
    """RelP: attribution patching with the gradient taken through the LRP rules (``rules("relp")``)."""
    with rules("relp"):
        return _linear_estimate(apply, params, clean, corrupted, layer, metric, per_position)
