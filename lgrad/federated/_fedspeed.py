r"""FedSpeed: prox-corrected local steps on a perturbed gradient (Sun et al. 2023).

Y. Sun, L. Shen, T. Huang, L. Ding, D. Tao, "FedSpeed: Larger Local Interval, Less
Communication Round, and Higher Generalization Accuracy", ICLR 2023; the project's
account: ``docs/papers/fedspeed-heterogeneity.md``.

Client :math:`i` holds a correction :math:`\hat g_i` (persistent, zero at first) and,
from the server model :math:`x^t`, takes K local steps :math:`x_0 = x^t`:

.. math::

    g_1 &= \nabla f_i(x_k), \quad
    \tilde g = (1-\alpha) g_1 + \alpha \nabla f_i\big(x_k + \rho\, g_1/\|g_1\|\big)
      \quad (\text{:func:`lgrad.optim._sam.perturbed_gradient`}),\\
    x_{k+1} &= x_k - \eta\,\big(\tilde g - \hat g_i + (x_k - x^t)/\lambda\big),

then :math:`\hat g_i \leftarrow \hat g_i - (x_K - x^t)/\lambda`. The server averages

* ``aggregation="paper"``: :math:`x^{t+1} = \frac1{|S|}\sum_{i\in S} (x_{i,K} - \lambda \hat g_i)`
  (the client sends :math:`x_{i,K} - \lambda\hat g_i - x^t`);
* ``aggregation="code"`` (the authors' code): the client sends
  :math:`\Delta_i = x_{i,K} - x^t`; the server keeps :math:`h_j = -\lambda \hat g_j` of
  *every* client (:math:`h_i \leftarrow h_i + \Delta_i` for :math:`i \in S`) and sets
  :math:`x^{t+1} = x^t + \frac1{|S|}\sum_{i\in S}\Delta_i + \frac1n\sum_{j=1}^n h_j`.
  This equals the paper's rule under full participation only.

Both are :func:`lgrad.federated.server_algorithm` with a :func:`fedspeed_client` and
(code form) :func:`fedspeed_aggregator`; :func:`fedspeed` builds either.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from lgrad._validation import check_in_interval, check_int, check_learning_rate, check_nonnegative, check_positive
from lgrad.distributed import comm
from lgrad.federated._algorithm import (
    Aggregator,
    ClientUpdate,
    FederatedAlgorithm,
    _default_batches,
    server_algorithm,
)
from lgrad.optim._sam import perturbed_gradient

__all__ = ["FedSpeedClientState", "fedspeed_client", "fedspeed_aggregator", "fedspeed", "AGGREGATIONS"]

AGGREGATIONS = ("paper", "code")


class FedSpeedClientState(NamedTuple):
    """One client's persistent state: the correction :math:`\\hat g_i` (params' pytree)."""

    correction: Any


def _check(learning_rate, lam, rho, alpha, aggregation) -> None:
    check_learning_rate(learning_rate)
    check_positive(lam, "lam")
    check_nonnegative(rho, "rho")
    check_in_interval(alpha, "alpha", 0.0, 1.0, low_closed=True, high_closed=True)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def fedspeed_client(
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    learning_rate: float,
    local_steps: int,
    lam: float = 10.0,
    rho: float = 0.1,
    alpha: float = 1.0,
    batch_size: int | None = None,
    batch_fn: Callable[[Any, jax.Array, jax.Array], Any] | None = None,
    aggregation: str = "paper",
) -> ClientUpdate:
    r"""FedSpeed's client (module docstring): K = ``local_steps`` prox-corrected steps
    on the perturbed gradient, then the correction update.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      learning_rate: local step :math:`\eta`.
      local_steps: K.
      lam: :math:`\lambda > 0` (the authors' code: :math:`1/\lambda = 0.1`).
      rho: ascent radius :math:`\rho \ge 0` (paper 0.1; 0 drops the perturbation).
      alpha: :math:`\alpha \in [0, 1]` (the authors' code uses 1).
      batch_size, batch_fn: minibatches as in :func:`lgrad.federated.local_training`
        (``None``: the whole shard, i.e. full-batch gradients).
      aggregation: ``"paper"`` (send :math:`x_K - \lambda \hat g_i - x^t`) or ``"code"``
        (send :math:`x_K - x^t`; pair with :func:`fedspeed_aggregator`).

    Metrics: ``loss`` (mean minibatch loss over the K steps).
    """
    _check(learning_rate, lam, rho, alpha, aggregation)
    k_steps = check_int(local_steps, "local_steps", minimum=1)
    batches = _default_batches(batch_size, batch_fn)

    def init(params):
        return FedSpeedClientState(jax.tree.map(jnp.zeros_like, params))

    def apply(server_params, state, arrays, count, key):
        ghat = state.correction

        def step(x, k):
            objective = lambda q: loss_fn(q, batches(arrays, count, k))  # noqa: E731
            loss, g1 = jax.value_and_grad(objective)(x)
            gt = perturbed_gradient(objective, x, g1, rho=rho, alpha=alpha)
            x = jax.tree.map(lambda p, g, c, p0: p - learning_rate * (g - c + (p - p0) / lam),
                             x, gt, ghat, server_params)
            return x, loss

        x_k, losses = jax.lax.scan(step, server_params, jax.random.split(key, k_steps))
        delta = jax.tree.map(lambda a, b: a - b, x_k, server_params)
        ghat = jax.tree.map(lambda c, d: c - d / lam, ghat, delta)
        message = delta if aggregation == "code" else jax.tree.map(lambda d, c: d - lam * c, delta, ghat)
        return message, FedSpeedClientState(ghat), {"loss": jnp.mean(losses)}

    return ClientUpdate(init, apply)


def fedspeed_aggregator() -> Aggregator:
    r"""The authors' code's server (``aggregation="code"``): state ``h`` (n, d), the
    :math:`-\lambda \hat g_j` of every client; messages :math:`\Delta_i = x_{i,K} - x^t`.

    .. math::

        h_i \leftarrow h_i + \Delta_i \ (i \in S), \qquad
        \bar\Delta = \frac{\sum_{i\in S} w_i \Delta_i}{\sum_{i\in S} w_i} + \frac1n \sum_{j=1}^n h_j .

    With ``weighted=False`` (the paper's and the code's uniform mean) and full
    participation :math:`\bar\Delta` equals the paper's aggregate."""

    def init(n, d, dtype):
        return jnp.zeros((n, d), dtype)

    def update(h, x, weights, clients, key):
        del key
        h = h.at[clients].add(x)
        w = weights.astype(x.dtype)
        return (w[:, None] * x).sum(0) / w.sum() + h.mean(0), h, {}

    return Aggregator(init, update)


def fedspeed(
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    n_clients: int,
    learning_rate: float,
    local_steps: int,
    lam: float = 10.0,
    rho: float = 0.1,
    alpha: float = 1.0,
    participation: float = 1.0,
    aggregation: str = "paper",
    batch_size: int | None = None,
    batch_fn: Callable[[Any, jax.Array, jax.Array], Any] | None = None,
    backend: str = "vmap",
    axis_name: str = comm.AXIS,
    devices: Sequence[Any] | None = None,
) -> FederatedAlgorithm:
    r"""FedSpeed as a :class:`lgrad.federated.FederatedAlgorithm`: the server algorithm
    with :func:`fedspeed_client`, uniform weights, server step 1, and for
    ``aggregation="code"`` the :func:`fedspeed_aggregator` (equal to the paper's rule
    only under full participation, ``participation=1``). Options as in
    :func:`fedspeed_client` and :func:`lgrad.federated.server_algorithm`."""
    client = fedspeed_client(loss_fn, learning_rate=learning_rate, local_steps=local_steps, lam=lam, rho=rho,
                             alpha=alpha, batch_size=batch_size, batch_fn=batch_fn, aggregation=aggregation)
    aggregator = fedspeed_aggregator() if aggregation == "code" else None
    return server_algorithm(client, n_clients=n_clients, aggregator=aggregator, participation=participation,
                            weighted=False, backend=backend, axis_name=axis_name, devices=devices)
