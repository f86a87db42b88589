r"""FZooS (Shu, Lin, Dai & Low, "Federated Zeroth-Order Optimization using
Trajectory-Informed Surrogate Gradients", 2023): federated zeroth-order optimisation
with Gaussian-process surrogate gradients and a random-Fourier-feature correction.

Client :math:`i` keeps every query it made (its trajectory). Local iteration
:math:`k` of round :math:`t`, from :math:`x` (the server's point at :math:`k = 0`):

1. *exploration*: among ``n_candidates`` points :math:`x + r\,U[-1,1]^d` query the
   ``n_explore`` with the largest posterior variance of the gradient (the trace of
   :math:`\nabla\nabla' k - \partial k\, (K + \sigma^2 I)^{-1} \partial k^\top`);
2. a GP (Matérn-5/2, noise :math:`\sigma^2`, min-max scaled :math:`y`, lengthscale
   by maximum marginal likelihood over a grid) on the ``n_neighbours`` nearest past
   queries gives :math:`g = \nabla \mu(x)` (rescaled to :math:`y`'s units);
3. correction :math:`\hat g = g + \gamma_t (\nabla \hat F(x) - \nabla \hat f_i(x))`,
   :math:`\gamma_t = 1/(t+1)`, with :math:`\hat f_i(x) = \nu_i^\top \phi(x)` the
   client's random-Fourier-feature surrogate and :math:`\hat F = \bar\nu^\top\phi`
   the server's average;
4. an Adam step on :math:`\hat g`.

At the end of the round the client fits :math:`\nu_i` by least squares on its
``rff_neighbours`` nearest queries (min-max scaled, then multiplied back by its
:math:`y` range) and sends :math:`(x_i^K - x^t, \nu_i - \bar\nu)`; the server
averages both (:func:`lgrad.federated.server_algorithm`, ``optax.sgd(1.0)``).

Every query is counted (metric ``queries``: per client and round). The project's
account (with what differs from the authors' code): ``docs/papers/fzoos-surrogate.md``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgrad import _linalg
from lgrad._validation import check_int
from lgrad.federated._algorithm import ClientUpdate, FederatedAlgorithm, server_algorithm

__all__ = [
    "LENGTHSCALES",
    "FZooSClient",
    "FZooSServer",
    "fzoos",
    "fedzo_client",
    "fzoos_client",
    "gp_fit",
    "gp_mean",
    "gp_mean_grad",
    "matern52",
    "rff_features",
]


#: The default lengthscale grid searched by maximum marginal likelihood (our choice of
#: fitting: the authors' code uses a fitted lengthscale, see docs/papers/fzoos-surrogate.md).
LENGTHSCALES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


# ----------------------------------------------------------------------------- GP surrogate
def matern52(a: jax.Array, b: jax.Array, lengthscale: jax.Array) -> jax.Array:
    r"""Matérn-5/2 kernel matrix :math:`(1 + \sqrt5 r + \tfrac53 r^2) e^{-\sqrt5 r}`,
    :math:`r = \|a_i - b_j\| / \ell`, for ``a`` (n, d), ``b`` (m, d) -> (n, m);
    differentiable at :math:`r = 0`."""
    sq = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1) / lengthscale**2
    pos = sq > 0
    r = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    s5 = jnp.sqrt(5.0) * r
    return (1.0 + s5 + 5.0 / 3.0 * sq) * jnp.exp(-s5)


class GP(NamedTuple):
    """A fitted GP posterior: inputs ``x`` (n, d), ``alpha = (K + s^2 I)^{-1} y``,
    the Cholesky factor, the lengthscale and the y scaling (``y = lo + span * y_s``)."""

    x: jax.Array
    alpha: jax.Array
    chol: jax.Array
    lengthscale: jax.Array
    lo: jax.Array
    span: jax.Array


def _scale(y, weights):
    big = jnp.finfo(y.dtype).max
    lo = jnp.min(jnp.where(weights > 0, y, big))
    hi = jnp.max(jnp.where(weights > 0, y, -big))
    span = jnp.where(hi > lo, hi - lo, 1.0)
    return lo, span, jnp.where(weights > 0, (y - lo) / span, 0.0)


def gp_fit(x: jax.Array, y: jax.Array, *, lengthscales: jax.Array, noise: float = 1e-6,
           mask: jax.Array | None = None) -> GP:
    r"""GP regression on min-max scaled ``y`` with the Matérn-5/2 lengthscale of largest
    log marginal likelihood among ``lengthscales``. ``mask`` (n,) drops rows (they
    become independent dummy points with target 0 that do not affect the posterior)."""
    m = jnp.ones(y.shape, y.dtype) if mask is None else mask.astype(y.dtype)
    lo, span, ys = _scale(y, m)
    eye = jnp.eye(y.shape[0], dtype=y.dtype)
    outer = m[:, None] * m[None, :]

    def factor(ell):
        k = matern52(x, x, ell) * outer + (1.0 - outer) * eye + noise * eye
        chol = _linalg.cholesky(k)
        alpha = _linalg.cho_solve(chol, ys)
        lml = -0.5 * ys @ alpha - jnp.sum(jnp.log(jnp.diag(chol)))
        return chol, alpha, jnp.where(jnp.isfinite(lml), lml, -jnp.inf)  # a failed factorisation never wins

    lengthscales = jnp.asarray(lengthscales, y.dtype)
    best = jnp.argmax(jax.vmap(lambda ell: factor(ell)[2])(lengthscales))
    ell = lengthscales[best]
    chol, alpha, _ = factor(ell)
    return GP(x, alpha * m, chol, ell, lo, span)


def gp_mean(gp: GP, x: jax.Array) -> jax.Array:
    """Posterior mean at one point ``x`` (d,), in ``y``'s units."""
    return gp.lo + gp.span * (matern52(x[None], gp.x, gp.lengthscale)[0] @ gp.alpha)


