r"""Decentralized learning: a local optax step, then a ``mix`` over the graph.

One transformation covers D-SGD, robust D-SGD and MoNNA on any topology: each
worker runs a *local* optax transformation, forms its half-step
:math:`\theta_i^{t+1/2} = \theta_i^t + u_i`, and replaces it by a **mix** of what
its neighbours sent:

.. math::

    \theta_i^{t+1} = \mathrm{mix}_i\big(\{\theta_j^{t+1/2} : j \in N(i) \cup \{i\}\}\big).

A mix is per-worker code ``mix(v, axis_name) -> v'`` on the flattened half-step
``v`` (shape ``(d,)``) that uses the collectives of :mod:`lgrad.distributed.comm`, so
its traffic is counted:

* :func:`gossip_mix` ``(W)`` -- :math:`\sum_j W_{ij}\theta_j` with one ``ppermute`` per
  round of an edge colouring (D-SGD, Lian et al. 2017; Koloskova et al. 2020);
  bytes: degree x ``nbytes(v)``.
* :func:`neighbour_mix` ``(rule, adjacency)`` -- gathers the neighbours' vectors
  (``all_gather`` on the complete graph, ``ppermute`` rounds on a regular graph)
  and applies a robust ``rule(x, i)`` to the stack, ``i`` the worker's own row:
  NNA (MoNNA), trimmed mean, geometric median, ... (robust D-SGD).

Simulated Byzantine workers (``byzantine=`` static worker indices) *send* an
attack vector instead of their half-step, the same vector to every neighbour
(an omniscient attacker). With ``attack=None`` they follow the protocol on their
own (e.g. label-flipped) data. Otherwise ``attack(honest) -> (d,)`` is applied to
the honest workers' local updates :math:`u_j` and the Byzantine workers send
:math:`\bar\theta^t_{\mathrm{honest}} + \mathrm{attack}(u)` (``attack_on="updates"``, the
gradient-space attacks moved to parameters), or ``attack`` is applied to the
honest half-steps themselves (``attack_on="params"``). The attacker's omniscient
view is simulation: its gathers are not counted as traffic.

The update must run per worker under the worker axis (inside
:func:`lgrad.distributed.run_workers`, ``make_program`` or
:func:`lgrad.federated.worker_algorithm`). The account of the papers is in
``docs/papers/dsgd-topology.md`` and ``docs/papers/monna-robustness.md``.

>>> import jax, jax.numpy as jnp, optax
>>> from lgrad import federated
>>> from lgrad.distributed import run_workers, topology
>>> W = topology.metropolis_hastings(topology.ring(4))
>>> tx = federated.decentralized(optax.sgd(0.1), federated.gossip_mix(W))
>>> def step(p, g):
...     u, _ = tx.update(g, tx.init(p), p)
...     return optax.apply_updates(p, u)
>>> run_workers(step, jnp.arange(4.0)[:, None], jnp.zeros((4, 1)), n_workers=4).ravel()
Array([1.3333334, 1.       , 2.       , 1.6666666], dtype=float32)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lgrad.distributed import comm, topology

__all__ = ["DecentralizedState", "Mix", "decentralized", "gossip_mix", "mean_over_workers", "neighbour_mix"]

Mix = Callable[[jax.Array, str], jax.Array]
"""Per-worker mixing ``mix(v, axis_name) -> v'`` of flattened half-steps."""

Rule = Callable[[jax.Array, jax.Array], jax.Array]
"""A robust rule ``rule(x, i) -> (d,)`` on a stack ``x`` (k, d) whose row ``i`` is own."""


class DecentralizedState(NamedTuple):
    """State of :func:`decentralized`: the local transformation's state."""

    local: optax.OptState


def gossip_mix(w: Any, *, method: str = "ppermute") -> Mix:
    r"""Linear gossip :math:`v_i \leftarrow \sum_j W_{ij} v_j` with a doubly stochastic ``w``
    (e.g. :func:`lgrad.distributed.topology.metropolis_hastings`)."""
    if method not in ("ppermute", "all_gather"):
        raise ValueError(f"method must be 'ppermute' or 'all_gather', got {method!r}")
    plan = topology.gossip_plan(w)
    return lambda v, axis_name: topology.gossip(v, plan, axis_name=axis_name, method=method)


def _regular_rounds(adjacency: Any) -> tuple[tuple[tuple[int, int], ...], ...]:
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency must be a square matrix, got shape {a.shape}")
    degrees = a.astype(bool).sum(1)
    if degrees.min() != degrees.max() or degrees.min() < 1:
        raise ValueError(
            f"neighbour_mix needs a connected regular graph (every node with the same degree >= 1); "
            f"degrees range {int(degrees.min())}..{int(degrees.max())}"
        )
    plan = topology.gossip_plan(topology.metropolis_hastings(a))
    return plan.perms


