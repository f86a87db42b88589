r"""DADAO: decoupled accelerated decentralized asynchronous optimization, simulated.

Nabli & Oyallon, "DADAO: Decoupled Accelerated Decentralized Asynchronous
Optimization" (ICML 2023); the project's account is ``docs/papers/dadao-async.md``.
Every node :math:`i` holds :math:`(x, \tilde x, y, \tilde y, z, \tilde z)`. Between
its events the state follows the linear ODE (:math:`\nu = \mu/2`)

.. math::

   \dot x = \eta(\tilde x - x),\ \dot{\tilde x} = \eta(x - \tilde x),\
   \dot y = \alpha(\tilde y - y),\ \dot{\tilde y} = -\theta(\nu\tilde x + y + z),\
   \dot z = \alpha(\tilde z - z),\ \dot{\tilde z} = \tilde\alpha(z - \tilde z),

solved exactly (:math:`e^{M\Delta t}`), with :math:`\alpha = \frac14\sqrt{\nu/L}`,
:math:`\tilde\alpha = \eta = \frac18\sqrt{\nu/L}`, :math:`\theta = \frac12\sqrt{L/\nu}`.
A *gradient event* at node i (rate 1 per node) sets
:math:`g = \nabla f_i(x) - \nu x - \tilde y`, :math:`x \mathrel{-}= g/(4L)`,
:math:`\tilde x \mathrel{-}= g/(4\sqrt{L\nu})`, :math:`\tilde y \mathrel{+}= (\frac14\sqrt{\nu/L} + 1) g`.
A *communication event* on edge (i, j) (total rate :math:`\lambda = \sqrt{2\chi_1\chi_2}`,
uniform edge) sets :math:`p = (y+z)_i - (y+z)_j` and
:math:`z_{i/j} \mathrel{\mp}= p/2`, :math:`\tilde z_{i/j} \mathrel{\mp}= 2\chi_1^*\sqrt{L/\nu}\,p`,
:math:`\chi_1^* = \chi_1/\lambda`. :math:`\chi_1` is the inverse smallest positive
eigenvalue and :math:`\chi_2` the largest edge resistance
:math:`\frac12(e_i - e_j)^\top \Lambda^+ (e_i - e_j)` of :math:`\Lambda` = the graph
Laplacian over the number of edges. The events are sampled in advance and replayed
by one ``lax.scan``; :math:`\sum_i z_i = \sum_i \tilde z_i = 0` holds at all times.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_int, check_positive
from lgrad.distributed import topology
from lgrad.federated._algorithm import FederatedAlgorithm, worker_algorithm
from lgrad.federated._decentralized import decentralized, gossip_mix

__all__ = [
    "DADAOConstants", "DADAOEvents", "DADAOState", "dadao_constants", "dadao_graph", "dadao_init",
    "dadao_events", "dadao_simulate", "dsgd_baseline",
]


class DADAOConstants(NamedTuple):
    nu: float
    alpha: float
    alpha_tilde: float
    eta: float
    theta: float
    gamma: float  # 1/(4L)
    gamma_tilde: float  # 1/(4 sqrt(L nu))
    delta: float  # 1/4 sqrt(nu/L) + 1
    beta_tilde: float  # 2 chi_1* sqrt(L/nu)
    lam_mix: float  # sqrt(2 chi_1 chi_2)
    chi1: float
    chi2: float


class DADAOEvents(NamedTuple):
    """Pre-sampled events: times (N,), is_grad (N,), node a (N,), node b (N,) (b = a for gradients)."""

    times: jax.Array
    is_grad: jax.Array
    a: jax.Array
    b: jax.Array


class DADAOState(NamedTuple):
    s: jax.Array  # (n, 6, d): x, x~, y, y~, z, z~ per node, each at its own last event time
    t_last: jax.Array  # (n,)
    n_grad: jax.Array  # gradient events so far
    n_comm: jax.Array  # communication events (edge activations) so far


def dadao_graph(adjacency: Any) -> tuple[np.ndarray, float, float]:
    """``(edges (E, 2), chi_1, chi_2)`` of a connected undirected graph (Laplacian / E)."""
    a = np.asarray(adjacency, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.allclose(a, a.T):
        raise ValueError(f"adjacency must be a symmetric square matrix, got shape {a.shape}")
    if not topology.is_connected(a > 0):
        raise ValueError("adjacency must describe a connected graph")
    edges = np.array([(i, j) for i in range(len(a)) for j in range(i + 1, len(a)) if a[i, j] > 0])
    lap = (np.diag((a > 0).sum(1)) - (a > 0)) / len(edges)
    chi1 = 1.0 / np.linalg.eigvalsh(lap)[1]
    pinv = np.linalg.pinv(lap)
    diff = np.zeros((len(edges), len(a)))
    diff[np.arange(len(edges)), edges[:, 0]], diff[np.arange(len(edges)), edges[:, 1]] = 1.0, -1.0
    chi2 = float(np.max(0.5 * np.einsum("ei,ij,ej->e", diff, pinv, diff)))
    return edges, float(chi1), chi2


def dadao_constants(mu: float, L: float, chi1: float, chi2: float) -> DADAOConstants:
    """The paper's constants from mu (strong convexity), L (smoothness) and the graph's chi_1, chi_2."""
    for name, v in (("mu", mu), ("L", L), ("chi1", chi1), ("chi2", chi2)):
        check_positive(v, name)
    if mu > L:
        raise ValueError(f"mu must be <= L, got mu={mu!r}, L={L!r}")
    nu = mu / 2
    r = np.sqrt(nu / L)
    lam = float(np.sqrt(2 * chi1 * chi2))
    return DADAOConstants(nu, r / 4, r / 8, r / 8, 0.5 / r, 1 / (4 * L), 1 / (4 * np.sqrt(L * nu)), r / 4 + 1,
                          2 * (chi1 / lam) / r, lam, chi1, chi2)


def _ode_matrix(c: DADAOConstants) -> np.ndarray:
    m = np.zeros((6, 6))
    m[0, 0], m[0, 1] = -c.eta, c.eta
    m[1, 0], m[1, 1] = c.eta, -c.eta
    m[2, 2], m[2, 3] = -c.alpha, c.alpha
    m[3, 1], m[3, 2], m[3, 4] = -c.theta * c.nu, -c.theta, -c.theta
    m[4, 4], m[4, 5] = -c.alpha, c.alpha
    m[5, 4], m[5, 5] = c.alpha_tilde, -c.alpha_tilde
    return m


def dadao_events(key: jax.Array, n_events: int, *, n_nodes: int, edges: Any, lam_mix: float) -> DADAOEvents:
    """``n_events`` events of the two Poisson processes (gradients at total rate n, uniform node;
    communications at rate ``lam_mix``, uniform edge), in time order."""
    check_int(n_events, "n_events", minimum=1)
    check_positive(lam_mix, "lam_mix")
    edges = jnp.asarray(edges, jnp.int32)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    rate = n_nodes + lam_mix
    times = jnp.cumsum(jax.random.exponential(k1, (n_events,)) / rate)
    is_grad = jax.random.uniform(k2, (n_events,)) < n_nodes / rate
    node = jax.random.randint(k3, (n_events,), 0, n_nodes)
    edge = edges[jax.random.randint(k4, (n_events,), 0, edges.shape[0])]
    return DADAOEvents(times, is_grad, jnp.where(is_grad, node, edge[:, 0]), jnp.where(is_grad, node, edge[:, 1]))


def dadao_init(x0: jax.Array) -> DADAOState:
    """x = x0 ((n, d): one row per node), every other variable 0, all clocks at 0."""
    x0 = jnp.asarray(x0)
    if x0.ndim != 2:
        raise ValueError(f"x0 must be an (n_nodes, dim) array, got shape {x0.shape}")
    s = jnp.zeros((x0.shape[0], 6, x0.shape[1]), x0.dtype).at[:, 0].set(x0)
    return DADAOState(s, jnp.zeros(x0.shape[0], x0.dtype), jnp.int32(0), jnp.int32(0))


def _advance(m, s_i, dt):
    return jax.scipy.linalg.expm(m * dt) @ s_i


def _event_step(grad_fn, c: DADAOConstants, m):
    def step(state: DADAOState, ev):
        t, is_grad, a, b = ev
        sa = _advance(m, state.s[a], t - state.t_last[a])
        sb = _advance(m, state.s[b], t - state.t_last[b])

        def on_grad(_):
            g = grad_fn(sa[0], a) - c.nu * sa[0] - sa[3]
            new_a = sa.at[0].add(-c.gamma * g).at[1].add(-c.gamma_tilde * g).at[3].add(c.delta * g)
            return state.s.at[a].set(new_a), state.t_last.at[a].set(t)

        def on_comm(_):
            p = (sa[2] + sa[4]) - (sb[2] + sb[4])
            new_a = sa.at[4].add(-0.5 * p).at[5].add(-c.beta_tilde * p)
            new_b = sb.at[4].add(0.5 * p).at[5].add(c.beta_tilde * p)
            return state.s.at[a].set(new_a).at[b].set(new_b), state.t_last.at[a].set(t).at[b].set(t)

        s, t_last = jax.lax.cond(is_grad, on_grad, on_comm, None)
        return DADAOState(s, t_last, state.n_grad + is_grad.astype(jnp.int32),
                          state.n_comm + (~is_grad).astype(jnp.int32))

    return step


def _snapshot(m, state: DADAOState, t, x_star):
    """Every node advanced to time t (no event): error, invariants, counts."""
    s = jax.vmap(lambda si, ti: _advance(m, si, t - ti))(state.s, state.t_last)
    out = {"time": t, "n_grad": state.n_grad, "n_comm": state.n_comm,
           "sum_z": jnp.max(jnp.abs(jnp.sum(s[:, 4], 0))), "sum_z_tilde": jnp.max(jnp.abs(jnp.sum(s[:, 5], 0)))}
    if x_star is not None:
        out["error"] = jnp.mean(jnp.sum((s[:, 0] - x_star) ** 2, -1))
    return out


def dadao_simulate(
    grad_fn: Callable[[jax.Array, jax.Array], jax.Array],
    state: DADAOState,
    events: DADAOEvents,
    constants: DADAOConstants,
    *,
    record_every: int = 10,
    x_star: Any = None,
) -> tuple[DADAOState, dict[str, jax.Array]]:
    r"""Replay ``events`` from ``state`` in one jitted ``lax.scan``.

    ``grad_fn(x, i)`` is :math:`\nabla f_i(x)` (``x`` a flat (d,) vector, ``i`` a traced
    node index). Every ``record_every`` events all nodes are advanced (without an
    event) to the current time and the history records ``time``, ``n_grad``, ``n_comm``,
    :math:`\max|\sum_i z_i|`, :math:`\max|\sum_i \tilde z_i|` and, with ``x_star``, the error
    :math:`\frac1n\sum_i\|x_i - x^\star\|^2`. ``len(events)`` must be a multiple of ``record_every``.
    """
    n_events = int(events.times.shape[0])
    check_int(record_every, "record_every", minimum=1)
    if n_events % record_every:
        raise ValueError(f"record_every must divide the number of events, got record_every={record_every}, "
                         f"n_events={n_events}")
    m = jnp.asarray(_ode_matrix(constants), state.s.dtype)
    step = _event_step(grad_fn, constants, m)
    xs = jax.tree.map(lambda v: v.reshape((n_events // record_every, record_every) + v.shape[1:]), events)
    x_star = None if x_star is None else jnp.asarray(x_star, state.s.dtype)

    def chunk(st, evs):
        st, _ = jax.lax.scan(lambda s, e: (step(s, e), None), st, evs)
        return st, _snapshot(m, st, evs.times[-1], x_star)

    return jax.jit(lambda st, e: jax.lax.scan(chunk, st, e))(state, xs)


def dsgd_baseline(
    loss_fn: Callable[[Any, Any], jax.Array], adjacency: Any, *, learning_rate: float, n_workers: int
) -> FederatedAlgorithm:
    """The synchronous baseline: D-SGD (a local ``optax.sgd`` step on the whole local data, then
    gossip with the Metropolis-Hastings matrix of ``adjacency``), from the federated layer."""
    w = topology.metropolis_hastings(np.asarray(adjacency) > 0)
    return worker_algorithm(decentralized(optax.sgd(learning_rate), gossip_mix(w)), loss_fn, n_workers=n_workers)
