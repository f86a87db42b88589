"""Apply a vector aggregator to pytrees, and inside the worker axis.

An aggregator is any function ``agg(x) -> (d,)`` or ``agg(x) -> (n, d)`` on
stacked vectors ``x`` of shape (n, d) (bind ``f`` etc. with ``functools.partial``
or a lambda). :func:`tree_aggregate` flattens each worker's pytree into one row,
aggregates, and unflattens; :func:`worker_aggregate` is the per-worker version for
code run by :func:`lgrad.distributed.run_workers` / ``make_program``: it
``comm.all_gather``-s this worker's pytree (counted: ``nbytes(tree)`` sent per
worker) and aggregates the (n, d) stack, identically on every backend.

>>> import functools, jax.numpy as jnp
>>> from lgrad import robust
>>> from lgrad.distributed import run_workers
>>> params = {"w": jnp.arange(12.0).reshape(6, 2), "b": jnp.zeros((6,))}
>>> out = run_workers(lambda p: robust.worker_aggregate(functools.partial(robust.trimmed_mean, f=1), p),
...                   params, n_workers=6)
>>> out["w"].shape  # every worker holds the same aggregate
(6, 2)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lgrad.distributed import comm
from lgrad.distributed.stacking import ravel_stacked

__all__ = ["ravel_stacked", "tree_aggregate", "worker_aggregate"]


def tree_aggregate(aggregator: Callable[[jax.Array], jax.Array], stacked: Any) -> Any:
    """``aggregator`` applied to the stacked pytree (leaves (n, ...)): returns one
    pytree (aggregators returning (d,)) or a stacked pytree (returning (n, d))."""
    x, unravel = ravel_stacked(stacked)
    return unravel(aggregator(x))


def worker_aggregate(
    aggregator: Callable[..., jax.Array],
    tree: Any,
    *,
    with_index: bool = False,
    axis_name: str = comm.AXIS,
) -> Any:
    """Per-worker: all-gather ``tree`` over the worker axis and aggregate.

    With ``with_index=True`` the aggregator is called as ``aggregator(x, i)`` with
    ``i = comm.axis_index()`` (e.g. ``lambda x, i: robust.nna(x, f, i)``). An
    aggregator returning (n, d) gives back this worker's row.
    """
    gathered = comm.all_gather(tree, axis_name)
    x, unravel = ravel_stacked(gathered)
    if with_index:
        i = comm.axis_index(axis_name)
        out = aggregator(x, i)
    else:
        i = None
        out = aggregator(x)
    if out.ndim == 2:
        out = out[comm.axis_index(axis_name) if i is None else i]
    return unravel(out)
