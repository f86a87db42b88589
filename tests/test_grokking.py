"""Li₂ pieces: the ridge-solved layer, the loss, determinism of a tiny run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.grokking_scaling import CONFIGS, critical_fraction, make_cell, modular_addition
from lgrad.local import ridge_solve


def test_ridge_matches_lstsq_reference():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 7))
    y = rng.normal(size=(40, 3))
    w = (rng.random(40) < 0.6).astype(np.float64)
    eta = 1e-2
    with jax.enable_x64(True):
        v = np.asarray(ridge_solve(jnp.asarray(f), jnp.asarray(y), eta, weights=jnp.asarray(w)))
    # Reference: ordinary least squares on the augmented system [sqrt(w) F; sqrt(eta) I].
    a = np.vstack([np.sqrt(w)[:, None] * f, np.sqrt(eta) * np.eye(7)])
    b = np.vstack([np.sqrt(w)[:, None] * y, np.zeros((7, 3))])
    ref = np.linalg.lstsq(a, b, rcond=None)[0].T
    np.testing.assert_allclose(v, ref, rtol=1e-9, atol=1e-10)


def test_ridge_dual_form_matches_lstsq_reference():
    """Fewer rows than features (N < K): the (N, N) dual solve gives the primal solution."""
    rng = np.random.default_rng(1)
    f = rng.normal(size=(6, 11))
    y = rng.normal(size=(6, 3))
    w = np.array([1.0, 0.0, 0.3, 1.0, 2.0, 0.0])
    eta = 1e-2
    with jax.enable_x64(True):
        v = np.asarray(ridge_solve(jnp.asarray(f), jnp.asarray(y), eta, weights=jnp.asarray(w)))
        v_grad = np.asarray(ridge_solve(jnp.asarray(f), jnp.asarray(y), eta, weights=jnp.asarray(w), stop_gradient=False))
    ref = np.linalg.solve(f.T @ (w[:, None] * f) + eta * np.eye(11), f.T @ (w[:, None] * y)).T
    np.testing.assert_allclose(v, ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(v_grad, ref, rtol=1e-9, atol=1e-10)


def test_ridge_has_no_gradient_and_validates():
    f = jnp.ones((4, 2))
    y = jnp.ones((4, 1))
    g = jax.grad(lambda x: ridge_solve(x, y, 1e-3).sum())(f)
    assert float(jnp.abs(g).sum()) == 0.0
    with pytest.raises(ValueError, match="ridge"):
        ridge_solve(f, y, 0.0)
    with pytest.raises(ValueError, match="same N"):
        ridge_solve(f, jnp.ones((3, 1)), 1e-3)
    with pytest.raises(ValueError, match="weights"):
        ridge_solve(f, y, 1e-3, weights=jnp.ones(3))


def _numpy_loss(w, mask, m, eta):
    a, b, y = modular_addition(m)
    h = w[:, a].T + w[:, m + b].T
    f = h * h
    t = np.eye(m)[y] - 1.0 / m
    d = mask
    v = np.linalg.solve(f.T @ (d[:, None] * f) + eta * np.eye(f.shape[1]), f.T @ (d[:, None] * t)).T
    o = f @ v.T
    r = o - o.mean(1, keepdims=True) - t
    return float(np.sum(d * np.sum(r * r, 1)) / np.sum(d))


def test_loss_matches_numpy_reference():
    m = 5
    cfg = dict(CONFIGS["quick"], hidden=6)
    with jax.enable_x64(True):
        init, step, evaluate = make_cell(m, cfg)
        cell = init(jnp.asarray(0.6), jax.random.PRNGKey(3))
        _, metrics = step(cell)
        want = _numpy_loss(np.asarray(cell["w"]), np.asarray(cell["mask"]), m, cfg["ridge"])
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-8)


def test_tiny_run_is_deterministic_by_seed():
    m = 5
    cfg = dict(CONFIGS["quick"], hidden=8)
    init, step, evaluate = make_cell(m, cfg)
    run = jax.jit(lambda key: evaluate(jax.lax.fori_loop(0, 30, lambda i, c: step(c)[0], init(jnp.asarray(0.8), key))))
    a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1))
    assert float(a["test_acc"]) == float(b["test_acc"]) and float(a["train_acc"]) == float(b["train_acc"])
    mask = init(jnp.asarray(0.8), jax.random.PRNGKey(1))["mask"]
    assert int(mask.sum()) == round(0.8 * 25)


def test_critical_fraction_values():
    assert abs(critical_fraction(23) - 2.7482 * np.log(23) / 23) < 1e-12
    assert 0.37 < critical_fraction(23) < 0.38 and 0.26 < critical_fraction(37) < 0.27


def test_gathered_rows_give_the_same_loss_and_accuracy():
    from experiments.grokking_scaling import train_rows

    m = 7
    cfg = dict(CONFIGS["quick"], hidden=6)
    rows = train_rows(m, 1.0)
    assert rows < m * m and rows >= round(critical_fraction(m) * m * m)
    with jax.enable_x64(True):
        full, part = make_cell(m, cfg), make_cell(m, cfg, rows)
        frac = jnp.asarray(critical_fraction(m))
        a, b = full[0](frac, jax.random.PRNGKey(2)), part[0](frac, jax.random.PRNGKey(2))
        np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
        (a2, la), (b2, lb) = full[1](a), part[1](b)
        np.testing.assert_allclose(float(la["loss"]), float(lb["loss"]), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(a2["w"]), np.asarray(b2["w"]), rtol=1e-8, atol=1e-12)
        ea, eb = full[2](a2), part[2](b2)
        assert float(ea["test_acc"]) == float(eb["test_acc"]) and float(ea["train_acc"]) == float(eb["train_acc"])


def test_boundary_interval_and_open_ends():
    from experiments.grokking_scaling import _boundary

    mult = np.array([0.6, 0.8, 1.0, 1.2])
    test = np.array([[0.0, 0.0], [1.0, 0.2], [1.0, 1.0], [1.0, 0.99]])
    b = _boundary(mult, test, 0.3, 0.95)
    assert b["largest_failing_multiple"] == 0.8 and b["smallest_generalising_multiple"] == 1.0
    np.testing.assert_allclose(b["fraction_interval"], [0.24, 0.3])
    none = _boundary(mult, np.zeros((4, 2)), 0.3, 0.95)
    assert none["smallest_generalising_multiple"] is None and none["fraction_interval"] == [0.36, None]
    # a failing top multiple: the generalising run below it does not count as a boundary
    dip = _boundary(mult, np.array([[0.0] * 2, [1.0] * 2, [1.0] * 2, [0.5] * 2]), 0.3, 0.95)
    assert dip["smallest_generalising_multiple"] is None


def _intervals(fractions, width=1.2):
    return {m: {"fraction_interval": [f / width**0.5, f * width**0.5]} for m, f in fractions.items()}


def test_law_comparison_can_fail_and_pass():
    from experiments.grokking_scaling import CRITERIA, _compare_hypotheses

    LAW_MARGIN = CRITERIA["law_margin"]

    ms = [23, 37, 53]
    law = _compare_hypotheses(_intervals({m: 2.7 * np.log(m) / m for m in ms}))
    const = _compare_hypotheses(_intervals({m: 0.3 for m in ms}))
    assert law["advantage_of_law"] >= LAW_MARGIN and law["rms_log_residual_scaling_law"] == 0.0
    assert const["advantage_of_law"] < 0 and const["rms_log_residual_constant"] == 0.0
    assert 2.5 < law["fitted_c_logM_over_M"] < 2.9
    # open intervals (no generalising multiple at the largest M) still constrain the fit
    open_top = _intervals({m: 0.3 for m in ms})
    open_top[53]["fraction_interval"] = [0.3, None]
    assert _compare_hypotheses(open_top)["advantage_of_law"] < LAW_MARGIN


def test_claims_from_hand_made_measurements():
    """``claims`` alone, on measurements as read back from JSON: M = 13, 31, 97 memorise
    at 0.6x, generalise from 1.25x (a boundary at a fixed multiple follows the law)."""
    from experiments.grokking_scaling import claims

    config = dict(CONFIGS["quick"], moduli=[13, 31, 97], multiples=[0.6, 1.0, 1.25, 1.5], n_seeds=2)
    test = [[0.0, 0.03125], [0.5, 0.4], [1.0, 0.97], [1.0, 1.0]]
    train = [[1.0, 1.0]] * 4
    finals = {str(m): {"train_acc": train, "test_acc": test} for m in config["moduli"]}
    out = {c.id: c for c in claims({"finals": finals}, config)}
    assert out["memorise-below"].passed and out["memorise-below"].measured == {"max_test_acc": 0.03125, "min_train_acc": 1.0}
    assert out["generalise-above"].passed and out["generalise-above"].measured == 1.0
    assert out["scaling-law-beats-constant"].passed
    assert out["boundary-per-M"].measured["13"]["smallest_generalising_multiple"] == 1.25
    # a constant boundary fraction (0.3 for every M) fails the law claim
    config = dict(config, multiples=[0.5, 0.6, 0.72, 0.86, 1.04, 1.25, 1.5, 2.0, 2.5])
    finals = {
        str(m): {"train_acc": [[1.0, 1.0]] * 9, "test_acc": [[float(x * critical_fraction(m) >= 0.3)] * 2 for x in config["multiples"]]}
        for m in config["moduli"]
    }
    law = {c.id: c for c in claims({"finals": finals}, config)}["scaling-law-beats-constant"]
    assert not law.passed and law.measured["rms_log_residual_constant"] == 0.0
