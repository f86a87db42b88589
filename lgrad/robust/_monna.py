r"""MoNNA: robust decentralized learning as an optax transformation.

MoNNA is :func:`lgrad.federated.decentralized` with a Polyak-momentum local step
and nearest-neighbour-averaging mixing (:func:`lgrad.federated.neighbour_mix`): a
``GradientTransformationExtraArgs`` whose ``update(grads, state, params)`` runs
*per worker* under the worker axis (inside :func:`lgrad.distributed.run_workers`,
``make_program`` or :func:`lgrad.federated.worker_algorithm`) and returns
``updates = mixed - params``. Any other rule of :mod:`lgrad.robust` can replace
NNA (``rule=``), on the complete graph or any regular graph (``adjacency=``).

MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, ICML 2023,
Algorithm 1), at honest node i with f the number of Byzantine nodes tolerated:

.. math::

    m_i^t &= \beta m_i^{t-1} + (1-\beta) g_i^t, \qquad m_i^0 = 0,\\
    \theta_i^{t+1/2} &= \theta_i^t - \gamma\, m_i^t,\\
    \theta_i^{t+1} &= \mathrm{NNA}_f\big(\theta_1^{t+1/2}, \dots, \theta_n^{t+1/2};\ i\big),

NNA = mean of the n−f received vectors nearest to node i's own (own included).
``beta=0`` is plain NNA (D-SGD with NNA mixing).

Simulated Byzantine nodes (``byzantine=`` a static tuple of worker indices) send
an attack vector instead of their half-step, the same to every neighbour
(omniscient attacker); see :func:`lgrad.federated.decentralized`. With
``attack=None`` they follow the protocol on their own data (label flipping);
otherwise ``attack(honest_updates) -> (d,)`` (e.g. :func:`lgrad.robust.attacks.alie`)
acts on the honest nodes' local updates (``attack_on="updates"``) or half-steps
(``attack_on="params"``).

There is no ``scale_by_monna``: the learning rate acts *before* the (nonlinear)
mixing, so MoNNA cannot be split into a rescaling followed by ``-lr``.
``optax.inject_hyperparams(monna, static_args=("f",))`` injects ``learning_rate`` and
``beta``.
The account of the paper: ``docs/papers/monna-robustness.md``.

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

from typing import Any, Callable, Sequence

import jax
import optax

from lgrad._validation import check_in_interval, check_int, check_learning_rate
from lgrad.distributed import comm
from lgrad.federated import decentralized, neighbour_mix
from lgrad.robust import aggregators as agg

__all__ = ["monna", "nna_rule", "aggregator_rule"]

TRANSFORMS = ("monna",)


def nna_rule(f: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``rule(x, i) = nna(x, f, i)`` (MoNNA's mixing rule); MoNNA's guarantee needs
    an honest majority of the rows mixed, so ``2f >= `` rows raises ``ValueError``."""
    f = check_int(f, "f", minimum=0)

    def rule(x, i):
        if 2 * f >= x.shape[0]:
            raise ValueError(f"f must satisfy 2f < the {x.shape[0]} vectors mixed per node, got f={f}")
        return agg.nna(x, f, i)

    return rule


def aggregator_rule(aggregator: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Every node takes the same ``aggregator(x)`` of what it received (e.g.
    ``robust.mean`` = D-SGD averaging on the complete graph, trimmed mean, ...)."""
    return lambda x, i: aggregator(x)


def monna(
    learning_rate: optax.ScalarOrSchedule,
    *,
    f: int,
    beta: float = 0.99,
    rule: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    adjacency: Any = None,
    byzantine: Sequence[int] = (),
    attack: Callable[[jax.Array], jax.Array] | None = None,
    attack_on: str = "updates",
    axis_name: str = comm.AXIS,
) -> optax.GradientTransformationExtraArgs:
    r"""MoNNA (Farhadkhani et al. 2023, Alg. 1): local Polyak momentum
    :math:`m \leftarrow \beta m + (1-\beta) g` (``optax.ema(beta, debias=False)``),
    :math:`\theta^{t+1/2} = \theta - \gamma m`, then NNA mixing with ``f``.

    Args:
      learning_rate: :math:`\gamma` (number or schedule).
      f: Byzantine nodes tolerated by NNA (``2f < `` the number of rows mixed).
      beta: momentum :math:`\beta \in [0, 1)`; 0 is NNA alone.
      rule: replaces NNA by another ``rule(x, i)`` (e.g. ``aggregator_rule(robust.mean)``
        = D-SGD with momentum) for comparisons.
      adjacency: ``None`` (complete graph) or a regular graph's adjacency matrix.
      byzantine, attack, attack_on: simulated Byzantine nodes (module docstring).
      axis_name: the worker axis.

    ``optax.inject_hyperparams(monna, static_args=("f",))`` injects ``learning_rate``
    and ``beta`` (``f`` is an integer that fixes the rule, so it stays static; the
    callables and tuples are static anyway).
    """
    check_learning_rate(learning_rate)
    check_in_interval(beta, "beta", 0.0, 1.0)
    f = check_int(f, "f", minimum=0)
    local = optax.chain(optax.ema(beta, debias=False), optax.scale_by_learning_rate(learning_rate))
    return decentralized(
        local,
        neighbour_mix(nna_rule(f) if rule is None else rule, adjacency),
        byzantine=byzantine,
        attack=attack,
        attack_on=attack_on,
        axis_name=axis_name,
    )
