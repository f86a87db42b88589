"""lgrad.analysis.attention_svm: the attention model, the Att-SVM solvers, normalised GD."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.analysis import attention_svm as asvm

pytest.importorskip("cvxpy")  # the solvers need the experiments extra


def _random_problem(seed, n=3, T=4, d=4):
    with jax.enable_x64(True):
        p = asvm.make_problem(jax.random.PRNGKey(seed), n, T, d)
        return asvm.AttentionProblem(*(np.asarray(a) for a in p))


# ----------------------------------------------------------------------------- model
def test_model_matches_numpy():
    p = _random_problem(0)
    W = np.random.default_rng(0).normal(size=(4, 4))
    logits = np.einsum("ntd,de,ne->nt", p.X, W, p.z)
    s = np.exp(logits - logits.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    f = np.einsum("nt,ntd,d->n", s, p.X, p.v)
    with jax.enable_x64(True):
        np.testing.assert_allclose(asvm.attention_output(W, p.X, p.z, p.v), f, rtol=1e-12)
        np.testing.assert_allclose(asvm.attention_loss(W, p), np.mean(np.log1p(np.exp(-p.y * f))), rtol=1e-12)
        np.testing.assert_array_equal(asvm.select_tokens(W, p.X, p.z), logits.argmax(1))
        np.testing.assert_array_equal(asvm.globally_optimal_tokens(p), (p.y[:, None] * (p.X @ p.v)).argmax(1))
        K, Q = W, W.T + 1.0
        np.testing.assert_allclose(asvm.combined_weight({"K": K, "Q": Q}), K.T @ Q)
        assert float(asvm.correlation(W, 3.0 * W)) == pytest.approx(1.0)
        assert float(asvm.correlation(W, -W)) == pytest.approx(-1.0)


def test_make_problem_is_unit_norm():
    p = _random_problem(1, n=5, T=6, d=7)
    np.testing.assert_allclose(np.linalg.norm(p.X, axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(p.z, axis=-1), 1.0, rtol=1e-12)
    assert np.linalg.norm(p.v) == pytest.approx(1.0)
    assert set(np.unique(p.y)) <= {-1.0, 1.0}


# ----------------------------------------------------------------------------- SVM
@pytest.mark.parametrize("seed", [0, 1])
def test_svm_constraints_hold_and_norms_are_optimal(seed):
    p = _random_problem(seed)
    opt = np.array([0, 2, 3])
    fro = asvm.att_svm(p.X, p.z, opt, norm="fro")
    nuc = asvm.att_svm(p.X, p.z, opt, norm="nuc")
    for sol in (fro, nuc):
        assert sol.min_margin >= 1 - 1e-6
        np.testing.assert_allclose(sol.margins, asvm.svm_margins(sol.W, p.X, p.z, opt))
        assert np.all(np.isinf(sol.margins[np.arange(3), opt]))
        assert sol.support.any()  # a minimum-norm solution touches its constraints
    assert fro.polished
    # each solution is (to solver accuracy) the best in its own norm
    assert fro.norm <= np.linalg.norm(nuc.W) + 1e-7
    assert nuc.norm <= np.sum(np.linalg.svd(fro.W, compute_uv=False)) + 1e-6
    # the Frobenius one is exact: a non-negative combination of its active constraint rows (KKT)
    A, idx = asvm._constraint_matrix(p.X, p.z, opt)
    act = np.abs(A @ fro.W.ravel() - 1) <= 1e-9
    mu, *_ = np.linalg.lstsq(A[act].T, fro.W.ravel(), rcond=None)
    np.testing.assert_allclose(A[act].T @ mu, fro.W.ravel(), atol=1e-10)
    assert np.all(mu >= -1e-10)


@settings(max_examples=4, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_two_token_svm_closed_form(d, seed):
    """n = 1, T = 2: the only constraint is a^T W z >= 1 with a = x_opt - x_other, whose
    minimum-norm solution (Frobenius and nuclear alike) is W = a z^T / (|a|^2 |z|^2)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(1, 2, d))
    z = rng.normal(size=(1, d))
    a = X[0, 1] - X[0, 0]
    expected = np.outer(a, z[0]) / (a @ a * (z[0] @ z[0]))
    for norm in ("fro", "nuc"):
        sol = asvm.att_svm(X, z, np.array([1]), norm=norm)
        assert sol.min_margin >= 1 - 1e-6
        assert float(asvm.correlation(sol.W, expected)) >= 1 - 1e-6
        np.testing.assert_allclose(sol.norm, 1.0 / (np.linalg.norm(a) * np.linalg.norm(z)), rtol=1e-5)


def test_locally_optimal_definition():
    p = _random_problem(3, n=2, T=3, d=3)
    opt = np.asarray(asvm.globally_optimal_tokens(p))
    sol = asvm.att_svm(p.X, p.z, opt, norm="fro")
    assert asvm.is_locally_optimal(p, opt, sol).all()  # the global tokens beat every token
    worst = np.asarray(jnp.argmin(asvm.token_scores(p), axis=-1))
    sol_w = asvm.att_svm(p.X, p.z, worst, norm="fro")
    assert not asvm.is_locally_optimal(p, worst, sol_w).any()  # the worst token loses to its support tokens


# ----------------------------------------------------------------------------- bad input
def test_infeasible_duplicate_token():
    p = _random_problem(0)
    X = p.X.copy()
    X[1, 3] = X[1, 0]  # a non-selected token equal to the selected one
    with pytest.raises(asvm.AttSVMInfeasible, match="infeasible"):
        asvm.att_svm(X, p.z, np.array([0, 0, 0]), norm="fro")


