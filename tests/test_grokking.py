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
