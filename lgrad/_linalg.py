"""Dense solves that stay unbatched under ``vmap``.

jaxlib 0.10's CPU LAPACK calls, *batched* (several systems of size >= ~100) inside
a larger jitted program, were seen to hang idle, never returning, on this
project's machines (grokking's vmapped ridge cells, see ``lgrad.local.ridge``;
FZooS's per-client Gaussian processes). Wrapped in :func:`jax.custom_batching.sequential_vmap`, a ``vmap`` of
these runs as a loop of unbatched calls: the same flops, and no hang. They are for
values, not for differentiating through the factorisation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cholesky", "cho_solve", "solve", "spd_solve"]


@jax.custom_batching.sequential_vmap
def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor of a symmetric positive definite ``a``."""
    return jnp.linalg.cholesky(a)


@jax.custom_batching.sequential_vmap
def cho_solve(chol: jax.Array, b: jax.Array) -> jax.Array:
    """``a^{-1} b`` from the lower Cholesky factor ``chol`` of ``a``."""
    return jax.scipy.linalg.cho_solve((chol, True), b)


@jax.custom_batching.sequential_vmap
def solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a^{-1} b`` for a general square ``a``."""
    return jnp.linalg.solve(a, b)


@jax.custom_batching.sequential_vmap
def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a^{-1} b`` for a symmetric positive definite ``a`` (the ridge layer's solve),
    ``b`` of shape (n, k): a Cholesky factor of ``a``'s lower triangle (``a`` is taken
    as symmetric, not symmetrised) and two triangular solves."""
    chol = jax.lax.linalg.cholesky(a, symmetrize_input=False)
    y = jax.lax.linalg.triangular_solve(chol, b, left_side=True, lower=True)
    return jax.lax.linalg.triangular_solve(chol, y, left_side=True, lower=True, transpose_a=True)
