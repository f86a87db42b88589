r"""Ordered learning on federated clients: curriculum, anti-curriculum, random order,
with linear pacing, and client selection by difficulty.

Following "When Do Curricula Work in Federated Learning?" (Vahidian et al., ICCV
2023; the project's account: ``docs/papers/fl-curricula.md``). Each example has a
difficulty score (e.g. its loss under an expert model trained centrally). Client
:math:`i` sorts its rows by score -- ascending (``"curriculum"``), descending
(``"anti"``) or at random (``"random"``) -- and at round :math:`t` of :math:`T`
draws its minibatches from the first :math:`\lceil g(t)\, n_i \rceil` rows, with the
linear pacing

.. math::

    g(t) = \min\Big(1,\; b + (1 - b)\,\frac{t}{a\,T}\Big)

(:math:`b` = ``start``, the fraction used at first; :math:`a` = ``full_at``, the
fraction of training after which all data is used; the paper's values are not
verified: 0.2 and 0.8 are our defaults). Client selection by difficulty
(:func:`difficulty_selection`): at round :math:`t` only the
:math:`\lceil g(t)\, n\rceil` clients with the lowest mean score are averaged.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_in_interval, check_int
from lgrad.federated._algorithm import Aggregator, ClientUpdate
from lgrad.federated._data import client_minibatch

__all__ = ["ORDERINGS", "linear_pacing", "order_by_difficulty", "curriculum_training", "difficulty_selection"]

ORDERINGS = ("curriculum", "anti", "random")


def linear_pacing(*, rounds: int, start: float = 0.2, full_at: float = 0.8) -> Callable[[jax.Array], jax.Array]:
    r"""``g(t)`` of the module docstring for :math:`T` = ``rounds`` (t = rounds done, from 0)."""
    total = check_int(rounds, "rounds", minimum=1)
    check_in_interval(start, "start", 0.0, 1.0, low_closed=False, high_closed=True)
    check_in_interval(full_at, "full_at", 0.0, 1.0, low_closed=False, high_closed=True)

    def pace(t):
        return jnp.minimum(1.0, start + (1.0 - start) * jnp.asarray(t, jnp.float32) / (full_at * total))

    return pace


def order_by_difficulty(parts: Sequence[np.ndarray], scores: np.ndarray, ordering: str, *, seed: int = 0) -> list[np.ndarray]:
    """Each client's row indices sorted by ``scores`` (ascending for ``"curriculum"``,
    descending for ``"anti"``, a seeded permutation for ``"random"``); ties keep the
    index order (stable sort)."""
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}, got {ordering!r}")
    scores = np.asarray(scores)
    rng = np.random.default_rng(seed)
    out = []
    for p in parts:
        p = np.asarray(p)
        if ordering == "random":
            out.append(p[rng.permutation(len(p))])
        else:
            key = scores[p] if ordering == "curriculum" else -scores[p]
            out.append(p[np.argsort(key, kind="stable")])
    return out


def curriculum_training(
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    local_steps: int,
    batch_size: int,
    pacing: Callable[[jax.Array], jax.Array],
) -> ClientUpdate:
    r"""K = ``local_steps`` steps of ``tx`` (fresh state each round) on minibatches of
    ``batch_size`` drawn from the first :math:`\lceil g(t)\,n_i\rceil` rows of the
    client's (ordered) shard; :math:`t` is the client's persistent count of rounds
    taken part in. Message: the model change. Metrics: ``loss``, ``data_fraction``."""
    k_steps = check_int(local_steps, "local_steps", minimum=1)
    bs = check_int(batch_size, "batch_size", minimum=1)
    tx = optax.with_extra_args_support(tx)

    def apply(server_params, rounds_done, arrays, count, key):
        frac = pacing(rounds_done)
        # ceil with a 1e-4 tolerance: g(t) n a rounding error above an integer must not add a row
        avail = jnp.clip(jnp.ceil(frac * count - 1e-4).astype(jnp.int32), 1, count)

        def step(carry, k):
            p, s = carry
            objective = lambda q: loss_fn(q, client_minibatch(arrays, avail, k, bs))  # noqa: E731
            loss, g = jax.value_and_grad(objective)(p)
            u, s = tx.update(g, s, p, loss_fn=objective)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses = jax.lax.scan(step, (server_params, tx.init(server_params)), jax.random.split(key, k_steps))
        delta = jax.tree.map(lambda a, b: (a - b).astype(b.dtype), p, server_params)
        return delta, rounds_done + 1, {"loss": jnp.mean(losses), "data_fraction": avail / count}

    return ClientUpdate(lambda params: jnp.zeros([], jnp.int32), apply)


def difficulty_selection(client_scores: Any, pacing: Callable[[jax.Array], jax.Array]) -> Aggregator:
    r"""Weighted mean over the sampled clients among the :math:`\lceil g(t)\, n\rceil`
    with the lowest ``client_scores`` (e.g. their mean example difficulty); all sampled
    clients if none of them qualifies. State: the round count. Metric: ``selected``."""
    scores = jnp.asarray(client_scores)  # may be traced (e.g. vmapped over settings)
    rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)  # rank[i]: position of client i, easiest first
    n = scores.shape[0]

    def update(t, x, weights, clients, key):
        del key
        allowed = rank[clients] < jnp.ceil(pacing(t) * n - 1e-4)
        w = weights.astype(x.dtype) * jnp.where(jnp.any(allowed), allowed, True).astype(x.dtype)
        return (w[:, None] * x).sum(0) / w.sum(), t + 1, {"selected": jnp.sum(w > 0)}

    return Aggregator(lambda n_, d, dtype: jnp.zeros([], jnp.int32), update)

