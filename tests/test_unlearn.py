"""lgrad.unlearn: objectives, staged training, RE distance, bad inputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.unlearn import (
    Stage,
    check_order,
    class_logprob,
    gradient_ascent_loss,
    npo_loss,
    re_distance,
    sequence_logprob,
    simnpo_loss,
    train_stages,
    unlearn,
    unlearning_loss,
)

FAST = settings(max_examples=25, deadline=None)


# ---- staged training vs the closed forms of PAPERS.md A4 -----------------------------
def _linear_problem(seed=0, d=8, n=3):
    rng = np.random.default_rng(seed)
    xa, xb = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    ya, yb = rng.standard_normal(n), rng.standard_normal(n)
    return xa, ya, xb, yb


def _sq(theta, batch):
    x, y = batch
    return jnp.sum(jnp.square(x @ theta - y))


def test_staged_runner_matches_closed_form_theta_A_theta_AB_theta_BA():
    mu = 1.0
    xa, ya, xb, yb = _linear_problem()
    d = xa.shape[1]
    eye = np.eye(d)
    th_a = np.linalg.solve(xa.T @ xa + mu * eye, xa.T @ ya)
    th_b = np.linalg.solve(xb.T @ xb + mu * eye, xb.T @ yb)
    th_ab = np.linalg.solve(xb.T @ xb + mu * eye, xb.T @ yb + mu * th_a)
    th_ba = np.linalg.solve(xa.T @ xa + mu * eye, xa.T @ ya + mu * th_b)
    lmax = max(np.linalg.eigvalsh(x.T @ x).max() for x in (xa, xb))
    lr = 1.0 / (2 * (lmax + mu))
    with jax.enable_x64(True):
        stages = [
            Stage((jnp.asarray(xa), jnp.asarray(ya)), 3000, optax.sgd(lr), "A", proximal=mu),
            Stage((jnp.asarray(xb), jnp.asarray(yb)), 3000, optax.sgd(lr), "B", proximal=mu),
        ]
        ab = train_stages(_sq, jnp.zeros(d), stages, order=(0, 1))
        ba = train_stages(_sq, jnp.zeros(d), stages, order=(1, 0))
    np.testing.assert_allclose(ab.stage_params[0], th_a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ab.params, th_ab, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ba.stage_params[0], th_b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ba.params, th_ba, rtol=1e-9, atol=1e-12)
    assert ab.order == (0, 1) and ba.order == (1, 0)
    assert np.linalg.norm(np.asarray(ab.params) - np.asarray(ba.params)) > 1e-3  # the order matters


def test_prefix_cache_reuses_and_agrees():
    xa, ya, xb, yb = _linear_problem(1, d=4, n=2)
    stages = [Stage((jnp.asarray(x), jnp.asarray(y)), 20, optax.sgd(0.01)) for x, y in ((xa, ya), (xb, yb), (xa, yb))]
    cache: dict = {}
    r1 = train_stages(_sq, jnp.zeros(4), stages, (2, 0, 1), cache=cache)
    assert set(cache) == {(2,), (2, 0), (2, 0, 1)}
    r2 = train_stages(_sq, jnp.zeros(4), stages, (2, 0), cache=cache)
    np.testing.assert_array_equal(r2.params, r1.stage_params[1])


def test_ga_lemma_linear_float64():
    """Delta_t = (I + M_U)^t Delta_0 for GA unlearning (PAPERS.md A4 lemma)."""
    rng = np.random.default_rng(3)
    d, k, eta, T = 6, 2, 0.05, 8
    xu, yu = rng.standard_normal((k, d)), rng.standard_normal(k)
    t1, t2 = rng.standard_normal(d), rng.standard_normal(d)
    logp = lambda th, b: -jnp.square(b[0] @ th - b[1])
    with jax.enable_x64(True):
        data = (jnp.asarray(xu), jnp.asarray(yu))
        h1 = unlearn("ga", logp, jnp.asarray(t1), data, optax.sgd(eta), steps=T, record_params=True).history["params"]
        h2 = unlearn("ga", logp, jnp.asarray(t2), data, optax.sgd(eta), steps=T, record_params=True).history["params"]
    m = (2 * eta / k) * xu.T @ xu
    want = np.linalg.matrix_power(np.eye(d) + m, T) @ (t1 - t2)
    np.testing.assert_allclose(np.asarray(h1[-1] - h2[-1]), want, rtol=1e-10)


# ---- objectives --------------------------------------------------------------
def _toy_logp(w, x, y):
    return class_logprob(x @ w, y)


@FAST
@given(seed=st.integers(0, 10_000), beta=st.floats(0.05, 5.0))
def test_npo_gradient_is_ga_gradient_weighted(seed, beta):
    """grad NPO = mean_i 2 sigma(beta (logp_i - ref_i)) grad logp_i (Zhang et al. 2024, Eq. 4)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 5))
    w = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    ref = _toy_logp(jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), x, y)
    g_npo = jax.grad(lambda w: npo_loss(_toy_logp(w, x, y), ref, beta=beta))(w)
    per = jax.jacobian(lambda w: _toy_logp(w, x, y))(w)  # (5, 3, 4)
    wts = 2 * jax.nn.sigmoid(beta * (_toy_logp(w, x, y) - ref))
    want = jnp.einsum("i,ijk->jk", wts, per) / 5
    np.testing.assert_allclose(g_npo, want, rtol=2e-4, atol=1e-5)


