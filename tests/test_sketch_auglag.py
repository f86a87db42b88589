"""lgrad.solvers.sketch_auglag against scipy (trust-constr / closed forms), all linear solvers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from lgrad.solvers import sketch_auglag
from lgrad.solvers._auglag import _Opts, _sketch_solve


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("solver", ["exact", "kaczmarz", "gaussian"])
def test_equality_constrained_quadratic_closed_form(solver):
    """min |x - t|^2 s.t. A x = b: x* = t - A^T (A A^T)^{-1} (A t - b)."""
    rng = np.random.default_rng(0)
    a, t = rng.standard_normal((2, 5)), rng.standard_normal(5)
    b = rng.standard_normal(2)
    f = lambda x: jnp.sum((x - jnp.asarray(t)) ** 2)  # noqa: E731
    c = lambda x: jnp.asarray(a) @ x - jnp.asarray(b)  # noqa: E731
    res = sketch_auglag(f, c, jnp.zeros(5), jnp.zeros(2), key=jax.random.PRNGKey(1), solver=solver, tol=1e-9)
    want = t - a.T @ np.linalg.solve(a @ a.T, a @ t - b)
    assert bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.params), want, atol=1e-8)
    k = int(res.iterations)
    assert np.all(np.asarray(res.descent)[:k]) and np.all(np.asarray(res.accurate)[:k])


def test_nonconvex_sphere_problem_matches_trust_constr_on_pytrees():
    """min sum(q * x^2) + l.x on the unit sphere, params as a dict."""
    rng = np.random.default_rng(2)
    q, lin = rng.uniform(0.5, 2.0, 6), rng.standard_normal(6)
    f = lambda p: jnp.sum(jnp.asarray(q[:3]) * p["u"] ** 2) + jnp.sum(jnp.asarray(q[3:]) * p["v"] ** 2) + (  # noqa: E731
        jnp.asarray(lin[:3]) @ p["u"] + jnp.asarray(lin[3:]) @ p["v"])
    c = lambda p: jnp.array([p["u"] @ p["u"] + p["v"] @ p["v"] - 1.0])  # noqa: E731
    x0 = {"u": jnp.full(3, 0.5), "v": jnp.full(3, 0.5)}
    res = sketch_auglag(f, c, x0, jnp.ones(1), key=jax.random.PRNGKey(0), tol=1e-8)
    assert bool(res.converged)
    got = np.concatenate([np.asarray(res.params["u"]), np.asarray(res.params["v"])])
    ref = scipy.optimize.minimize(
        lambda x: float(np.sum(q * x**2) + lin @ x), np.full(6, 0.5), jac=lambda x: 2 * q * x + lin,
        method="trust-constr", options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000},
        constraints=[scipy.optimize.NonlinearConstraint(lambda x: x @ x, 1, 1, jac=lambda x: 2 * x[None],
                                                        hess=lambda x, v: 2 * v[0] * np.eye(6))]).x
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got @ got, 1.0, atol=1e-8)


@pytest.mark.parametrize("solver", ["kaczmarz", "gaussian"])
def test_sketch_solvers_reach_the_requested_residual(solver):
    rng = np.random.default_rng(3)
    k = rng.standard_normal((8, 8)) + 4 * np.eye(8)
    rhs = rng.standard_normal(8)
    opts = _Opts(1.0, 0.1, 0.1, 0.1, 0.1, 1.5, 1.0, 1e-4, 10, 500_000, 10, 10, solver)
    z, it, met, flops = jax.jit(lambda a, r: _sketch_solve(a, r, 1e-9, jax.random.PRNGKey(0), opts))(
        jnp.asarray(k), jnp.asarray(rhs))
    assert bool(met) and int(it) > 0 and float(flops) > 0
    np.testing.assert_allclose(np.asarray(z), np.linalg.solve(k, rhs), atol=1e-7)


def test_descent_failure_adapts_the_penalties():
    """A tiny eta1 far from feasibility on a nonconvex objective: the descent test fails until
    eta1 has grown; the safeguard fires (indefinite reduced Hessian); the run still converges."""
    f = lambda x: -jnp.sum(x**2) + 0.05 * jnp.sum(x**2) ** 2  # noqa: E731
    c = lambda x: jnp.array([x[0] + x[1] - 1.0, x[1] - x[2]])  # noqa: E731
    res = sketch_auglag(f, c, jnp.array([3.0, -2.0, 5.0, 1.0]), jnp.zeros(2), key=jax.random.PRNGKey(0),
                        solver="exact", eta1=1e-3, max_iter=100, tol=1e-8)
    k = int(res.iterations)
    assert bool(res.converged)
    assert float(res.eta1[0]) > 1e-3 and float(res.eta2[0]) < 0.1  # adapted at the first iteration
    assert np.all(np.asarray(res.descent)[:k]) and np.any(np.asarray(res.safeguard)[:k])
    np.testing.assert_allclose(np.asarray(c(res.params)), 0.0, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solver="cholesky"), "solver must be one of"),
        (dict(beta=0.7), r"beta must lie in \(0, 0.5\)"),
        (dict(nu=1.0), "nu must be > 1"),
        (dict(tol=0.0), "tol must be > 0"),
        (dict(max_inner=0), "max_inner must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sketch_auglag(lambda x: jnp.sum(x**2), lambda x: jnp.array([jnp.sum(x) - 1.0]), jnp.zeros(3), jnp.zeros(1),
                      key=jax.random.PRNGKey(0), **kwargs)


def test_multiplier_shape_is_checked():
    with pytest.raises(ValueError, match=r"multipliers must have shape \(1,\)"):
        sketch_auglag(lambda x: jnp.sum(x**2), lambda x: jnp.array([jnp.sum(x) - 1.0]), jnp.zeros(3), jnp.zeros(2),
                      key=jax.random.PRNGKey(0))


def test_experiment_claims_from_hand_made_measurements():
    """The sketch-auglag experiment's ``claims`` alone, on measurements as read back from JSON."""
    from experiments import sketch_auglag as exp

    def run(kkt, steps, descent=True):
        return {"kkt": kkt, "f": 0.5, "iterations": len(steps), "distance": 3e-9, "step": steps, "descent": [descent] * len(steps),
                "accurate": [True] * len(steps), "sketch_iterations": 10, "solver_flops": 1e4, "eta1_final": 1.0,
                "safeguard_iterations": 0}

    m = {"reference": {"f": 0.5, "status": 1, "feasibility": 1e-12},
         "runs": {"kaczmarz/key0": run(1e-6, [0.5, 1.0, 1.0, 1.0]), "gaussian/key0": run(2e-6, [1.0] * 3), "exact": run(1e-9, [1.0] * 3)}}
    config = dict(exp.CONFIGS["quick"], n_sketch_seeds=1)
    out = {c.id: c for c in exp.claims(m, config)}
    assert all(out[k].passed for k in ("kkt-residual", "matches-trust-constr", "descent-and-accuracy", "unit-step-at-end"))
    assert out["kkt-residual"].measured == 2e-6 and out["unit-step-at-end"].measured["kaczmarz/key0"] == [1.0, 1.0, 1.0]
    m["runs"]["kaczmarz/key0"] = run(1e-3, [1.0, 0.5], descent=False)
    out = {c.id: c for c in exp.claims(m, config)}
    assert not any(out[k].passed for k in ("kkt-residual", "descent-and-accuracy", "unit-step-at-end"))
