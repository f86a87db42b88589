"""Random draws of many shapes from one compiled program."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["normal_rows"]


def normal_rows(keys: jax.Array, length: int) -> jax.Array:
    """``jax.random.normal(keys[i], (length,))`` for every key: a ``(len(keys), length)`` array.

    JAX's threefry generator draws element ``j`` of ``normal(key, shape)`` from counter
    ``j``, so ``normal(key, shape)`` equals the first ``prod(shape)`` entries of
    ``normal_rows(key[None], length)[0]`` reshaped, bit for bit, for every shape with at
    most ``length`` entries. Cutting every initialisation of an experiment from such rows
    costs one compiled random program per ``(len(keys), length)`` instead of one per
    shape (used by the hessian-spectrum and attention-svm experiments; checked against
    their library initialisers in their tests).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    return _rows(jnp.asarray(keys), length)


@functools.partial(jax.jit, static_argnums=1)
def _rows(keys: jax.Array, length: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.normal(k, (length,)))(keys)
