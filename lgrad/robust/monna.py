r"""MoNNA and decentralized robust learning as an optax transformation.

Design: a decentralized rule is a ``GradientTransformationExtraArgs`` whose
``update(grads, state, params)`` is called *per worker* inside the worker axis
(under :func:`lgrad.distributed.run_workers` or ``make_program``). It runs a
*local* optax transformation (for MoNNA: Polyak momentum then ``-lr``), sends the
half-step :math:`\theta_i^{t+1/2} = \theta_i^t + u_i` to every node
(``comm.all_gather``), mixes what it received with a robust rule and returns
``updates = mixed - params`` so ``optax.apply_updates`` gives the new parameters.
It composes with any optax local rule (``optax.chain``, schedules, clipping) and
any aggregator of :mod:`lgrad.robust` (``mix=lambda x, i: ...``). This is the
optax API rather than a fedjax-style ``init/apply`` pair because the local step
*is* an optax transform and users already hold ``optax`` states and loops.

MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, ICML 2023,
Algorithm 1), at honest node i with f the number of Byzantine nodes tolerated:

.. math::

    m_i^t &= \beta m_i^{t-1} + (1-\beta) g_i^t, \qquad m_i^0 = 0,\\
    \theta_i^{t+1/2} &= \theta_i^t - \gamma\, m_i^t,\\
    \theta_i^{t+1} &= \mathrm{NNA}_f\big(\theta_1^{t+1/2}, \dots, \theta_n^{t+1/2};\ i\big),

NNA = mean of the n−f received vectors nearest to node i's own (own included).
``beta=0`` is plain NNA (D-SGD with NNA mixing).

Simulated Byzantine nodes (``byzantine=`` a static tuple of worker indices): their
rows of the received matrix are replaced, identically for every receiver
(omniscient attacker, complete graph). With ``attack=None`` they send their own
honest-protocol vector (data-level attacks such as label flipping); otherwise
``attack(honest_updates) -> (d,)`` (e.g. :func:`lgrad.robust.attacks.alie`) is
applied to the honest nodes' local updates :math:`u_j = \theta_j^{t+1/2} - \theta_j^t`
and every Byzantine node sends :math:`\bar\theta^t_{\text{honest}} + a`
(``attack_on="updates"``, default: the gradient-space attacks of the paper moved to
parameters), or ``attack`` is applied to the honest half-steps themselves
(``attack_on="params"``). The attacker's omniscient view costs an extra
all-gather of u that ``comm.counting`` records (simulation only).

Example (n = 4 workers, f = 1, one worker sends ALIE):

>>> import jax, jax.numpy as jnp, optax
>>> from lgrad import robust
>>> from lgrad.distributed import run_workers
>>> tx = robust.monna(0.1, f=1, byzantine=(3,), attack=robust.attacks.alie)
>>> params = jnp.zeros((4, 3))
>>> grads = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
>>> def step(p, g):
...     s = tx.init(p)
...     u, s = tx.update(g, s, p)
...     return optax.apply_updates(p, u)
>>> run_workers(step, params, grads, n_workers=4).shape
(4, 3)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lgrad._validation import check_in_interval, check_int, check_learning_rate
from lgrad.distributed import comm
from lgrad.robust import aggregators as agg

__all__ = ["DecentralizedState", "decentralized", "monna", "nna_mixing", "aggregator_mixing"]


class DecentralizedState(NamedTuple):
    """State of :func:`decentralized`: the local transformation's state."""

    local: optax.OptState


def nna_mixing(f: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``mix(x, i) = nna(x, f, i)`` (MoNNA's mixing)."""
    return lambda x, i: agg.nna(x, f, i)


def aggregator_mixing(aggregator: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Every node takes the same ``aggregator(x)`` of what it received (e.g.
    ``robust.mean`` = D-SGD averaging on the complete graph, trimmed mean, ...)."""
    return lambda x, i: aggregator(x)


def decentralized(
    local: optax.GradientTransformation,
    mix: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    byzantine: Sequence[int] = (),
    attack: Callable[[jax.Array], jax.Array] | None = None,
    attack_on: str = "updates",
    axis_name: str = comm.AXIS,
) -> optax.GradientTransformationExtraArgs:
    """Local step with ``local``, exchange of half-steps, robust ``mix(x, i)``.

    Must run per worker inside the worker axis; see the module docstring.
    """
    byz = tuple(int(b) for b in byzantine)
    if len(set(byz)) != len(byz) or any(b < 0 for b in byz):
        raise ValueError(f"byzantine must be distinct non-negative worker indices, got {byzantine!r}")
    if attack_on not in ("updates", "params"):
        raise ValueError(f"attack_on must be 'updates' or 'params', got {attack_on!r}")
    local = optax.with_extra_args_support(local)

    def init_fn(params):
        return DecentralizedState(local.init(params))

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("decentralized rules need params (they mix parameters)")
        u, local_state = local.update(updates, state.local, params, **extra)
        half = optax.apply_updates(params, u)
        flat_half, unravel = ravel_pytree(half)
        x = comm.all_gather(flat_half, axis_name)
        n = x.shape[0]
        if byz:
            if max(byz) >= n:
                raise ValueError(f"byzantine index {max(byz)} out of range for {n} workers")
            honest = np.setdiff1d(np.arange(n), np.asarray(byz))
            if attack is not None:
                if attack_on == "params":
                    a = attack(x[honest])
                else:
                    us = comm.all_gather(ravel_pytree(u)[0], axis_name)[honest]
                    base = jnp.mean(x[honest] - us, axis=0)
                    a = base + attack(us)
                x = x.at[np.asarray(byz)].set(jnp.broadcast_to(a.astype(x.dtype), (len(byz), x.shape[1])))
        i = comm.axis_index(axis_name)
        mixed = unravel(mix(x, i))
        new_updates = jax.tree.map(lambda m, p: (m - p).astype(p.dtype), mixed, params)
        return new_updates, DecentralizedState(local_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def monna(
    learning_rate: optax.ScalarOrSchedule,
    *,
    f: int,
    beta: float = 0.99,
    mix: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    byzantine: Sequence[int] = (),
    attack: Callable[[jax.Array], jax.Array] | None = None,
    attack_on: str = "updates",
    axis_name: str = comm.AXIS,
) -> optax.GradientTransformationExtraArgs:
    r"""MoNNA (Farhadkhani et al. 2023, Alg. 1): local Polyak momentum
    :math:`m \leftarrow \beta m + (1-\beta) g` (``optax.ema(beta, debias=False)``),
    :math:`\theta^{t+1/2} = \theta - \gamma m`, then NNA mixing with ``f``.

    ``beta=0`` is NNA alone; ``mix=`` swaps NNA for another rule (e.g.
    ``aggregator_mixing(robust.mean)`` = D-SGD with momentum) for comparisons.
    """
    check_learning_rate(learning_rate)
    check_in_interval(beta, "beta", 0.0, 1.0)
    f = check_int(f, "f", minimum=0)
    local = optax.chain(optax.ema(beta, debias=False), optax.scale_by_learning_rate(learning_rate))
    return decentralized(
        local,
        nna_mixing(f) if mix is None else mix,
        byzantine=byzantine,
        attack=attack,
        attack_on=attack_on,
        axis_name=axis_name,
    )
