"""Closed-form ridge regression as a layer-local rule.

A layer whose weights are not trained by gradient but re-solved from its input
features at every forward pass (the top layer of Li₂, Tian 2025, Sec. 3):

.. math::

    V^\\top = (F^\\top D F + \\eta I)^{-1} F^\\top D \\tilde Y

with features :math:`F \\in \\mathbb{R}^{N\\times K}`, targets
:math:`\\tilde Y \\in \\mathbb{R}^{N\\times M}`, ridge :math:`\\eta > 0` and an optional
diagonal row weighting :math:`D = \\mathrm{diag}(w)` (``weights``; a 0/1 mask selects
the training rows while keeping shapes static, so problems with different training
sets can be batched with ``jax.vmap``). With fewer rows than features
(:math:`N < K`) the same solution comes from the dual (kernel) form, an
:math:`N \\times N` solve instead of a :math:`K \\times K` one (push-through identity,
:math:`S = D^{1/2}`):

.. math::

    V^\\top = F^\\top S\\, (S F F^\\top S + \\eta I)^{-1} S \\tilde Y

(docs/papers/grokking-scaling.md, "Cost").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lgrad._linalg import spd_solve as _spd_solve  # unbatched under vmap (jaxlib's batched solve hangs)
from lgrad._validation import check_positive

__all__ = ["ridge_solve"]


def ridge_solve(
    features: jax.Array,
    targets: jax.Array,
    ridge: float,
    *,
    weights: jax.Array | None = None,
    stop_gradient: bool = True,
) -> jax.Array:
    """Solve for ``V`` (shape (M, K)) minimising ``sum_n w_n ||V f_n - y_n||^2 + ridge ||V||_F^2``.

    Args:
      features: F, shape (N, K).
      targets: Ỹ, shape (N, M).
      ridge: η > 0.
      weights: optional row weights w of shape (N,) (e.g. a 0/1 training mask).
      stop_gradient: return ``lax.stop_gradient`` of the solution (the layer is
        solved, not trained: no gradient flows through the solve).

    Returns:
      V with shape (M, K), so that predictions are ``features @ V.T``.

    Example:
      >>> import jax.numpy as jnp
      >>> from lgrad.local import ridge_solve
      >>> F = jnp.eye(3); Y = jnp.array([[1.0], [2.0], [3.0]])
      >>> V = ridge_solve(F, Y, 1e-6)
      >>> bool(jnp.allclose(F @ V.T, Y, atol=1e-4))
      True
    """
    check_positive(ridge, "ridge")
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"features must be (N, K) and targets (N, M) with the same N, got {features.shape} and {targets.shape}"
        )
    if weights is not None and weights.shape != (features.shape[0],):
        raise ValueError(f"weights must have shape ({features.shape[0]},), got {weights.shape}")
    sg = jax.lax.stop_gradient if stop_gradient else (lambda x: x)
    solve = _spd_solve if stop_gradient else (lambda a, b: jax.scipy.linalg.solve(a, b, assume_a="pos"))
    n, k = features.shape
    if n < k:  # dual form: an (N, N) solve
        fs = features if weights is None else features * jnp.sqrt(weights)[:, None]
        ys = targets if weights is None else targets * jnp.sqrt(weights)[:, None]
        fs, ys = sg(fs), sg(ys)
        return (fs.T @ solve(fs @ fs.T + ridge * jnp.eye(n, dtype=features.dtype), ys)).T
    fw = features if weights is None else features * weights[:, None]
    gram = fw.T @ features + ridge * jnp.eye(k, dtype=features.dtype)
    return solve(sg(gram), sg(fw.T @ targets)).T
