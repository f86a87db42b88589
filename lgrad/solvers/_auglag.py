r"""Exact augmented Lagrangian with randomized iterative sketching (equality constraints).

Na, Dereziński & Mahoney, "Constrained Optimization via Exact Augmented Lagrangian
and Randomized Iterative Sketching" (ICML 2023); the project's account is
``docs/papers/sketch-auglag.md``. For :math:`\min f(x)` s.t. :math:`c(x) = 0`
(:math:`G = \nabla c^\top`, :math:`\mathcal L = f + \lambda^\top c`):

.. math::

   \mathcal L_\eta = \mathcal L + \tfrac{\eta_1}{2}\|c\|^2 + \tfrac{\eta_2}{2}\|\nabla_x\mathcal L\|^2,
   \qquad
   \begin{pmatrix} B & G^\top \\ G & 0 \end{pmatrix}
   \begin{pmatrix}\Delta x \\ \Delta\lambda\end{pmatrix} = -b, \quad
   b = \begin{pmatrix}\nabla_x\mathcal L \\ c\end{pmatrix},

:math:`B = \nabla^2_x\mathcal L`, or :math:`\nabla^2_x\mathcal L + (\xi_B + \|\nabla^2_x\mathcal L\|)I`
when the reduced Hessian's smallest eigenvalue is below ``1e-2``. The system is solved
inexactly by randomized Kaczmarz (row :math:`i` with probability
:math:`\propto\|K_i\|^2`) or a Gaussian vector sketch, from 0, until
:math:`\|K\|\,\psi\,\|r\| \le \theta\delta\|b\|` with
:math:`\psi = 20\max(\|B\|^2, 1)/(\min(\xi_G, 1)\min(\xi_B, 1))`,
:math:`\xi_G = \lambda_{\min}(GG^\top)`. Before each solve
:math:`\delta \leftarrow \max(\min(\delta, (\frac12 - \beta)\eta_2/((1 + \eta_1 + \eta_2)\Upsilon^2\psi^2)), 10^{-6})`,
:math:`\Upsilon = \max(\|K\|, 1)`. If the descent test
:math:`\nabla\mathcal L_\eta^\top\Delta \le -\frac{\eta_2}{2}\|b\|^2` fails:
:math:`\eta_1 \leftarrow \eta_1\nu^2`, :math:`\eta_2 \leftarrow \eta_2/\nu`,
:math:`\delta \leftarrow \min(\delta/\nu^4, \text{the formula})`, and the system is solved
again. Then an Armijo search on :math:`\mathcal L_\eta` (parameter :math:`\beta`, halving).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lgrad._validation import check_int, check_positive

__all__ = ["AugLagResult", "sketch_auglag"]

_SOLVERS = ("kaczmarz", "gaussian", "exact")


class AugLagResult(NamedTuple):
    """What :func:`sketch_auglag` returns (histories have ``max_iter`` entries, NaN/-1 after the stop)."""

    params: Any
    multipliers: jax.Array
    kkt: jax.Array  # final ||(grad_x L, c)||
    iterations: jax.Array
    converged: jax.Array
    kkt_history: jax.Array  # (max_iter + 1,)
    step: jax.Array  # (max_iter,) accepted Armijo step
    inner: jax.Array  # (max_iter,) sketch iterations of the accepted solve (all solves summed)
    flops: jax.Array  # (max_iter,) linear-solver flops (sketch updates + residual checks, or an LU)
    descent: jax.Array  # (max_iter,) descent test held for the accepted direction
    accurate: jax.Array  # (max_iter,) the accuracy condition was met (not the inner cap)
    safeguard: jax.Array  # (max_iter,) the eigenvalue safeguard modified B
    eta1: jax.Array  # (max_iter,)
    eta2: jax.Array  # (max_iter,)
    delta: jax.Array  # (max_iter,)


class _Opts(NamedTuple):
    eta1: float
    eta2: float
    delta: float
    xi_b: float
    beta: float
    nu: float
    theta: float
    tol: float
    max_iter: int
    max_inner: int
    max_adapt: int
    max_backtrack: int
    solver: str


def _sketch_solve(kmat, rhs, tol_abs, key, opts: _Opts):
    """Solve K z = rhs from 0 to ||K z - rhs|| <= tol_abs: ``(z, inner iterations, met, flops)``."""
    n = kmat.shape[0]
    if opts.solver == "exact":
        z = jnp.linalg.solve(kmat, rhs)
        return z, jnp.int32(0), jnp.linalg.norm(kmat @ z - rhs) <= tol_abs, jnp.asarray(2.0 * n**3 / 3, rhs.dtype)
    row_sq = jnp.sum(kmat**2, 1)
    chunk = n  # sketch updates between residual checks; their randomness is drawn per chunk
    if opts.solver == "kaczmarz":
        probs = row_sq / jnp.sum(row_sq)

        def draw(k):  # rows i (probability ~ ||K_i||^2): direction K_i, scale 1/||K_i||^2
            i = jax.random.choice(k, n, (chunk,), p=probs)
            return kmat[i], rhs[i], row_sq[i]
    else:

        def draw(k):  # Gaussian s: direction K^T s, target s^T rhs, scale 1/||K^T s||^2
            s = jax.random.normal(k, (chunk, n), rhs.dtype)
            ks = s @ kmat
            return ks, s @ rhs, jnp.sum(ks**2, 1)

    def body(c):
        z, it, k, _ = c
        k, sub = jax.random.split(k)
        dirs, targets, scales = draw(sub)
        z = jax.lax.fori_loop(0, chunk, lambda j, z: z + (targets[j] - dirs[j] @ z) / scales[j] * dirs[j], z)
        return z, it + chunk, k, jnp.linalg.norm(kmat @ z - rhs)

    def cond(c):
        return (c[3] > tol_abs) & (c[1] < opts.max_inner)

    z0 = jnp.zeros_like(rhs)
    z, it, _, res = jax.lax.while_loop(cond, body, (z0, jnp.int32(0), key, jnp.linalg.norm(rhs)))
    per = 4.0 * n if opts.solver == "kaczmarz" else 2.0 * n**2 + 6.0 * n  # a row update, or K^T s and an update
    flops = it * per + (it // chunk) * 2.0 * n**2
    return z, it, res <= tol_abs, flops.astype(rhs.dtype)


class _Point(NamedTuple):
    f: jax.Array
    c: jax.Array
    gl: jax.Array  # grad_x L
    jac: jax.Array  # G (m, d)
    hess: jax.Array  # hess_x L (d, d)


def _point(f, c, x, lam) -> _Point:
    lag = lambda v: f(v) + lam @ c(v)  # noqa: E731
    return _Point(f(x), c(x), jax.grad(lag)(x), jax.jacfwd(c)(x), jax.hessian(lag)(x))


def _merit(f, c, x, lam, eta1, eta2):
    gl = jax.grad(lambda v: f(v) + lam @ c(v))(x)
    cv = c(x)
    return f(x) + lam @ cv + 0.5 * eta1 * cv @ cv + 0.5 * eta2 * gl @ gl


def _merit_grad(p: _Point, eta1, eta2):
    return jnp.concatenate([p.gl + eta1 * p.jac.T @ p.c + eta2 * p.hess @ p.gl, p.c + eta2 * p.jac @ p.gl])


def _kkt_matrix(p: _Point, xi_b):
    """K with the eigenvalue safeguard, and (psi, Upsilon, safeguard used)."""
    d, m = p.hess.shape[0], p.c.shape[0]
    _, _, vt = jnp.linalg.svd(p.jac, full_matrices=True)
    z = vt[m:].T  # null space of G
    reduced_min = jnp.min(jnp.linalg.eigvalsh(z.T @ p.hess @ z)) if d > m else jnp.inf
    h_norm = jnp.linalg.norm(p.hess, 2)
    guard = reduced_min < 1e-2
    b = p.hess + jnp.where(guard, xi_b + h_norm, 0.0) * jnp.eye(d, dtype=p.hess.dtype)
    kmat = jnp.block([[b, p.jac.T], [p.jac, jnp.zeros((m, m), p.hess.dtype)]])
    xi_g = jnp.min(jnp.linalg.eigvalsh(p.jac @ p.jac.T))
    psi = 20.0 * jnp.maximum(jnp.linalg.norm(b, 2) ** 2, 1.0) / (jnp.minimum(xi_g, 1.0) * min(xi_b, 1.0))
    return kmat, psi, jnp.maximum(jnp.linalg.norm(kmat, 2), 1.0), guard


def _delta_cap(eta1, eta2, ups, psi, beta):
    return (0.5 - beta) * eta2 / ((1.0 + eta1 + eta2) * ups**2 * psi**2)


def _direction(p: _Point, eta1, eta2, delta, key, opts: _Opts):
    """Adaptive loop: solve, test descent, adapt (eta1, eta2, delta) and solve again."""
    kmat, psi, ups, guard = _kkt_matrix(p, opts.xi_b)
    b = jnp.concatenate([p.gl, p.c])
    bn = jnp.linalg.norm(b)
    knorm = jnp.linalg.norm(kmat, 2)

    def solve(e1, e2, dl, k):
        z, it, met, fl = _sketch_solve(kmat, -b, opts.theta * dl * bn / (knorm * psi), k, opts)
        ok = _merit_grad(p, e1, e2) @ z <= -0.5 * e2 * bn**2
        return z, it, met, fl, ok

    delta = jnp.maximum(jnp.minimum(delta, _delta_cap(eta1, eta2, ups, psi, opts.beta)), 1e-6)
    key, sub = jax.random.split(key)
    first = (eta1, eta2, delta, key) + solve(eta1, eta2, delta, sub) + (jnp.int32(0),)

    def body(s):
        e1, e2, dl, k, _, it, _, fl, _, a = s
        e1, e2 = e1 * opts.nu**2, e2 / opts.nu
        dl = jnp.maximum(jnp.minimum(dl / opts.nu**4, _delta_cap(e1, e2, ups, psi, opts.beta)), 1e-6)
        k, sub = jax.random.split(k)
        z, it2, met, fl2, ok = solve(e1, e2, dl, sub)
        return e1, e2, dl, k, z, it + it2, met, fl + fl2, ok, a + 1

    out = jax.lax.while_loop(lambda s: (~s[8]) & (s[9] < opts.max_adapt), body, first)
    e1, e2, dl, key, z, it, met, fl, ok, _ = out
    return z, dict(eta1=e1, eta2=e2, delta=dl, inner=it, accurate=met, flops=fl, descent=ok, safeguard=guard), key


def _armijo(f, c, x, lam, z, slope, eta1, eta2, opts: _Opts):
    d = x.shape[0]
    m0 = _merit(f, c, x, lam, eta1, eta2)

    def cond(s):
        a, t = s
        trial = _merit(f, c, x + a * z[:d], lam + a * z[d:], eta1, eta2)
        return ~(trial <= m0 + opts.beta * a * slope) & (t < opts.max_backtrack)

    a, _ = jax.lax.while_loop(cond, lambda s: (0.5 * s[0], s[1] + 1), (jnp.asarray(1.0, x.dtype), 0))
    return a


def _validate(o: _Opts) -> None:
    for name in ("eta1", "eta2", "delta", "xi_b", "beta", "theta", "tol"):
        check_positive(getattr(o, name), name)
    if not o.beta < 0.5:
        raise ValueError(f"beta must lie in (0, 0.5), got {o.beta!r}")
    if not o.nu > 1:
        raise ValueError(f"nu must be > 1, got {o.nu!r}")
    for name in ("max_iter", "max_inner", "max_adapt", "max_backtrack"):
        check_int(getattr(o, name), name, minimum=1)
    if o.solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {o.solver!r}")


def sketch_auglag(
    f: Callable[[Any], jax.Array],
    c: Callable[[Any], jax.Array],
    params: Any,
    multipliers: Any,
    *,
    key: jax.Array,
    solver: str = "kaczmarz",
    eta1: float = 1.0,
    eta2: float = 0.1,
    delta: float = 0.1,
    xi_b: float = 0.1,
    beta: float = 0.1,
    nu: float = 1.5,
    theta: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    max_inner: int = 2_000_000,
    max_adapt: int = 30,
    max_backtrack: int = 40,
) -> AugLagResult:
    r"""Minimise ``f(params)`` subject to ``c(params) = 0`` (see the module docstring).

    Example: the least-norm point on the hyperplane :math:`\sum_i x_i = 1`:

    >>> import jax, jax.numpy as jnp
    >>> from lgrad.solvers import sketch_auglag
    >>> res = sketch_auglag(lambda x: jnp.sum(x**2), lambda x: jnp.array([jnp.sum(x) - 1.0]),
    ...                     jnp.zeros(4), jnp.zeros(1), key=jax.random.PRNGKey(0))
    >>> bool(res.converged), [round(float(v), 3) for v in res.params]
    (True, [0.25, 0.25, 0.25, 0.25])

    ``c`` returns an ``(m,)`` vector; ``multipliers`` is the initial :math:`\lambda` (m,).
    ``solver``: ``"kaczmarz"``, ``"gaussian"`` (randomized sketches) or ``"exact"`` (an LU
    solve: the exact-Newton baseline). Stops when :math:`\|(\nabla_x\mathcal L, c)\| \le`
    ``tol``. One jitted ``lax.while_loop``; dense Hessians (small problems).

    Example::

        import jax, jax.numpy as jnp
        from lgrad.solvers import sketch_auglag
        f = lambda x: jnp.sum((x - 2.0) ** 2)
        c = lambda x: jnp.array([jnp.sum(x) - 1.0])
        res = sketch_auglag(f, c, jnp.zeros(3), jnp.zeros(1), key=jax.random.PRNGKey(0))
        res.params  # [1/3, 1/3, 1/3]
    """
    opts = _Opts(eta1, eta2, delta, xi_b, beta, nu, theta, tol, max_iter, max_inner, max_adapt, max_backtrack, solver)
    _validate(opts)
    x0, unravel = ravel_pytree(params)
    lam0 = jnp.asarray(multipliers, x0.dtype).reshape(-1)
    f_flat, c_flat = (lambda v: f(unravel(v))), (lambda v: jnp.asarray(c(unravel(v))).reshape(-1))
    m = jax.eval_shape(c_flat, x0).shape[0]
    if lam0.shape != (m,):
        raise ValueError(f"multipliers must have shape ({m},) (one per constraint), got {lam0.shape}")
    out = jax.jit(lambda x, lam, k: _solve(f_flat, c_flat, x, lam, k, opts))(x0, lam0, key)
    return out._replace(params=unravel(out.params))


def _solve(f, c, x0, lam0, key, opts: _Opts) -> AugLagResult:
    d, T, dt = x0.shape[0], opts.max_iter, x0.dtype
    hist = dict(kkt_history=jnp.full((T + 1,), jnp.nan, dt), step=jnp.full((T,), jnp.nan, dt),
                inner=jnp.full((T,), -1, jnp.int32), flops=jnp.zeros((T,), dt), descent=jnp.zeros((T,), bool),
                accurate=jnp.zeros((T,), bool), safeguard=jnp.zeros((T,), bool), eta1=jnp.full((T,), jnp.nan, dt),
                eta2=jnp.full((T,), jnp.nan, dt), delta=jnp.full((T,), jnp.nan, dt))
    p0 = _point(f, c, x0, lam0)
    kkt0 = jnp.linalg.norm(jnp.concatenate([p0.gl, p0.c]))
    hist["kkt_history"] = hist["kkt_history"].at[0].set(kkt0)
    state = (jnp.int32(0), x0, lam0, kkt0, jnp.asarray(opts.eta1, dt), jnp.asarray(opts.eta2, dt),
             jnp.asarray(opts.delta, dt), key, hist)

    def body(s):
        k, x, lam, _, e1, e2, dl, key, h = s
        p = _point(f, c, x, lam)
        z, info, key = _direction(p, e1, e2, dl, key, opts)
        slope = _merit_grad(p, info["eta1"], info["eta2"]) @ z
        a = _armijo(f, c, x, lam, z, slope, info["eta1"], info["eta2"], opts)
        x, lam = x + a * z[:d], lam + a * z[d:]
        pn = _point(f, c, x, lam)
        kkt = jnp.linalg.norm(jnp.concatenate([pn.gl, pn.c]))
        h = dict(h, kkt_history=h["kkt_history"].at[k + 1].set(kkt), step=h["step"].at[k].set(a),
                 **{n: h[n].at[k].set(info[n]) for n in ("inner", "flops", "descent", "accurate", "safeguard",
                                                          "eta1", "eta2", "delta")})
        return k + 1, x, lam, kkt, info["eta1"], info["eta2"], info["delta"], key, h

    k, x, lam, kkt, *_, h = jax.lax.while_loop(lambda s: (s[0] < T) & (s[3] > opts.tol), body, state)
    return AugLagResult(x, lam, kkt, k, kkt <= opts.tol, **h)