def gp_mean_grad(gp: GP, x: jax.Array) -> jax.Array:
    r""":math:`\nabla_x \mu(x)` in ``y``'s units (the surrogate gradient)."""
    return jax.grad(lambda z: gp_mean(gp, z))(x)


def _gradient_variance(gp: GP, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Trace of the posterior covariance of the gradient at ``x``, up to the constant prior
    term (which is the same for every candidate)."""
    jac = jax.jacfwd(lambda z: matern52(z[None], gp.x, gp.lengthscale)[0])(x) * mask[:, None]  # (n, d)
    solved = _linalg.cho_solve(gp.chol, jac)
    return -jnp.sum(jac * solved)


# ----------------------------------------------------------------------------- RFF correction
def rff_features(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    r""":math:`\phi(x) = \sqrt{2/M}\cos(W x + b)` for ``x`` (..., d), ``w`` (M, d), ``b`` (M,)."""
    return jnp.sqrt(2.0 / w.shape[0]) * jnp.cos(x @ w.T + b)


def _rff_grad(nu, x, w, b):
    return jax.grad(lambda z: rff_features(z, w, b) @ nu)(x)


def _rff_fit(x, y, mask, w, b):
    """Min-norm least squares of the min-max scaled ``y`` on the features, times the y range."""
    lo, span, ys = _scale(y, mask)
    phi = rff_features(x, w, b) * mask[:, None]
    nu = phi.T @ _linalg.solve(phi @ phi.T + 1e-8 * jnp.eye(phi.shape[0], dtype=phi.dtype), ys)
    return nu * span


# ----------------------------------------------------------------------------- clients
class FZooSClient(NamedTuple):
    """A client's persistent state: its queries ``hx`` (capacity, d), ``hy`` (capacity,),
    how many ``n``, its RFF weights ``nu`` (M,) and its round counter ``t``."""

    hx: jax.Array
    hy: jax.Array
    n: jax.Array
    nu: jax.Array
    t: jax.Array


class FZooSServer(NamedTuple):
    """The server's model: the point ``x`` and the averaged RFF weights ``nu``."""

    x: jax.Array
    nu: jax.Array


def _nearest(hist: FZooSClient, x, k):
    """Indices of the ``k`` nearest stored queries to ``x`` and which of them exist."""
    k = min(k, hist.hx.shape[0])
    valid = jnp.arange(hist.hx.shape[0]) < hist.n
    d2 = jnp.where(valid, jnp.sum((hist.hx - x) ** 2, -1), jnp.inf)
    idx = jnp.argsort(d2)[:k]
    return idx, valid[idx]


def _store(hist: FZooSClient, xs, ys) -> FZooSClient:
    pos = hist.n + jnp.arange(xs.shape[0])
    return hist._replace(hx=hist.hx.at[pos].set(xs, mode="drop"), hy=hist.hy.at[pos].set(ys, mode="drop"),
                         n=hist.n + xs.shape[0])


class _Options(NamedTuple):
    n_neighbours: int
    n_candidates: int
    n_explore: int
    radius: float
    noise: float
    lengthscales: tuple
    rff_neighbours: int
    correction: bool


def _local_iteration(opts: _Options, f, tx, rff, gamma, nu_bar):
    w, b = rff

    def fit(hist, x):
        idx, mask = _nearest(hist, x, opts.n_neighbours)
        return gp_fit(hist.hx[idx], hist.hy[idx], lengthscales=jnp.asarray(opts.lengthscales), noise=opts.noise,
                      mask=mask), mask

    def step(carry, key):
        x, s, hist = carry
        gp, mask = fit(hist, x)
        cand = x + opts.radius * jax.random.uniform(key, (opts.n_candidates, x.shape[0]), x.dtype, -1.0, 1.0)
        _, pick = jax.lax.top_k(jax.vmap(lambda c: _gradient_variance(gp, c, mask))(cand), opts.n_explore)
        xs = jnp.concatenate([x[None], cand[pick]])
        hist = _store(hist, xs, jax.vmap(f)(xs))
        gp, _ = fit(hist, x)
        g = gp_mean_grad(gp, x)
        if opts.correction:
            g = g + gamma * (_rff_grad(nu_bar, x, w, b) - _rff_grad(hist.nu, x, w, b))
        u, s = tx.update(g, s, x)
        return (x + u, s, hist), None

    return step


def fzoos_client(
    objective: Callable[[jax.Array, object], jax.Array],
    *,
    rff_weights: tuple[jax.Array, jax.Array],
    capacity: int,
    local_steps: int = 10,
    learning_rate: float = 0.01,
    n_neighbours: int = 150,
    n_candidates: int = 100,
    n_explore: int = 5,
    radius: float = 0.01,
    noise: float = 1e-6,
    lengthscales: tuple[float, ...] = LENGTHSCALES,
    rff_neighbours: int = 500,
    correction: bool = True,
) -> ClientUpdate:
    """The FZooS client (module docstring). ``objective(x, arrays) -> f_i(x)`` is the
    black box (its calls are the counted queries: ``1 + n_explore`` per local step);
    ``rff_weights = (W (M, d), b (M,))`` the shared random features; ``capacity`` the
    queries each client can store (at least rounds x local_steps x (1 + n_explore)).
    ``correction=False`` drops step 3. Message: :class:`FZooSServer` of changes."""
    k = check_int(local_steps, "local_steps", minimum=1)
    for name, v in (("capacity", capacity), ("n_neighbours", n_neighbours), ("n_candidates", n_candidates),
                    ("rff_neighbours", rff_neighbours)):
        check_int(v, name, minimum=1)
    check_int(n_explore, "n_explore", minimum=1)
    if n_explore > n_candidates:
        raise ValueError(f"n_explore must be <= n_candidates={n_candidates}, got {n_explore}")
    for name, v in (("learning_rate", learning_rate), ("radius", radius), ("noise", noise)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
    if not lengthscales or min(lengthscales) <= 0:
        raise ValueError(f"lengthscales must be a non-empty tuple of positive floats, got {lengthscales!r}")
    opts = _Options(n_neighbours, n_candidates, n_explore, float(radius), float(noise), tuple(lengthscales),
                    rff_neighbours, bool(correction))
    tx = optax.adam(learning_rate)
    w, b = rff_weights

    def init(server: FZooSServer) -> FZooSClient:
        d = server.x.shape[0]
        return FZooSClient(jnp.zeros((capacity, d), server.x.dtype), jnp.zeros(capacity, server.x.dtype),
                           jnp.zeros([], jnp.int32), jnp.zeros_like(server.nu), jnp.zeros([], jnp.int32))

    def apply(server: FZooSServer, hist: FZooSClient, arrays, count, key):
        f = lambda z: objective(z, arrays)  # noqa: E731
        gamma = 1.0 / (hist.t + 1.0)
        step = _local_iteration(opts, f, tx, (w, b), gamma, server.nu)
        (x, _, hist), _ = jax.lax.scan(step, (server.x, tx.init(server.x), hist), jax.random.split(key, k))
        idx, mask = _nearest(hist, x, rff_neighbours)
        nu = _rff_fit(hist.hx[idx], hist.hy[idx], mask.astype(x.dtype), w, b)
        hist = hist._replace(nu=nu, t=hist.t + 1)
        queries = jnp.asarray(k * (1 + n_explore), jnp.float32)
        return FZooSServer(x - server.x, nu - server.nu), hist, {"queries": queries}

    return ClientUpdate(init, apply)


def fedzo_client(
    objective: Callable[[jax.Array, object], jax.Array],
    *,
    local_steps: int = 10,
    learning_rate: float = 0.01,
    n_directions: int = 20,
    smoothing: float = 0.01,
) -> ClientUpdate:
    r"""The FedZO baseline: per local step ``n_directions`` orthonormal directions
    :math:`u_j` (QR of a Gaussian matrix), forward differences
    :math:`\hat g = \frac{d}{b}\sum_j \frac{f(x + \mu u_j) - f(x)}{\mu} u_j`, an Adam step
    (the same optimizer as :func:`fzoos_client`). ``1 + n_directions`` queries per step.
    Message: :class:`FZooSServer` whose ``nu`` is an empty array."""
    k = check_int(local_steps, "local_steps", minimum=1)
    nd = check_int(n_directions, "n_directions", minimum=1)
    for name, v in (("learning_rate", learning_rate), ("smoothing", smoothing)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
    tx = optax.adam(learning_rate)

    def apply(server: FZooSServer, state, arrays, count, key):
        d = server.x.shape[0]
        if nd > d:
            raise ValueError(f"n_directions must be <= the dimension {d}, got {nd}")
        f = lambda z: objective(z, arrays)  # noqa: E731

        def step(carry, kk):
            x, s = carry
            q, _ = jnp.linalg.qr(jax.random.normal(kk, (d, nd), x.dtype))
            f0 = f(x)
            diffs = jax.vmap(lambda u: (f(x + smoothing * u) - f0) / smoothing)(q.T)
            u, s = tx.update(d / nd * q @ diffs, s, x)
            return (x + u, s), None

        (x, _), _ = jax.lax.scan(step, (server.x, tx.init(server.x)), jax.random.split(key, k))
        queries = jnp.asarray(k * (1 + nd), jnp.float32)
        return FZooSServer(x - server.x, jnp.zeros_like(server.nu)), state, {"queries": queries}

    return ClientUpdate(lambda server: (), apply)


def fzoos(client: ClientUpdate, *, n_clients: int, participation: float = 1.0) -> FederatedAlgorithm:
    """:func:`server_algorithm` for :func:`fzoos_client` / :func:`fedzo_client`: the plain
    (unweighted) mean of the clients' changes, step 1 on the server. ``init(key,
    FZooSServer(x0, zeros(M)))``."""
    return server_algorithm(client, n_clients=n_clients, participation=participation, weighted=False)
