"""Stacked pytrees: one row per worker.

:func:`ravel_stacked` flattens a pytree whose leaves carry a leading worker axis
(n, ...) into an (n, d) matrix -- the form robust aggregators and server-side
rules work on -- and returns the inverse map.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ravel_stacked"]


def ravel_stacked(stacked: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """(n, d) matrix of the per-worker flattened pytrees (leaves with a leading axis
    n), and ``unravel(v)`` mapping a (d,) vector back to one worker's pytree or an
    (n, d) matrix back to the stacked pytree."""
    leaves, treedef = jax.tree.flatten(stacked)
    if not leaves:
        raise ValueError("the pytree has no leaves to aggregate")
    n = int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else -1
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(f"every leaf needs the same leading (worker) axis; got shapes {[np.shape(l) for l in leaves]}")
    shapes = [np.shape(l)[1:] for l in leaves]
    dtypes = [jnp.result_type(l) for l in leaves]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    dtype = jnp.result_type(*dtypes)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    x = jnp.concatenate([jnp.reshape(l, (n, -1)).astype(dtype) for l in leaves], axis=1)
    offsets = np.cumsum([0] + sizes)

    def unravel(v: jax.Array) -> Any:
        lead = v.shape[:-1]
        parts = [
            v[..., offsets[k] : offsets[k + 1]].reshape(lead + shapes[k]).astype(dtypes[k]) for k in range(len(leaves))
        ]
        return jax.tree.unflatten(treedef, parts)

    return x, unravel
