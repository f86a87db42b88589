"""Counted collectives over the worker axis.

Every collective lgrad issues goes through these wrappers. Each one records, at
trace time, the bytes *this worker sends* for the call (dtype size x elements, and
for sparse messages the index bytes too). Shapes are static under ``jit``, so the
counts are exact Python integers, known before the step runs:

>>> from lgrad.distributed import comm
>>> def step(x):
...     with comm.counting() as sent:
...         y = comm.pmean(x)
...     return y, {"bytes_sent": sent.bytes}

Accounting convention (per worker, per call):

* ``psum``/``pmean``/``pmax``/``all_gather``: the worker's own message, ``x.nbytes``
  (what it contributes; the reduction algorithm's internal traffic — ring, tree —
  is the backend's business and not counted);
* ``ppermute``: ``x.nbytes`` if the worker sends to someone under ``perm``;
* ``all_gather_sparse(values, indices)``: ``values.nbytes + indices.nbytes``.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AXIS",
    "CommCounter",
    "counting",
    "not_counted",
    "nbytes",
    "record",
    "psum",
    "pmean",
    "pmax",
    "all_gather",
    "all_gather_sparse",
    "ppermute",
    "axis_size",
    "axis_index",
    "split_axis",
]

AXIS = "workers"


@dataclasses.dataclass
class CommCounter:
    """Bytes sent by one worker, accumulated while tracing a step."""

    bytes: int = 0
    calls: int = 0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, n: int) -> None:
        self.bytes += int(n)
        self.calls += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + int(n)


_ACTIVE: contextvars.ContextVar[tuple[CommCounter, ...]] = contextvars.ContextVar("lgrad_comm", default=())

# When several workers share a device (mesh backend, n > devices), the runner binds
# the logical worker axis to two JAX axes: (devices, workers within a device).
_SPLIT: contextvars.ContextVar[dict[str, tuple[str, str]]] = contextvars.ContextVar("lgrad_split_axes", default={})


@contextlib.contextmanager
def split_axis(axis_name: str, device_axis: str, local_axis: str) -> Iterator[None]:
    """Inside the block, collectives over ``axis_name`` span (device_axis, local_axis)."""
    token = _SPLIT.set({**_SPLIT.get(), axis_name: (device_axis, local_axis)})
    try:
        yield
    finally:
        _SPLIT.reset(token)


def _axes(axis_name: str) -> str | tuple[str, str]:
    return _SPLIT.get().get(axis_name, axis_name)


@contextlib.contextmanager
def counting() -> Iterator[CommCounter]:
    """Count the bytes of every lgrad collective traced inside the block (nests)."""
    counter = CommCounter()
    token = _ACTIVE.set(_ACTIVE.get() + (counter,))
    try:
        yield counter
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def not_counted() -> Iterator[None]:
    """Inside the block, collectives are not recorded by any active counter.

    For traffic that is not the algorithm's own: diagnostics (consensus distance)
    and simulation-only views (an omniscient attacker gathering the honest
    updates). Counters opened *inside* the block count as usual.
    """
    token = _ACTIVE.set(())
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def nbytes(tree: Any) -> int:
    """Bytes of a pytree of arrays (static: from shapes and dtypes).

    An array's own dtype counts (a numpy int64 array is 8 bytes per element even
    without x64); Python scalars count as jax would store them.
    """

    def itemsize(x):
        dtype = getattr(x, "dtype", None)
        return np.dtype(dtype if dtype is not None else jnp.result_type(x)).itemsize

    return int(sum(np.prod(np.shape(x), dtype=np.int64) * itemsize(x) for x in jax.tree.leaves(tree)))


def record(kind: str, n: int) -> None:
    """Record ``n`` bytes sent for a message of ``kind`` in every active counter."""
    for counter in _ACTIVE.get():
        counter.add(kind, n)


def psum(x: Any, axis_name: str = AXIS) -> Any:
    record("psum", nbytes(x))
    return jax.lax.psum(x, _axes(axis_name))


def pmean(x: Any, axis_name: str = AXIS) -> Any:
    record("pmean", nbytes(x))
    return jax.lax.pmean(x, _axes(axis_name))


def pmax(x: Any, axis_name: str = AXIS) -> Any:
    record("pmax", nbytes(x))
    return jax.lax.pmax(x, _axes(axis_name))


def all_gather(x: Any, axis_name: str = AXIS, *, tiled: bool = False) -> Any:
    """Every worker's ``x`` stacked on a new leading axis (of size n)."""
    record("all_gather", nbytes(x))
    return _gather(x, axis_name, tiled)


