"""lgrad.solvers.gns_newton against scipy (the independent reference), on pytrees, all solvers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from lgrad.analysis.hessian import gauss_newton_operator, matrix_operator
from lgrad.solvers import gns_newton


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _logistic_problem(n=200, d=8, seed=0, l2=1e-2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ rng.standard_normal(d)))).astype(float)

    def f_np(w):
        z = x @ w
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w

    def g_np(w):
        return x.T @ (1 / (1 + np.exp(-x @ w)) - y) / n + l2 * w

    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def f(w):
        z = xj @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - yj * z) + 0.5 * l2 * jnp.sum(w**2)

    ref = scipy.optimize.minimize(f_np, np.zeros(d), jac=g_np, method="BFGS", options={"gtol": 1e-11}).x
    return f, x, y, ref


def test_exact_hessian_matches_scipy_and_is_monotone():
    f, _, _, ref = _logistic_problem()
    res = gns_newton(f, jnp.zeros(8), tol=1e-10, max_iter=50)
    assert bool(res.converged) and int(res.iterations) <= 20
    np.testing.assert_allclose(np.asarray(res.params), ref, atol=1e-7)
    vals = np.asarray(res.values)[: int(res.iterations) + 1]
    assert np.all(np.diff(vals) <= 1e-15)
    assert np.all(np.asarray(res.accepted)[: int(res.iterations)])


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_pytree_params_and_both_linear_solvers(solver):
    a = jnp.array([[3.0, 1.0], [1.0, 2.0]])

    def f(p):
        return 0.5 * p["w"] @ a @ p["w"] + jnp.sum(jnp.exp(-p["w"])) + jnp.sum(jnp.cosh(p["b"] - 1.0))

    res = gns_newton(f, {"w": jnp.zeros(2), "b": jnp.zeros((3,))}, linear_solver=solver, tol=1e-9)
    flat = lambda v: float(f({"w": jnp.asarray(v[:2]), "b": jnp.asarray(v[2:])}))  # noqa: E731
    ref = scipy.optimize.minimize(flat, np.zeros(5), method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000}).x
    got = np.concatenate([np.asarray(res.params["w"]), np.asarray(res.params["b"])])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.params["b"]), 1.0, atol=1e-9)
    assert float(res.grad_norm) <= 1e-9


def test_approximate_curvature_operator_and_metric():
    """Gauss-Newton (== Hessian for a linear model with MSE) via lgrad.analysis.hessian, and a metric B."""
    f, x, y, ref = _logistic_problem(d=6)
    bound = x.T @ x / (4 * len(y)) + 1e-2 * np.eye(6)
    res = gns_newton(f, jnp.zeros(6), curvature=lambda p: matrix_operator(jnp.asarray(bound)),
                     metric=np.eye(6) * 2.0, tol=1e-9, max_iter=500)
    np.testing.assert_allclose(np.asarray(res.params), ref, atol=1e-6)

    # least squares: the GN operator is exact, one accepted Newton-like iteration family converges fast
    rng = np.random.default_rng(1)
    xa, ya = jnp.asarray(rng.standard_normal((30, 4))), jnp.asarray(rng.standard_normal((30, 1)))
    predict = lambda w, xs: xs @ w  # noqa: E731
    loss = lambda w: 0.5 * jnp.mean(jnp.sum((predict(w, xa) - ya) ** 2, -1))  # noqa: E731
    res = gns_newton(loss, jnp.zeros((4, 1)), curvature=lambda w: gauss_newton_operator(predict, w, (xa, ya), loss="mse"),
                     tol=1e-10)
    lstsq = np.linalg.lstsq(np.asarray(xa), np.asarray(ya), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(res.params), lstsq, atol=1e-8)


def test_nonconvex_rosenbrock_reaches_scipy_minimum():
    """2-D Rosenbrock (indefinite Hessian away from the valley; one minimum, (1, 1))."""
    f = lambda v: jnp.sum(100.0 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2)  # noqa: E731
    res = gns_newton(f, jnp.array([-1.2, 1.0]), max_iter=500, tol=1e-8)
    assert bool(res.converged)
    ref = scipy.optimize.minimize(lambda v: float(f(jnp.asarray(v))), np.array([-1.2, 1.0]),
                                  jac=lambda v: np.asarray(jax.grad(f)(jnp.asarray(v))), method="BFGS",
                                  options={"gtol": 1e-10}).x
    np.testing.assert_allclose(np.asarray(res.params), ref, atol=1e-6)
    vals = np.asarray(res.values)[: int(res.iterations) + 1]
    assert np.all(np.diff(vals) <= 1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(curvature="fisher"), "curvature must be"),
        (dict(linear_solver="lu"), "linear_solver must be one of"),
        (dict(max_iter=0), "max_iter must be >= 1"),
        (dict(tol=-1.0), "tol must be > 0"),
        (dict(metric=np.eye(3)), r"metric must be None or an \(2, 2\) matrix"),
        (dict(curvature=lambda p: matrix_operator(jnp.eye(3))), "LinearOperator of dim 2"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gns_newton(lambda v: jnp.sum(v**2), jnp.zeros(2), **kwargs)
