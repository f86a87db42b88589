r"""NormGrad (Rebuffi, Fong, Ji & Vedaldi 2020; docs/papers/saliency-localisation.md).

At a tapped layer with activation :math:`a_u` and gradient :math:`g_u` at spatial
location :math:`u` (channels on ``channel_axis``):

.. math:: s_u = \|g_u\|\,\|a_u\| = \| a_u g_u^\top \|_F,

the norm of location u's contribution to the weight gradient of a virtual identity
1x1 convolution inserted after the layer. Selective variants keep positive parts:
``"outer"`` :math:`\|\max(0, a_u g_u^\top)\|_F` (the authors' repository, lgrad's
default) and ``"product"`` :math:`\|\max(0, a_u \odot g_u)\|` (TorchRay's form).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lgrad.analysis.attribution._core import Apply, layer_gradient

__all__ = ["NORMGRAD_VARIANTS", "meta_saliency", "normgrad", "normgrad_from"]

NORMGRAD_VARIANTS = ("plain", "outer", "product")


def normgrad_from(act: jax.Array, grad: jax.Array, *, variant: str = "plain", channel_axis: int = -1) -> jax.Array:
    """NormGrad map from an activation and its gradient (channel axis removed)."""
    if variant not in NORMGRAD_VARIANTS:
        raise ValueError(f"normgrad: variant={variant!r} is not one of {NORMGRAD_VARIANTS}")
    a = jnp.moveaxis(act, channel_axis, -1)
    g = jnp.moveaxis(grad, channel_axis, -1)
    if variant == "plain":
        return jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(g, axis=-1)
    if variant == "product":
        return jnp.linalg.norm(jax.nn.relu(a * g), axis=-1)
    # ||max(0, a g^T)||_F^2 = sum_ij max(0, a_i g_j)^2 = |a+|^2 |g+|^2 + |a-|^2 |g-|^2
    pos = lambda v: jnp.sum(jax.nn.relu(v) ** 2, axis=-1)  # noqa: E731
    neg = lambda v: jnp.sum(jax.nn.relu(-v) ** 2, axis=-1)  # noqa: E731
    return jnp.sqrt(pos(a) * pos(g) + neg(a) * neg(g))


def normgrad(
    apply: Apply, params: Any, x: jax.Array, *, layer: str, target: Any = None,
    variant: str = "plain", channel_axis: int = -1,
) -> jax.Array:
    """NormGrad at the tapped ``layer`` for the target output (batch ``x``)."""
    act, grad = layer_gradient(apply, params, x, layer=layer, target=target)
    return normgrad_from(act, grad, variant=variant, channel_axis=channel_axis)


def meta_saliency(
    apply: Apply, params: Any, x: jax.Array, labels: jax.Array, *, layer: str,
    learning_rate: float = 1e-4, variant: str = "plain", channel_axis: int = -1,
) -> jax.Array:
    """Meta-saliency: NormGrad of ``labels`` recomputed after one SGD step (``learning_rate``,
    the paper's 1e-4) on the softmax cross-entropy of ``labels`` at ``x``."""
    if not learning_rate > 0:
        raise ValueError(f"meta_saliency: learning_rate={learning_rate!r} must be > 0")

    def loss(p):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(apply(p, x), labels))

    g = jax.grad(loss)(params)
    stepped = jax.tree.map(lambda p, d: p - learning_rate * d, params, g)
    return normgrad(apply, stepped, x, layer=layer, target=labels, variant=variant, channel_axis=channel_axis)