def test_npo_gradient_tends_to_ga_as_beta_to_0():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 6))
    w = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    ref = _toy_logp(jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), x, y)
    g_ga = jax.grad(lambda w: gradient_ascent_loss(_toy_logp(w, x, y)))(w)
    errs = []
    for beta in (1.0, 1e-2, 1e-4):
        g = jax.grad(lambda w: npo_loss(_toy_logp(w, x, y), ref, beta=beta))(w)
        errs.append(float(jnp.linalg.norm(g - g_ga) / jnp.linalg.norm(g_ga)))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3  # weights 2 sigma(beta r) -> 1
    # NPO with ref = current model: weights exactly 1 -> GA's gradient for every beta.
    g_self = jax.grad(lambda v: npo_loss(_toy_logp(v, x, y), _toy_logp(w, x, y), beta=2.0))(w)
    np.testing.assert_allclose(g_self, g_ga, rtol=1e-5, atol=1e-6)


def _simnpo_np(logp, beta, gamma=0.0, lengths=None):
    logp = np.asarray(logp, np.float64)
    lengths = np.ones_like(logp) if lengths is None else np.asarray(lengths, np.float64)
    z = -beta * logp / lengths - gamma
    return float(np.mean(-(2.0 / beta) * np.log(1.0 / (1.0 + np.exp(-z)))))


@FAST
@given(
    logp=st.lists(st.floats(-30.0, 0.0), min_size=1, max_size=8),
    beta=st.floats(0.05, 4.0),
    gamma=st.floats(0.0, 2.0),
    use_len=st.booleans(),
)
def test_simnpo_matches_numpy_reference(logp, beta, gamma, use_len):
    lengths = np.arange(1, len(logp) + 1, dtype=np.float32) if use_len else None
    got = float(simnpo_loss(jnp.asarray(logp, jnp.float32), beta=beta, gamma=gamma, lengths=lengths))
    assert got == pytest.approx(_simnpo_np(logp, beta, gamma, lengths), rel=1e-5, abs=1e-5)