def _gather(x: Any, axis_name: str, tiled: bool = False) -> Any:
    axes = _axes(axis_name)
    if isinstance(axes, str):
        return jax.lax.all_gather(x, axes, tiled=tiled)
    dev, loc = axes

    def leaf(a):
        g = jax.lax.all_gather(jax.lax.all_gather(a, loc), dev)  # (D, n/D, ...) in worker order
        g = g.reshape((-1,) + g.shape[2:])
        return g.reshape((-1,) + g.shape[2:]) if tiled else g

    return jax.tree.map(leaf, x)


def all_gather_sparse(values: jax.Array, indices: jax.Array, axis_name: str = AXIS) -> tuple[jax.Array, jax.Array]:
    """All-gather a sparse message; the index bytes are counted with the values."""
    record("all_gather_sparse", nbytes(values) + nbytes(indices))
    return _gather(values, axis_name), _gather(indices, axis_name)


def ppermute(x: Any, perm: Sequence[tuple[int, int]], axis_name: str = AXIS) -> Any:
    """Send ``x`` along the (source, destination) pairs of ``perm``.

    Every worker that appears as a source sends ``nbytes(x)``; the count recorded is
    that of a sending worker (workers that send nothing still trace the same code).
    Workers that are no pair's destination receive zeros; partial permutations work
    on every backend (under vmap they are completed internally, see below).
    """
    perm = [(int(a), int(b)) for a, b in perm]
    if not perm:  # nobody sends: everyone receives zeros
        return jax.tree.map(jnp.zeros_like, x)
    record("ppermute", nbytes(x))
    axes = _axes(axis_name)
    if isinstance(axes, str):
        n = jax.lax.axis_size(axes)
        if len(perm) == n:
            return jax.lax.ppermute(x, axes, perm=perm)
        # A partial permutation: jax's vmap rule only accepts full ones, so pair the
        # idle sources with the idle destinations and zero what those receive (the
        # semantics of jax.lax.ppermute). The extra messages carry nothing the
        # program uses and are not counted.
        srcs = sorted(set(range(n)) - {a for a, _ in perm})
        dsts = sorted(set(range(n)) - {b for _, b in perm})
        real = np.zeros(n, bool)
        real[[b for _, b in perm]] = True
        got = jax.lax.ppermute(x, axes, perm=perm + list(zip(srcs, dsts)))
        keep = jnp.asarray(real)[jax.lax.axis_index(axes)]
        return jax.tree.map(lambda g: jnp.where(keep, g, jnp.zeros_like(g)), got)
    # Workers split over (device, local) axes: JAX's ppermute cannot mix a mesh axis
    # with a vmapped one, so gather and pick the source (same result, simulated).
    n = axis_size(axis_name)
    src = np.full(n, -1)
    for a, b in perm:
        src[b] = a
    me = axis_index(axis_name)
    has = jnp.asarray(src >= 0)[me]
    pick = jnp.asarray(np.maximum(src, 0))[me]
    return jax.tree.map(lambda g: jnp.where(has, g[pick], jnp.zeros_like(g[0])), _gather(x, axis_name))


def axis_size(axis_name: str = AXIS) -> int:
    """Number of workers n on the logical worker axis."""
    axes = _axes(axis_name)
    if isinstance(axes, str):
        return jax.lax.axis_size(axes)
    return jax.lax.axis_size(axes[0]) * jax.lax.axis_size(axes[1])


def axis_index(axis_name: str = AXIS) -> jax.Array:
    """This worker's index in [0, n)."""
    return jax.lax.axis_index(_axes(axis_name))
