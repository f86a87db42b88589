"""Run one per-worker function for n workers, three ways.

Per-worker code is written once against the named axis ``"workers"`` with the
collectives of :mod:`lgrad.distributed.comm`. ``run_workers`` executes it with

* ``backend="vmap"``: all n workers on one device, ``jax.vmap(axis_name=...)``;
* ``backend="mesh"``: ``jax.shard_map`` over a 1-D mesh of the available devices
  (all processes' devices under ``jax.distributed``), each device holding n / D
  workers (vmapped inside the shard); inputs are placed with the matching
  ``NamedSharding`` first (jax 0.10's shard_map does not reshard);
* ``backend="pmap"``: an alias of ``mesh`` for code built around ``jax.pmap``
  (pmap is in maintenance mode and itself implemented on shard_map).

Per-worker code must use the collectives of :mod:`lgrad.distributed.comm` (not
``jax.lax`` directly): with several workers per device they span both the mesh
axis and the in-device worker axis.

Inputs with a leading worker axis of size n are split over workers (``in_axes=0``);
``in_axes=None`` broadcasts an argument to every worker. Outputs carry the worker
axis first.

Multi-process (``jax.distributed``, see :mod:`lgrad.distributed.multiprocess`): with
``backend="mesh"`` the mesh spans every process's devices. Each process calls
``run_workers`` with the same global inputs; they are placed with :func:`place`
(``jax.make_array_from_callback``: each process materialises only its own shards)
and the outputs come back replicated, so every process reads the full result.
Inside your own jitted loop (``make_program``), place the initial carry with
:func:`place` and reduce per-worker metrics to scalars inside the step (replicated
arrays are readable on every process; worker-sharded ones are not).
"""
from __future__ import annotations


from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgrad.distributed.comm import AXIS, split_axis

__all__ = ["BACKENDS", "place", "run_workers", "spans_processes", "worker_mesh"]

BACKENDS = ("vmap", "mesh", "pmap")


def worker_mesh(n_workers: int, axis_name: str = AXIS, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) for ``n_workers`` workers."""
    devices = list(jax.devices() if devices is None else devices)
    d = len(devices)
    if n_workers % d:
        raise ValueError(
            f"n_workers ({n_workers}) must be a multiple of the device count ({d}); "
            f"use {d * max(1, round(n_workers / d))} workers or fewer devices"
        )
    return jax.sharding.Mesh(np.asarray(devices), (axis_name,))


def _check_leading(args: tuple, in_axes: tuple, n: int) -> None:
    for i, (a, ax) in enumerate(zip(args, in_axes)):
        if ax is None:
            continue
        for leaf in jax.tree.leaves(a):
            if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
                raise ValueError(
                    f"argument {i}: every leaf needs a leading worker axis of size {n}, got shape {np.shape(leaf)}"
                )


def run_workers(
    fn: Callable[..., Any],
    *args: Any,
    n_workers: int,
    backend: str = "vmap",
    in_axes: int | None | Sequence[int | None] = 0,
    axis_name: str = AXIS,
    devices: Sequence[Any] | None = None,
    jit: bool = True,
) -> Any:
    """Evaluate ``fn`` once per worker over the named axis and stack the results.

    Args:
      fn: per-worker function; sees one worker's slice of each argument and may call
        the collectives of :mod:`lgrad.distributed.comm` over ``axis_name``.
      *args: pytrees; with ``in_axes`` 0 their leaves have a leading axis of size
        ``n_workers``.
      n_workers: number of workers n (a multiple of the device count for ``mesh``).
      backend: ``"vmap"``, ``"mesh"`` or ``"pmap"``.
      in_axes: 0 (split) or None (broadcast), one for all or one per argument.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    axes = tuple(in_axes) if isinstance(in_axes, (list, tuple)) else (in_axes,) * len(args)
    if len(axes) != len(args):
        raise ValueError(f"in_axes has {len(axes)} entries for {len(args)} arguments")
    if any(a not in (0, None) for a in axes):
        raise ValueError("in_axes entries must be 0 or None")
    _check_leading(args, axes, n_workers)
    program = make_program(fn, n_workers=n_workers, backend=backend, in_axes=axes, axis_name=axis_name, devices=devices)
    if backend != "vmap":
        mesh = worker_mesh(n_workers, axis_name, devices)
        multi = spans_processes(mesh)
        args = tuple(
            place(a, NamedSharding(mesh, P(axis_name) if ax == 0 else P())) for a, ax in zip(args, axes)
        )
        if multi and jit:
            # Under jax.distributed the mesh spans other processes' devices; return
            # the outputs replicated so that every process can read them.
            return jax.jit(program, out_shardings=NamedSharding(mesh, P()))(*args)
    return (jax.jit(program) if jit else program)(*args)


def spans_processes(mesh: jax.sharding.Mesh) -> bool:
    """Whether ``mesh`` holds devices of other processes (under ``jax.distributed``)."""
    me = jax.process_index()
    return any(d.process_index != me for d in mesh.devices.flat)


def place(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Put a pytree of host values on ``sharding``, also when it spans processes.

    Every process passes the same global value; under ``jax.distributed`` each one
    builds only its addressable shards (``jax.make_array_from_callback``), so the
    result is one global ``jax.Array``. Leaves that already are global arrays are
    resharded with ``jax.device_put``.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(leaf, tree)


def make_program(
    fn: Callable[..., Any],
    *,
    n_workers: int,
    backend: str = "vmap",
    in_axes: Sequence[int | None],
    axis_name: str = AXIS,
    devices: Sequence[Any] | None = None,
) -> Callable[..., Any]:
    """The un-jitted program ``run_workers`` executes (to embed in a bigger jit/scan).

    Raises ``ValueError`` for a ``backend`` other than ``"vmap"``, ``"mesh"`` or ``"pmap"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    in_axes = tuple(in_axes)
    if backend == "vmap":
        return jax.vmap(fn, in_axes=in_axes, axis_name=axis_name, axis_size=n_workers)
    mesh = worker_mesh(n_workers, axis_name, devices)
    per_device = n_workers // mesh.devices.size

    local_axis = f"{axis_name}__local"

    def shard_body(*shard_args):
        # n / D workers on this device, vmapped over a second axis; lgrad's collectives
        # over ``axis_name`` then span (mesh axis, local axis) = all n workers.
        with split_axis(axis_name, axis_name, local_axis):
            return jax.vmap(fn, in_axes=in_axes, axis_name=local_axis, axis_size=per_device)(*shard_args)

    if per_device == 1:
        def shard_body(*shard_args):  # noqa: F811  (one worker per device: drop the size-1 axis)
            squeezed = tuple(
                jax.tree.map(lambda x: x[0], a) if ax == 0 else a for a, ax in zip(shard_args, in_axes)
            )
            out = fn(*squeezed)
            return jax.tree.map(lambda x: x[None], out)

    specs = tuple(P(axis_name) if ax == 0 else P() for ax in in_axes)
    return jax.shard_map(shard_body, mesh=mesh, in_specs=specs, out_specs=P(axis_name), check_vma=False)


