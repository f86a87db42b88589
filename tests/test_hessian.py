"""lgrad.analysis.hessian: HVPs, exact Hessians, Lanczos, SLQ, traces, GN/Fisher, masks."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.analysis import hessian as hs


def _mlp_params(key, d=4, h=5, c=3):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "l1": {"w": jax.random.normal(k1, (d, h)) / 2, "b": jax.random.normal(k3, (h,)) * 0.1},
        "l2": {"w": jax.random.normal(k2, (h, c)) / 2, "b": jnp.zeros(c)},
    }


def _predict(p, x):
    return jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] + p["l2"]["b"]


def _data(key, n=16, d=4, c=3):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, d)), jax.random.randint(ky, (n,), 0, c)


CE = hs.cross_entropy_loss(_predict)


def _dense_reference(loss, params, batch):
    flat, unravel = hs.ravel_pytree(params)
    return jax.jit(jax.hessian(lambda f, b: loss(unravel(f), b)))(flat, batch)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def test_hvp_and_hessian_matrix_match_jax_hessian(x64):
    params, batch = _mlp_params(jax.random.PRNGKey(0)), _data(jax.random.PRNGKey(1))
    ref = _dense_reference(CE, params, batch)
    h = hs.hessian_matrix(CE, params, batch, batch_size=43)
    np.testing.assert_allclose(h, ref, atol=1e-10)
    v = jax.tree.map(jnp.ones_like, params)
    out = hs.ravel_pytree(hs.hvp(CE, params, batch, v))[0]
    np.testing.assert_allclose(out, ref @ hs.ravel_pytree(v)[0], atol=1e-10)


def test_lanczos_top_and_bottom_match_eigh_on_random_model(x64):
    params, batch = _mlp_params(jax.random.PRNGKey(2)), _data(jax.random.PRNGKey(3))
    op = hs.hessian_operator(CE, params, batch)
    ev, vecs = jnp.linalg.eigh(hs.dense_matrix(op))
    top = hs.lanczos(op, 5, key=jax.random.PRNGKey(0), num_iters=op.dim)
    np.testing.assert_allclose(top.eigenvalues, ev[::-1][:5], rtol=1e-8, atol=1e-10)
    bot = hs.lanczos(hs.matrix_operator(hs.dense_matrix(op)), 3, key=jax.random.PRNGKey(0), which="bottom", num_iters=op.dim)
    np.testing.assert_allclose(bot.eigenvalues, ev[:3], atol=1e-9)
    # eigenvectors come back as pytrees like params, satisfying H v = lambda v
    assert jax.tree.structure(top.eigenvectors) == jax.tree.structure(params)
    v0 = jax.tree.map(lambda x: x[0], top.eigenvectors)
    hv = op.apply(v0)
    np.testing.assert_allclose(hs.ravel_pytree(hv)[0], top.eigenvalues[0] * hs.ravel_pytree(v0)[0], atol=1e-8)


def test_lanczos_partial_iterations_converge_on_outliers(x64):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    spec = np.concatenate([[50.0, 30.0, 20.0, 12.0, 8.0], rng.uniform(0, 1, 295)])
    a = (q * spec) @ q.T
    res = hs.lanczos(hs.matrix_operator(jnp.asarray(a)), 5, key=jax.random.PRNGKey(3), num_iters=60)
    np.testing.assert_allclose(res.eigenvalues, spec[:5], rtol=1e-10)
    assert np.all(np.asarray(res.residuals) < 1e-6)


def test_lanczos_deterministic_by_key_and_jittable(x64):
    a = jnp.diag(jnp.arange(1.0, 21.0))
    op = hs.matrix_operator(a)
    f = jax.jit(lambda key: hs.lanczos(op, 3, key=key, num_iters=10).eigenvalues)
    r1, r2 = f(jax.random.PRNGKey(5)), f(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(r1, r2)


def test_lanczos_breakdown_no_nan(x64):
    # repeated eigenvalues: the Krylov space of any start vector has dimension 3 < 8
    a = jnp.diag(jnp.array([5.0, 5.0, 5.0, 2.0, 2.0, 1.0, 0.0, 0.0]))
    res = hs.lanczos(hs.matrix_operator(a), 8, key=jax.random.PRNGKey(0), num_iters=8)
    assert np.all(np.isfinite(np.asarray(res.eigenvalues)))
    np.testing.assert_allclose(res.eigenvalues, [5, 5, 5, 2, 2, 1, 0, 0], atol=1e-12)
    assert np.sum(np.asarray(res.betas[:-1]) == 0) >= 2  # restarts happened
    # rank-one quadratic loss: breakdown after the first step
    loss = lambda p, b: 0.5 * jnp.dot(b, p["w"]) ** 2
    op = hs.hessian_operator(loss, {"w": jnp.zeros(6)}, jnp.arange(1.0, 7.0))
    r = hs.lanczos(op, 2, key=jax.random.PRNGKey(1), num_iters=6)
    np.testing.assert_allclose(r.eigenvalues, [91.0, 0.0], atol=1e-10)
    d = hs.spectral_density(op, key=jax.random.PRNGKey(0), num_probes=3, num_iters=6)
    assert np.all(np.isfinite(np.asarray(d.density)))


@settings(max_examples=6, deadline=None)
@given(st.lists(st.floats(-5.0, 5.0), min_size=5, max_size=5), st.integers(0, 2**16))
def test_quadratic_known_spectrum(spectrum, seed):
    with jax.enable_x64(True):
        n = len(spectrum)
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
        a = jnp.asarray((q * np.asarray(spectrum)) @ q.T)
        loss = lambda p, b: 0.5 * p["x"] @ (b @ p["x"])
        op = hs.hessian_operator(loss, {"x": jnp.ones(n)}, a)
        res = hs.lanczos(op, n, key=jax.random.PRNGKey(seed), num_iters=n)
        np.testing.assert_allclose(res.eigenvalues, np.sort(spectrum)[::-1], atol=1e-8)


def test_hutchinson_and_hutchpp_unbiased(x64):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    spec = 10.0 / np.arange(1, 41) ** 1.5
    op = hs.matrix_operator(jnp.asarray((q * spec) @ q.T))
    true = spec.sum()
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    hut = np.asarray(jax.vmap(lambda k: hs.hutchinson_trace(op, key=k, num_samples=9))(keys))
    hpp = np.asarray(jax.vmap(lambda k: hs.hutchpp_trace(op, key=k, num_matvecs=9))(keys))
    for est in (hut, hpp):  # mean within 4 standard errors of the truth
        assert abs(est.mean() - true) < 4 * est.std() / math.sqrt(len(est)) + 1e-12
    assert hpp.std() < hut.std()  # Hutch++'s point: lower variance on decaying spectra
    diag = np.asarray(jax.vmap(lambda k: hs.diagonal_estimate(op, key=k, num_samples=10))(keys))
    se = diag.std(0) / math.sqrt(len(keys))
    assert np.all(np.abs(diag.mean(0) - np.diag((q * spec) @ q.T)) < 4.5 * se + 1e-12)


def test_slq_density_matches_histogram(x64):
    spec = jnp.concatenate([jnp.zeros(60), jnp.full(30, 1.0), jnp.full(10, 4.0)])
    op = hs.matrix_operator(jnp.diag(spec))
    d = hs.spectral_density(op, key=jax.random.PRNGKey(0), num_probes=20, num_iters=12, sigma=0.05)
    assert abs(float(jnp.trapezoid(d.density, d.grid)) - 1.0) < 1e-3
    np.testing.assert_allclose(np.asarray(d.weights.sum(1)), 1.0, atol=1e-10)
    assert abs(float(d.mass_below(0.5)) - 0.6) < 0.1
    assert float(d.grid.min()) < 0 and float(d.grid.max()) > 4


def test_gauss_newton_equals_hessian_for_linear_least_squares(x64):
    kx, ky, kw = jax.random.split(jax.random.PRNGKey(4), 3)
    x, y = jax.random.normal(kx, (20, 5)), jax.random.normal(ky, (20, 2))
    params = {"w": jax.random.normal(kw, (5, 2)), "b": jnp.zeros(2)}
    lin = lambda p, x: x @ p["w"] + p["b"]
    h = hs.hessian_matrix(hs.mse_loss(lin), params, (x, y))
    g = hs.dense_matrix(hs.gauss_newton_operator(lin, params, (x, y), loss="mse"))
    ft = hs.dense_matrix(hs.fisher_operator(lin, params, (x, y), kind="true", loss="mse"))
    np.testing.assert_allclose(g, h, atol=1e-10)
    np.testing.assert_allclose(ft, h, atol=1e-10)


def test_gauss_newton_and_fisher_against_definitions(x64):
    params, (x, y) = _mlp_params(jax.random.PRNGKey(5)), _data(jax.random.PRNGKey(6))
    flat, unravel = hs.ravel_pytree(params)
    jac = jax.jit(jax.jacobian(lambda f: _predict(unravel(f), x)))(flat)  # (N, C, P)
    s = jax.nn.softmax(_predict(params, x))
    hout = jax.vmap(lambda si: jnp.diag(si) - jnp.outer(si, si))(s)
    g_ref = jnp.einsum("ncp,ncd,ndq->pq", jac, hout, jac) / x.shape[0]
    g = hs.dense_matrix(hs.gauss_newton_operator(_predict, params, (x, y)))
    np.testing.assert_allclose(g, g_ref, atol=1e-10)
    per_ex = jax.jit(jax.vmap(lambda xi, yi: hs.ravel_pytree(jax.grad(CE)(params, (xi[None], yi[None])))[0]))(x, y)
    f_ref = per_ex.T @ per_ex / x.shape[0]
    f = hs.dense_matrix(hs.fisher_operator(_predict, params, (x, y), kind="empirical"))
    np.testing.assert_allclose(f, f_ref, atol=1e-10)
    np.testing.assert_allclose(hs.dense_matrix(hs.fisher_operator(_predict, params, (x, y), kind="true")), g_ref, atol=1e-10)


def test_mask_restricts_to_layer_block(x64):
    params, batch = _mlp_params(jax.random.PRNGKey(7)), _data(jax.random.PRNGKey(8))
    mask = {"l1": {"w": False, "b": False}, "l2": {"w": True, "b": True}}
    full = _dense_reference(CE, params, batch)
    n1 = params["l1"]["w"].size + params["l1"]["b"].size
    # ravel_pytree orders leaves l1.b, l1.w, l2.b, l2.w: the l2 block is the trailing one
    block = full[n1:, n1:]
    h = hs.hessian_matrix(CE, params, batch, mask=mask)
    np.testing.assert_allclose(h, block, atol=1e-10)
    op = hs.hessian_operator(CE, params, batch, mask=mask)
    res = hs.lanczos(op, 2, key=jax.random.PRNGKey(0), num_iters=op.dim)
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(block)[::-1][:2], rtol=1e-8)
    assert np.all(np.asarray(res.eigenvectors["l1"]["w"]) == 0)


def test_batched_average_equals_mean_of_hessians(x64):
    params = _mlp_params(jax.random.PRNGKey(9))
    x, y = _data(jax.random.PRNGKey(10), n=24)
    stacked = (x.reshape(3, 8, -1), y.reshape(3, 8))
    h = hs.hessian_matrix(CE, params, stacked, batched=True)
    # equal-size batches: the average of per-batch Hessians is the full-batch Hessian
    np.testing.assert_allclose(h, _dense_reference(CE, params, (x, y)), atol=1e-10)
    g = hs.dense_matrix(hs.gauss_newton_operator(_predict, params, stacked, batched=True))
    np.testing.assert_allclose(g, hs.dense_matrix(hs.gauss_newton_operator(_predict, params, (x, y))), atol=1e-10)


def test_bad_inputs():
    params, batch = _mlp_params(jax.random.PRNGKey(0)), _data(jax.random.PRNGKey(1))
    op = hs.hessian_operator(CE, params, batch)
    with pytest.raises(ValueError, match="k must lie"):
        hs.lanczos(op, op.dim + 1, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="k must lie"):
        hs.lanczos(op, 0, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="num_iters"):
        hs.lanczos(op, 5, key=jax.random.PRNGKey(0), num_iters=3)
    with pytest.raises(ValueError, match="which"):
        hs.lanczos(op, 2, key=jax.random.PRNGKey(0), which="middle")
    with pytest.raises(ValueError, match="scalar"):
        hs.hessian_operator(lambda p, b: _predict(p, b[0]), params, batch)
    with pytest.raises(ValueError, match="scalar"):
        hs.hvp(lambda p, b: _predict(p, b[0]), params, batch, params)
    with pytest.raises(ValueError, match="same tree structure"):
        hs.hessian_operator(CE, params, batch, mask={"l1": True, "l2": False})
    with pytest.raises(ValueError, match="bools"):
        hs.hessian_operator(CE, params, batch, mask=jax.tree.map(lambda x: 1.0, params))
    with pytest.raises(ValueError, match="selects no"):
        hs.hessian_operator(CE, params, batch, mask=jax.tree.map(lambda x: False, params))
    with pytest.raises(ValueError, match="loss must be one of"):
        hs.gauss_newton_operator(_predict, params, batch, loss="hinge")
    with pytest.raises(ValueError, match="kind"):
        hs.fisher_operator(_predict, params, batch, kind="observed")
    with pytest.raises(ValueError, match="num_matvecs"):
        hs.hutchpp_trace(op, key=jax.random.PRNGKey(0), num_matvecs=2)
    with pytest.raises(ValueError, match="square"):
        hs.matrix_operator(jnp.ones((2, 3)))


def test_lanczos_reports_convergence_and_warns_when_not_converged(x64):
    # converged: every Ritz value within rtol (relative residual), no warning
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    ev = np.concatenate([[50.0, 40.0, 30.0], rng.uniform(0.0, 1.0, 197)])
    op = hs.matrix_operator(jnp.asarray((q * ev) @ q.T))
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")
        res = hs.lanczos(op, 3, key=jax.random.PRNGKey(0), num_iters=60)
    assert np.all(np.asarray(res.converged))
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [50.0, 40.0, 30.0], rtol=1e-6)
    # a flat spectrum and few iterations: not converged, reported in the result and warned
    flat = hs.matrix_operator(jnp.asarray((q * np.linspace(1.0, 2.0, 200)) @ q.T))
    with pytest.warns(UserWarning, match="not converged"):
        bad = hs.lanczos(flat, 5, key=jax.random.PRNGKey(0), num_iters=8)
    assert not np.all(np.asarray(bad.converged))
    assert np.all(np.asarray(bad.converged) == (np.asarray(bad.residuals) <= 1e-3 * np.abs(np.asarray(bad.eigenvalues))))
    # under jit: no warning, the flag is there
    flags = jax.jit(lambda k: hs.lanczos(flat, 5, key=k, num_iters=8).converged)(jax.random.PRNGKey(0))
    assert flags.shape == (5,) and not bool(np.all(np.asarray(flags)))
    with pytest.raises(ValueError, match="rtol"):
        hs.lanczos(flat, 2, key=jax.random.PRNGKey(0), rtol=0.0)


def _known(spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((spectrum.size, spectrum.size)))
    return hs.matrix_operator(jnp.asarray((q * spectrum) @ q.T))


@pytest.mark.parametrize("lo", [0.0, -3.0])  # SPD and indefinite (a negative bulk)
def test_thick_restart_matches_eigh_with_restarts(x64, lo):
    rng = np.random.default_rng(11)
    spec = np.concatenate([[9.0, 8.0, 7.5, 7.0, 6.0], rng.uniform(lo + 0.1, 4.0, 195)])
    op = _known(spec)
    res = hs.lanczos(op, 5, key=jax.random.PRNGKey(0), basis_size=12, rtol=1e-9)
    assert int(res.num_restarts) >= 2  # a 12-vector basis cannot hold the answer in one cycle
    assert int(res.num_matvecs) == 12 + int(res.num_restarts) * (12 - 8)  # l = 5 + (12 - 5) // 2 kept
    assert np.all(np.asarray(res.converged))
    np.testing.assert_allclose(res.eigenvalues, np.sort(spec)[::-1][:5], rtol=1e-6)
    vecs = np.asarray(res.eigenvectors)
    a = np.asarray(hs.dense_matrix(op))
    np.testing.assert_allclose(vecs @ a.T, np.asarray(res.eigenvalues)[:, None] * vecs, atol=1e-7)
    np.testing.assert_allclose(vecs @ vecs.T, np.eye(5), atol=1e-10)


def test_thick_restart_bottom_and_default_call(x64):
    spec = np.concatenate([[-5.0, -4.0, -3.5], np.linspace(-2.0, 10.0, 117)])
    op = _known(spec, seed=3)
    bot = hs.lanczos(op, 3, key=jax.random.PRNGKey(1), which="bottom", basis_size=8, rtol=1e-9)
    assert int(bot.num_restarts) >= 1 and np.all(np.asarray(bot.converged))
    np.testing.assert_allclose(bot.eigenvalues, [-5.0, -4.0, -3.5], rtol=1e-6)
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")  # the default call converges to its documented rtol, silently
        top = hs.lanczos(op, 2, key=jax.random.PRNGKey(2))
    assert np.all(np.asarray(top.residuals) <= 1e-3 * np.abs(np.asarray(top.eigenvalues)))
    np.testing.assert_allclose(top.eigenvalues, [10.0, np.sort(spec)[-2]], rtol=1e-3)


def test_thick_restart_reports_non_convergence_and_jits(x64):
    op = _known(np.linspace(1.0, 2.0, 150), seed=5)
    with pytest.warns(UserWarning, match="not converged.*after 2 restarts"):
        bad = hs.lanczos(op, 4, key=jax.random.PRNGKey(0), basis_size=8, max_restarts=2)
    assert int(bad.num_restarts) == 2 and int(bad.num_matvecs) == 8 + 2 * 2
    assert not np.all(np.asarray(bad.converged))
    f = jax.jit(lambda key: hs.lanczos(op, 4, key=key, basis_size=8, max_restarts=2))
    r = f(jax.random.PRNGKey(0))
    np.testing.assert_allclose(r.eigenvalues, bad.eigenvalues, rtol=1e-12)
    np.testing.assert_array_equal(r.converged, bad.converged)
    with pytest.raises(ValueError, match="excludes"):
        hs.lanczos(op, 2, key=jax.random.PRNGKey(0), num_iters=10, max_restarts=3)
    with pytest.raises(ValueError, match="basis_size must be > k"):
        hs.lanczos(op, 4, key=jax.random.PRNGKey(0), basis_size=4)
    with pytest.raises(ValueError, match="max_restarts"):
        hs.lanczos(op, 2, key=jax.random.PRNGKey(0), max_restarts=-1)
