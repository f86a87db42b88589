r"""Gradient-normalised smoothness (GNS) regularised Newton method.

The method of *Gradient-Normalized Smoothness for Optimization with Approximate
Hessians* (2025), Algorithm 1 with its adaptive search; the project's account is
``docs/papers/gns-newton.md``.

.. math::

   x^+ = x - (H(x) + \lambda B)^{-1}\nabla f(x), \qquad
   \lambda = \frac{\|\nabla f(x)\|_*}{\gamma + \epsilon}, \qquad
   \|g\|_*^2 = g^\top B^{-1} g,

accepted when :math:`f(x) - f(x^+) \ge \|\nabla f(x^+)\|_*^2 / (8\lambda)` (then
:math:`\gamma \leftarrow 2\gamma`); otherwise :math:`\gamma \leftarrow \gamma/2` and the
step is retried, at most ``max_trials`` times (after which the last trial is taken,
as the authors' code does, unless it is not finite). :math:`\gamma` never falls below
``gamma_min``. :math:`H` is the exact Hessian or any symmetric approximation given as
a :class:`lgrad.analysis.hessian.LinearOperator` (Gauss-Newton, Fisher, a fixed bound).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lgrad._validation import check_int, check_positive
from lgrad.analysis.hessian import LinearOperator, hessian_operator

__all__ = ["GNSResult", "gns_newton"]

_SOLVERS = ("auto", "cholesky", "cg")


class GNSResult(NamedTuple):
    """What :func:`gns_newton` returns (histories have ``max_iter + 1`` entries, NaN after the stop)."""

    params: Any  # the last iterate, a pytree like the input
    value: jax.Array  # f(params)
    grad_norm: jax.Array  # Euclidean ||grad f(params)||
    iterations: jax.Array  # accepted outer iterations
    converged: jax.Array  # grad_norm <= tol
    values: jax.Array  # (max_iter + 1,) f(x_k)
    grad_norms: jax.Array  # (max_iter + 1,) Euclidean ||grad f(x_k)||
    gammas: jax.Array  # (max_iter + 1,) gamma_k used at iteration k
    trials: jax.Array  # (max_iter,) trial steps (linear solves) at iteration k
    accepted: jax.Array  # (max_iter,) whether the step of iteration k passed the GNS test


def _curvature_matvec(curvature, fun, unravel, n: int) -> Callable[[jax.Array], Callable]:
    """``x -> (v -> H(x) v)`` on flat vectors, from ``"exact"`` or a callable returning an operator."""
    if isinstance(curvature, str):
        if curvature != "exact":
            raise ValueError(f"curvature must be 'exact' or a callable params -> LinearOperator, got {curvature!r}")
        curvature = lambda p: hessian_operator(lambda q, _: fun(q), p, None)  # noqa: E731
    elif not callable(curvature):
        raise ValueError(f"curvature must be 'exact' or a callable params -> LinearOperator, got {curvature!r}")

    def at(x):
        op = curvature(unravel(x))
        if not isinstance(op, LinearOperator) or op.dim != n:
            raise ValueError(f"curvature(params) must return a LinearOperator of dim {n}, got {op!r}")
        return op.matvec

    return at


def _metric(metric, n: int, dtype):
    """``(||g||_*^2, B)`` for the metric B (None: the identity; else a dense SPD (n, n) matrix)."""
    if metric is None:
        return (lambda g: jnp.vdot(g, g)), None
    b = jnp.asarray(metric, dtype)
    if b.shape != (n, n):
        raise ValueError(f"metric must be None or an ({n}, {n}) matrix, got shape {b.shape}")
    factor = jax.scipy.linalg.cho_factor(b)
    return (lambda g: jnp.vdot(g, jax.scipy.linalg.cho_solve(factor, g))), b


def _step_solver(kind: str, matvec, bmat, n: int, dtype, cg_maxiter: int, cg_tol: float):
    """``lam -> (g -> (H + lam B)^{-1} g)`` at the current point, by Cholesky or CG."""
    if kind == "cholesky":
        h = jax.vmap(matvec)(jnp.eye(n, dtype=dtype))
        h = 0.5 * (h + h.T)
        b = bmat if bmat is not None else jnp.eye(n, dtype=h.dtype)

        def solve(lam, g):
            return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h + lam * b), g)

        return solve
    bmv = (lambda v: bmat @ v) if bmat is not None else (lambda v: v)

    def solve_cg(lam, g):
        return jax.scipy.sparse.linalg.cg(lambda v: matvec(v) + lam * bmv(v), g, tol=cg_tol, atol=0.0,
                                          maxiter=cg_maxiter)[0]

    return solve_cg


def _validate(max_iter, tol, gamma0, gamma_min, max_trials, eps, linear_solver, cg_tol) -> None:
    check_int(max_iter, "max_iter", minimum=1)
    check_int(max_trials, "max_trials", minimum=1)
    for name, v in (("tol", tol), ("gamma0", gamma0), ("gamma_min", gamma_min), ("eps", eps), ("cg_tol", cg_tol)):
        check_positive(v, name)
    if linear_solver not in _SOLVERS:
        raise ValueError(f"linear_solver must be one of {_SOLVERS}, got {linear_solver!r}")


def gns_newton(
    fun: Callable[[Any], jax.Array],
    params: Any,
    *,
    curvature: str | Callable[[Any], LinearOperator] = "exact",
    metric: Any = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    gamma0: float = 1.0,
    gamma_min: float = 1e-9,
    max_trials: int = 40,
    eps: float = 1e-8,
    linear_solver: str = "auto",
    dense_max_dim: int = 2000,
    cg_maxiter: int | None = None,
    cg_tol: float = 1e-10,
) -> GNSResult:
    r"""Minimise ``fun(params)`` by the GNS-regularised Newton method (see the module docstring).

    Example (float64 recommended for tight tolerances):

    >>> import jax, jax.numpy as jnp
    >>> from lgrad.solvers import gns_newton
    >>> f = lambda p: jnp.sum(jnp.logaddexp(0.0, p["w"])) + 0.5 * jnp.sum((p["w"] - 1.0) ** 2)
    >>> res = gns_newton(f, {"w": jnp.zeros(3)}, tol=1e-4)  # float32: the default 1e-6 needs float64
    >>> bool(res.converged)
    True

    ``curvature``: ``"exact"`` (HVPs of ``fun``) or ``params -> LinearOperator`` (e.g.
    ``lambda p: gauss_newton_operator(predict, p, batch, loss="mse")`` or
    ``lambda p: matrix_operator(bound)``); its flat order must be ``ravel_pytree``'s (true
    for every unmasked operator of :mod:`lgrad.analysis.hessian`). ``metric``: ``None``
    (:math:`B = I`) or a dense SPD matrix. ``linear_solver``: ``"cholesky"`` (dense
    :math:`H` from ``n`` products, one factorisation per trial), ``"cg"`` (conjugate
    gradients on products) or ``"auto"`` (Cholesky up to ``dense_max_dim`` parameters).
    Stops when the Euclidean :math:`\|\nabla f\| \le` ``tol`` or after ``max_iter``
    iterations. The whole solve is one jitted ``lax.while_loop``.

    Example::

        import jax.numpy as jnp
        from lgrad.solvers import gns_newton
        a = jnp.array([[3.0, 1.0], [1.0, 2.0]])
        res = gns_newton(lambda x: 0.5 * x @ a @ x + jnp.sum(jnp.exp(-x)), jnp.zeros(2))
        res.params, res.grad_norm  # the minimiser, < 1e-6
    """
    _validate(max_iter, tol, gamma0, gamma_min, max_trials, eps, linear_solver, cg_tol)
    x0, unravel = ravel_pytree(params)
    n = int(x0.size)
    f_flat = lambda v: fun(unravel(v))  # noqa: E731
    curv = _curvature_matvec(curvature, fun, unravel, n)
    dual_sq, bmat = _metric(metric, n, x0.dtype)
    kind = linear_solver if linear_solver != "auto" else ("cholesky" if n <= dense_max_dim else "cg")
    opts = dict(max_iter=max_iter, tol=tol, gamma0=gamma0, gamma_min=gamma_min, max_trials=max_trials, eps=eps)
    cg_iters = cg_maxiter if cg_maxiter is not None else 10 * n
    make_solver = lambda x: _step_solver(kind, curv(x), bmat, n, x0.dtype, cg_iters, cg_tol)  # noqa: E731
    out = jax.jit(lambda x: _solve(f_flat, make_solver, dual_sq, x, **opts))(x0)
    return out._replace(params=unravel(out.params))


def _search(vg, dual_sq, solve, x, f, g, gamma, *, gamma_min, max_trials, eps):
    """The adaptive search at x: ``(x+, f+, g+, gamma_next, trials, accepted)``."""
    gn = jnp.sqrt(dual_sq(g))

    def body(c):
        gam, t, _, xb, fb, gb = c
        lam = gn / (gam + eps)
        xt = x - solve(lam, g)
        ft, gt = vg(xt)
        ok = jnp.isfinite(ft) & (f - ft >= dual_sq(gt) / (8.0 * lam))
        gam_next = jnp.maximum(jnp.where(ok, 2.0 * gam, 0.5 * gam), gamma_min)
        keep = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt))
        return gam_next, t + 1, ok, jnp.where(keep, xt, xb), jnp.where(keep, ft, fb), jnp.where(keep, gt, gb)

    init = (gamma, jnp.int32(0), jnp.bool_(False), x, f, g)
    gam, t, ok, xn, fn, gnew = jax.lax.while_loop(lambda c: (~c[2]) & (c[1] < max_trials), body, init)
    return xn, fn, gnew, gam, t, ok


def _solve(f_flat, make_solver, dual_sq, x0, *, max_iter, tol, gamma0, gamma_min, max_trials, eps) -> GNSResult:
    vg = jax.value_and_grad(f_flat)
    f0, g0 = vg(x0)
    dt = f0.dtype
    nan = jnp.full((max_iter + 1,), jnp.nan, dt)
    hist = dict(values=nan.at[0].set(f0), grad_norms=nan.at[0].set(jnp.linalg.norm(g0)),
                gammas=nan.at[0].set(gamma0), trials=jnp.zeros((max_iter,), jnp.int32),
                accepted=jnp.zeros((max_iter,), bool))
    state = (jnp.int32(0), x0, f0, g0, jnp.asarray(gamma0, dt), hist)

    def cond(s):
        return (s[0] < max_iter) & (jnp.linalg.norm(s[3]) > tol)

    def body(s):
        k, x, f, g, gamma, h = s
        solve = make_solver(x)
        xn, fn, gn, gam, t, ok = _search(vg, dual_sq, solve, x, f, g, gamma, gamma_min=gamma_min,
                                         max_trials=max_trials, eps=eps)
        h = dict(values=h["values"].at[k + 1].set(fn), grad_norms=h["grad_norms"].at[k + 1].set(jnp.linalg.norm(gn)),
                 gammas=h["gammas"].at[k + 1].set(gam), trials=h["trials"].at[k].set(t),
                 accepted=h["accepted"].at[k].set(ok))
        return k + 1, xn, fn, gn, gam, h

    k, x, f, g, _, h = jax.lax.while_loop(cond, body, state)
    gnorm = jnp.linalg.norm(g)
    return GNSResult(x, f, gnorm, k, gnorm <= tol, h["values"], h["grad_norms"], h["gammas"], h["trials"], h["accepted"])