def neighbour_mix(rule: Rule, adjacency: Any = None) -> Mix:
    """Robust mixing over each worker's neighbours and itself.

    Args:
      rule: ``rule(x, i) -> (d,)`` on the stacked received vectors ``x`` with the
        worker's own vector in row ``i`` (e.g. ``lambda x, i: robust.nna(x, f, i)``;
        a rule that ignores ``i``, such as ``robust.trimmed_mean``, works too).
      adjacency: ``None`` for the complete graph (one ``all_gather``, rows in worker
        order, ``i`` = the worker index), or a symmetric 0/1 adjacency matrix of a
        *regular* graph (ring, torus, ...): own vector in row 0, then one row per
        ``ppermute`` round of the graph's edge colouring (degree rows).
    """
    if adjacency is None:

        def mix_all(v, axis_name):
            return rule(comm.all_gather(v, axis_name), comm.axis_index(axis_name))

        return mix_all
    perms = _regular_rounds(adjacency)
    n = np.shape(adjacency)[0]

    def mix_graph(v, axis_name):
        if comm.axis_size(axis_name) != n:
            raise ValueError(f"the graph has {n} nodes but there are {comm.axis_size(axis_name)} workers")
        rows = [v] + [comm.ppermute(v, perm, axis_name) for perm in perms]
        return rule(jnp.stack(rows), jnp.zeros((), jnp.int32))

    return mix_graph


def _check_byzantine(byzantine: Sequence[int], attack_on: str) -> tuple[int, ...]:
    byz = tuple(int(b) for b in byzantine)
    if len(set(byz)) != len(byz) or any(b < 0 for b in byz):
        raise ValueError(f"byzantine must be distinct non-negative worker indices, got {byzantine!r}")
    if attack_on not in ("updates", "params"):
        raise ValueError(f"attack_on must be 'updates' or 'params', got {attack_on!r}")
    return byz


def _attack_vector(attack, attack_on, byz, flat_half, flat_u, axis_name):
    """What every Byzantine worker sends (simulation: the gathers are uncounted)."""
    with comm.not_counted():
        x = comm.all_gather(flat_half, axis_name)
        n = x.shape[0]
        if max(byz) >= n:
            raise ValueError(f"byzantine index {max(byz)} out of range for {n} workers")
        honest = np.setdiff1d(np.arange(n), np.asarray(byz))
        if attack_on == "params":
            return attack(x[honest])
        us = comm.all_gather(flat_u, axis_name)[honest]
        return jnp.mean(x[honest] - us, axis=0) + attack(us)


def decentralized(
    local: optax.GradientTransformation,
    mix: Mix,
    *,
    byzantine: Sequence[int] = (),
    attack: Callable[[jax.Array], jax.Array] | None = None,
    attack_on: str = "updates",
    axis_name: str = comm.AXIS,
) -> optax.GradientTransformationExtraArgs:
    """Local step with ``local``, then ``mix`` of the half-steps (see the module doc).

    Returns ``updates = mixed - params``, so ``optax.apply_updates`` yields the mixed
    parameters. Extra keyword arguments of ``update`` go to ``local``.
    ``optax.inject_hyperparams(decentralized, static_args=("mix",))`` wraps it (``mix``
    is a function that must not be read as a schedule); it has no numeric
    hyperparameter of its own: inject the local transformation's instead.
    """
    byz = _check_byzantine(byzantine, attack_on)
    if not callable(mix):
        raise ValueError(f"mix must be a callable mix(v, axis_name), got {mix!r}")
    local = optax.with_extra_args_support(local)

    def init_fn(params):
        return DecentralizedState(local.init(params))

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("decentralized rules need params (they mix parameters)")
        u, local_state = local.update(updates, state.local, params, **extra)
        flat_half, unravel = ravel_pytree(optax.apply_updates(params, u))
        send = flat_half
        if byz and attack is not None:
            a = _attack_vector(attack, attack_on, byz, flat_half, ravel_pytree(u)[0], axis_name)
            is_byz = jnp.isin(comm.axis_index(axis_name), jnp.asarray(byz))
            send = jnp.where(is_byz, a.astype(flat_half.dtype), flat_half)
        mixed = unravel(mix(send, axis_name))
        new_updates = jax.tree.map(lambda m, p: (m - p).astype(p.dtype), mixed, params)
        return new_updates, DecentralizedState(local_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mean_over_workers(*, axis_name: str = comm.AXIS) -> optax.GradientTransformation:
    r"""Average the updates over the worker axis (one counted ``comm.pmean``):
    :math:`u \leftarrow \frac1n \sum_i u_i`. Chained before a local optimizer it is
    synchronous data-parallel training, e.g. dense momentum SGD:
    ``optax.chain(mean_over_workers(), optax.sgd(lr, momentum=0.9))``.
    Runs per worker under the worker axis; ``axis_name=None`` is the identity.
    It has no hyperparameter: ``optax.inject_hyperparams(mean_over_workers)()`` needs
    no ``static_args``."""

    def update_fn(updates, state, params=None):
        del params
        return (updates if axis_name is None else comm.pmean(updates, axis_name)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)

