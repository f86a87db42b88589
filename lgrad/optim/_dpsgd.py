r"""DP-SGD's gradient: per-example clipping plus Gaussian noise.

M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang,
"Deep Learning with Differential Privacy", CCS 2016, Algorithm 1. Used by the
FFA-LoRA reproduction (``docs/papers/ffa-lora.md``).

The updates are **per-example gradients** (every leaf has a leading batch axis of
size :math:`B`); with :math:`\|g_j\|` the global norm of example :math:`j` over all
leaves,

.. math::

    \bar g = \frac1B \Big(\sum_{j=1}^B g_j \min\big(1, C/\|g_j\|\big)
        + \sigma C\, \xi\Big), \qquad \xi \sim N(0, I),

the same as ``optax.contrib.differentially_private_aggregate`` except for where the
noise comes from: leaf :math:`\ell`'s :math:`\xi` is
``normal(fold_in(k, ℓ), shape)`` with ``k = key`` when ``update`` gets the extra
argument ``key`` (e.g. a different key per client and step), else
``k = fold_in(PRNGKey(seed), count)``. So a reference can regenerate the noise.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_learning_rate, check_nonnegative, check_positive

__all__ = ["DPSGDState", "clip_per_example", "scale_by_dpsgd", "dpsgd"]


class DPSGDState(NamedTuple):
    """State of :func:`scale_by_dpsgd`: the number of updates so far (int32)."""

    count: jax.Array


def clip_per_example(per_example: Any, l2_norm_clip: Any) -> tuple[Any, jax.Array]:
    r"""``(sum_j g_j min(1, C/|g_j|), norms (B,))`` for per-example gradients ``g_j``
    (leading batch axis on every leaf; :math:`\|g_j\|` over all leaves)."""
    leaves = jax.tree.leaves(per_example)
    sq = sum(jnp.sum(jnp.reshape(g.astype(jnp.float32), (g.shape[0], -1)) ** 2, axis=1) for g in leaves)
    norms = jnp.sqrt(sq)
    factor = jnp.minimum(1.0, l2_norm_clip / jnp.where(norms > 0, norms, 1.0))
    summed = jax.tree.map(
        lambda g: jnp.tensordot(factor.astype(g.dtype), g, axes=(0, 0)), per_example)
    return summed, norms


def scale_by_dpsgd(*, l2_norm_clip: float, noise_multiplier: float, seed: int = 0) -> optax.GradientTransformationExtraArgs:
    r"""The DP-SGD gradient :math:`\bar g` from per-example gradients (module docstring).

    ``update(per_example_grads, state, params=None, *, key=None)`` returns a tree
    without the batch axis. ``l2_norm_clip`` and ``noise_multiplier`` may be
    injected (``optax.inject_hyperparams``, no static arguments) or traced (e.g.
    ``vmap`` over several noise levels).

    Args:
      l2_norm_clip: :math:`C > 0`.
      noise_multiplier: :math:`\sigma \ge 0` (noise std :math:`\sigma C` on the sum).
      seed: the noise seed when no ``key`` is passed.
    """
    check_positive(l2_norm_clip, "l2_norm_clip")
    check_nonnegative(noise_multiplier, "noise_multiplier")

    def init_fn(params):
        del params
        return DPSGDState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, key=None, **extra_args):
        del params, extra_args
        leaves, treedef = jax.tree.flatten(updates)
        if not leaves:
            return updates, state
        batch = leaves[0].shape[0]
        summed, _ = clip_per_example(updates, l2_norm_clip)
        k = jax.random.fold_in(jax.random.PRNGKey(seed), state.count) if key is None else key
        flat = jax.tree.leaves(summed)
        std = jnp.asarray(noise_multiplier, jnp.float32) * l2_norm_clip
        noisy = [(s + (std * jax.random.normal(jax.random.fold_in(k, i), s.shape, jnp.float32)).astype(s.dtype)) / batch
                 for i, s in enumerate(flat)]
        return jax.tree.unflatten(treedef, noisy), DPSGDState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dpsgd(learning_rate: optax.ScalarOrSchedule, *, l2_norm_clip: float, noise_multiplier: float,
          seed: int = 0) -> optax.GradientTransformationExtraArgs:
    r"""DP-SGD (Abadi et al. 2016): :math:`x \leftarrow x - \eta\,\bar g` (:func:`scale_by_dpsgd`
    then :math:`-\eta`); feed it per-example gradients. ``optax.inject_hyperparams(dpsgd)``
    needs no static arguments."""
    check_learning_rate(learning_rate)
    return optax.chain(scale_by_dpsgd(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier, seed=seed),
                       optax.scale_by_learning_rate(learning_rate))