@FAST
@given(logp=st.lists(st.floats(-20.0, 0.0), min_size=1, max_size=8), ref=st.floats(-20.0, 0.0), beta=st.floats(0.05, 4.0))
def test_npo_matches_numpy_reference(logp, ref, beta):
    lp = np.asarray(logp, np.float64)
    want = np.mean(-(2.0 / beta) * np.log(1.0 / (1.0 + np.exp(beta * (lp - ref)))))
    got = float(npo_loss(jnp.asarray(logp, jnp.float32), jnp.full(len(logp), ref, jnp.float32), beta=beta))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_sequence_logprob_and_ga():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
    tgt = jnp.array([[0, 1]])
    np.testing.assert_allclose(sequence_logprob(logits, tgt), [np.log(0.5) + np.log(0.75)], rtol=1e-6)
    np.testing.assert_allclose(sequence_logprob(logits, tgt, jnp.array([[0, 1]])), [np.log(0.75)], rtol=1e-6)
    assert float(gradient_ascent_loss(jnp.array([-1.0, -2.0]))) == pytest.approx(-1.5)


@FAST
@given(seed=st.integers(0, 1000), m=st.integers(1, 6), c=st.integers(1, 4))
def test_re_distance_matches_numpy(seed, m, c):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((m, c)), rng.standard_normal((m, c))
    want = np.mean(np.sum((a - b) ** 2, axis=1))
    assert float(re_distance(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))) == pytest.approx(want, rel=1e-5)


def test_batched_unlearning_equals_separate_runs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 6))
    ws = [jnp.asarray(rng.standard_normal((3, 4)), jnp.float32) for _ in range(2)]
    lp = lambda w, b: class_logprob(b[0] @ w, b[1])
    tx = optax.adam(0.05)
    sep = [unlearn("npo", lp, w, (x, y), tx, steps=4).params for w in ws]
    bat = unlearn("npo", lp, jnp.stack(ws), (x, y), tx, steps=4, batched=True).params
    np.testing.assert_allclose(bat, jnp.stack(sep), rtol=1e-5, atol=1e-6)
    # unlearn's NPO (reference log-probs precomputed) == fit on unlearning_loss (reference model in the loss)
    from lgrad.train import fit

    ref = fit(unlearning_loss("npo", lp, ref_params=ws[0]), ws[0], tx, steps=4, data=(x, y)).params
    np.testing.assert_allclose(sep[0], ref, rtol=1e-5, atol=1e-6)


# ---- bad inputs ----------------------------------------------------------------
def test_empty_forget_set_raises():
    empty = jnp.zeros((0,))
    for fn in (gradient_ascent_loss, simnpo_loss):
        with pytest.raises(ValueError, match="empty"):
            fn(empty)
    with pytest.raises(ValueError, match="empty"):
        npo_loss(empty, empty)
    lp = lambda w, b: class_logprob(b[0] @ w, b[1])
    with pytest.raises(ValueError, match="forget_data is empty"):
        unlearn("ga", lp, jnp.zeros((3, 2)), (jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)), optax.sgd(0.1), steps=1)


@pytest.mark.parametrize("beta", [0.0, -0.5])
def test_nonpositive_beta_raises(beta):
    lp = jnp.array([-1.0])
    with pytest.raises(ValueError, match="beta"):
        npo_loss(lp, lp, beta=beta)
    with pytest.raises(ValueError, match="beta"):
        simnpo_loss(lp, beta=beta)
    for m in ("npo", "simnpo"):
        with pytest.raises(ValueError, match="beta"):
            unlearning_loss(m, lambda p, b: p, beta=beta, ref_params=jnp.zeros(1))


def test_bad_orders_raise():
    stages = [Stage(jnp.ones((1, 2)), 1, optax.sgd(0.1)) for _ in range(3)]
    loss = lambda p, b: jnp.sum(b @ p)
    with pytest.raises(ValueError, match="repeat"):
        train_stages(loss, jnp.zeros(2), stages, (0, 1, 1))
    with pytest.raises(ValueError, match="repeat"):
        check_order([2, 0, 2], 3)
    with pytest.raises(ValueError, match="outside"):
        check_order([0, 3], 3)
    with pytest.raises(ValueError, match="at least one"):
        check_order([], 3)
    with pytest.raises(ValueError, match="method"):
        unlearning_loss("kl", lambda p, b: p)
    with pytest.raises(ValueError, match="ref_params"):
        unlearning_loss("npo", lambda p, b: p)