@pytest.mark.parametrize("norm", ["fro", "nuc"])
def test_infeasible_reported_by_solver(norm):
    # d = 1: margins (x_opt - x_t) w z >= 1 for x_t on both sides of x_opt cannot all hold.
    X = np.array([[[0.0], [-1.0], [1.0]]])
    z = np.array([[1.0]])
    with pytest.raises(asvm.AttSVMInfeasible):
        asvm.att_svm(X, z, np.array([0]), norm=norm)


def test_shape_and_argument_errors():
    p = _random_problem(0)
    opt = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="X must have shape"):
        asvm.att_svm(p.X[0], p.z, opt)
    with pytest.raises(ValueError, match="z must have shape"):
        asvm.att_svm(p.X, p.z[:, :2], opt)
    with pytest.raises(ValueError, match="opt must have shape"):
        asvm.att_svm(p.X, p.z, opt[:2])
    with pytest.raises(ValueError, match="token indices in"):
        asvm.att_svm(p.X, p.z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="integer"):
        asvm.att_svm(p.X, p.z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="norm"):
        asvm.att_svm(p.X, p.z, opt, norm="spectral")
    with pytest.raises(ValueError, match="T >= 2"):
        asvm.att_svm(p.X[:, :1], p.z, np.zeros(3, int))
    with pytest.raises(ValueError, match="finite"):
        asvm.att_svm(np.full_like(p.X, np.nan), p.z, opt)
    with pytest.raises(ValueError, match="v must have shape"):
        asvm.attention_output(np.eye(4), p.X, p.z, p.v[:3])
    with pytest.raises(ValueError, match="W must have shape"):
        asvm.attention_logits(np.eye(3), p.X, p.z)
    with pytest.raises(ValueError, match="same matrix shape"):
        asvm.correlation(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="parameterization"):
        asvm.init_params(jax.random.PRNGKey(0), 4, "QK")
    with pytest.raises(ValueError, match="T must be"):
        asvm.make_problem(jax.random.PRNGKey(0), 2, 1, 3)
    with pytest.raises(ValueError, match="learning_rate"):
        asvm.normalized_gd(-0.1)
    with pytest.raises(ValueError, match=r"params\['W'\] must have shape"):
        asvm.train_attention(p, {"W": jnp.zeros((3, 3))}, steps=1)
    with pytest.raises(ValueError, match="both 'K' and 'Q'"):
        asvm.train_attention(p, {"K": jnp.zeros((4, 4))}, steps=1)


# ----------------------------------------------------------------------------- normalised GD
def test_normalized_gd_step():
    g = {"K": jnp.array([[3.0, 4.0]]), "Q": jnp.array([[0.0, 2.0]])}
    tx = asvm.normalized_gd(0.1, eps=0.0)
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(u["K"], [[-0.06, -0.08]], rtol=1e-6)  # each leaf by its own norm
    np.testing.assert_allclose(u["Q"], [[0.0, -0.1]], rtol=1e-6)
    whole = asvm.normalized_gd(0.1, per_leaf=False, eps=0.0)
    u2, _ = whole.update(g, whole.init(g))
    n = np.sqrt(9 + 16 + 4)
    np.testing.assert_allclose(u2["K"], -0.1 * np.array([[3.0, 4.0]]) / n, rtol=1e-6)
    # the one-line optax equivalent for a single W
    w = jnp.array([[1.0, -2.0], [0.5, 0.0]])
    ref, _ = optax.normalize_by_update_norm(scale_factor=-0.1, eps=0.0).update(w, optax.EmptyState())
    np.testing.assert_allclose(tx.update(w, tx.init(w))[0], ref)


def _train(seed, S=3, steps=30):
    with jax.enable_x64(True):
        prob = jax.vmap(lambda k: asvm.make_problem(k, 3, 4, 4))(jax.random.split(jax.random.PRNGKey(seed), S))
        params = jax.vmap(lambda k: asvm.init_params(k, 4, "both"))(jax.random.split(jax.random.PRNGKey(seed + 1), S))
        res = asvm.train_attention(prob, params, steps=steps, eval_every=10)
        params = jax.tree.map(np.asarray, params)
        res.state = jax.tree.map(np.asarray, res.state)
        return prob, params, res


def test_gd_is_deterministic_by_seed_and_follows_the_rule():
    prob, params, a = _train(0)
    _, _, b = _train(0)
    _, _, c = _train(5)
    for k in ("W", "K", "Q"):
        np.testing.assert_array_equal(a.params[k], b.params[k])
        assert not np.allclose(a.params[k], c.params[k])
    assert a.evals["W"].shape == (4, 3, 4, 4) and list(a.eval_steps) == [0, 10, 20, 30]
    np.testing.assert_allclose(a.evals["KQ"][-1], np.swapaxes(a.params["K"], -1, -2) @ a.params["Q"])
    # each step moves each array by exactly the learning rate (normalised GD), so |W_T - W_0| <= 0.1 T
    step = np.linalg.norm(a.params["W"] - params["W"], axis=(-2, -1))
    assert np.all(step <= 0.1 * 30 + 1e-9) and np.all(step > 0.1 * 30 * 0.5)
    # the loss of the W model goes down and attention concentrates
    assert np.all(a.history["loss_W"][-1] < a.history["loss_W"][0])
    assert np.all(a.history["maxprob_W"][-1] > a.history["maxprob_W"][0])
