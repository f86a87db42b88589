"""The Retrain-Equivalence (RE) distance between two models' predictions."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["re_distance"]


def re_distance(pred_u: Any, pred_r: Any) -> jax.Array:
    r"""RE distance of Yu et al. 2025 (Def. of retrain equivalence; ``docs/papers/unlearning-paths.md#what-we-implement``).

    .. math::
        d(\theta_u, \theta_r) = \frac{1}{m}\sum_{i=1}^{m}
          \big\| \mathrm{Pred}(\theta_u, x_i) - \mathrm{Pred}(\theta_r, x_i) \big\|_2^2

    ``pred_u`` and ``pred_r`` are the two models' predictions on the same ``m`` test
    points: shape ``(m,)`` (scalar outputs, e.g. linear regression) or ``(m, ...)``
    (e.g. class probabilities); trailing axes are summed, the first is averaged.

    Example:
      >>> import jax.numpy as jnp
      >>> float(re_distance(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0])))
      2.0
    """
    pred_u = jnp.asarray(pred_u)
    pred_r = jnp.asarray(pred_r)
    if pred_u.shape != pred_r.shape:
        raise ValueError(f"pred_u and pred_r must have the same shape, got {pred_u.shape} and {pred_r.shape}")
    if pred_u.ndim == 0 or pred_u.shape[0] == 0:
        raise ValueError("re_distance needs predictions on at least one test point (shape (m, ...), m >= 1)")
    sq = jnp.square(pred_u - pred_r).reshape(pred_u.shape[0], -1)
    return jnp.mean(jnp.sum(sq, axis=1))
