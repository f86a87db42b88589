"""FZooS (lgrad.federated._fzoos): the GP posterior mean and its gradient against
scikit-learn's GaussianProcessRegressor (Matérn-5/2, fixed kernel) to 1e-6, the
lengthscale chosen by marginal likelihood, masking, random Fourier features against
scikit-learn's RBFSampler, the FedZO baseline against a numpy reference, exact
query counts and validation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad import federated
from lgrad.federated._fzoos import (
    FZooSServer,
    fedzo_client,
    fzoos,
    fzoos_client,
    gp_fit,
    gp_mean,
    gp_mean_grad,
    matern52,
    rff_features,
)

sk_gp = pytest.importorskip("sklearn.gaussian_process")
from sklearn.gaussian_process.kernels import Matern  # noqa: E402


def _data(n=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, d))
    y = np.sin(x @ rng.normal(size=d)) + 0.5 * (x**2).sum(1)
    return x, y


def _sklearn(x, ys, ell, noise=1e-6):
    return sk_gp.GaussianProcessRegressor(Matern(length_scale=ell, nu=2.5, length_scale_bounds="fixed"),
                                          alpha=noise, optimizer=None, normalize_y=False).fit(x, ys)


def test_matern_matches_sklearn():
    x, _ = _data()
    with jax.enable_x64(True):
        np.testing.assert_allclose(matern52(jnp.asarray(x), jnp.asarray(x[:7]), 0.7),
                                   Matern(length_scale=0.7, nu=2.5)(x, x[:7]), rtol=1e-12, atol=1e-14)
        g = jax.grad(lambda z: matern52(z[None], jnp.asarray(x[:1]), 0.7)[0, 0])(jnp.asarray(x[0]))
        assert np.all(np.isfinite(np.asarray(g))) and np.allclose(g, 0.0)


@pytest.mark.parametrize("ell", [0.3, 1.0, 2.5])
def test_gp_mean_and_gradient_match_sklearn(ell):
    x, y = _data()
    lo, span = y.min(), y.max() - y.min()
    ref = _sklearn(x, (y - lo) / span, ell)
    with jax.enable_x64(True):
        gp = gp_fit(jnp.asarray(x), jnp.asarray(y), lengthscales=jnp.asarray([ell]), noise=1e-6)
        rng = np.random.default_rng(1)
        for q in rng.uniform(-1, 1, size=(5, x.shape[1])):
            mean = float(gp_mean(gp, jnp.asarray(q)))
            np.testing.assert_allclose(mean, lo + span * ref.predict(q[None])[0], rtol=1e-6, atol=1e-6)
            h = 1e-5
            fd = np.array([(ref.predict((q + h * e)[None])[0] - ref.predict((q - h * e)[None])[0]) / (2 * h)
                           for e in np.eye(len(q))]) * span
            np.testing.assert_allclose(gp_mean_grad(gp, jnp.asarray(q)), fd, rtol=1e-6, atol=1e-6)


def test_lengthscale_by_marginal_likelihood():
    x, y = _data(seed=3)
    ys = (y - y.min()) / (y.max() - y.min())
    grid = np.array([0.05, 0.2, 0.8, 3.0, 12.0])
    lml = [_sklearn(x, ys, ell).log_marginal_likelihood_value_ for ell in grid]
    with jax.enable_x64(True):
        gp = gp_fit(jnp.asarray(x), jnp.asarray(y), lengthscales=jnp.asarray(grid))
    assert float(gp.lengthscale) == grid[int(np.argmax(lml))]


def test_mask_equals_fitting_the_subset():
    x, y = _data()
    keep = np.arange(len(y)) % 3 != 0
    with jax.enable_x64(True):
        full = gp_fit(jnp.asarray(x), jnp.asarray(y), lengthscales=jnp.asarray([0.5, 1.0]), mask=jnp.asarray(keep))
        sub = gp_fit(jnp.asarray(x[keep]), jnp.asarray(y[keep]), lengthscales=jnp.asarray([0.5, 1.0]))
        q = jnp.asarray(np.full(x.shape[1], 0.1))
        np.testing.assert_allclose(gp_mean(full, q), gp_mean(sub, q), rtol=1e-9)
        np.testing.assert_allclose(gp_mean_grad(full, q), gp_mean_grad(sub, q), rtol=1e-8)


def test_rff_matches_sklearn_rbf_sampler():
    from sklearn.kernel_approximation import RBFSampler

    x, _ = _data()
    s = RBFSampler(gamma=0.5, n_components=64, random_state=0).fit(x)  # lengthscale 1
    with jax.enable_x64(True):
        phi = rff_features(jnp.asarray(x), jnp.asarray(s.random_weights_.T), jnp.asarray(s.random_offset_))
    np.testing.assert_allclose(phi, s.transform(x), rtol=1e-10, atol=1e-12)


def _linear(x, arrays):
    return jnp.sum(arrays[0] @ x)


def test_fedzo_matches_numpy_on_a_linear_function():
    """Forward differences along a full orthonormal basis are exact on a linear f: every
    client takes K Adam steps on its own slope; the server averages."""
    n, d, k = 3, 5, 4
    a = np.random.default_rng(0).normal(size=(n, d))
    alg = fzoos(fedzo_client(_linear, local_steps=k, learning_rate=0.1, n_directions=d, smoothing=0.01), n_clients=n)
    with jax.enable_x64(True):
        state = alg.init(None, FZooSServer(jnp.zeros(d), jnp.zeros(3)))
        new, m = alg.round(state, federated.ClientData((jnp.asarray(a)[:, None],), jnp.ones(n, jnp.int32)),
                           jax.random.PRNGKey(0))
        tx = optax.adam(0.1)
        xs = []
        for i in range(n):
            x, s = jnp.zeros(d), tx.init(jnp.zeros(d))
            for _ in range(k):
                u, s = tx.update(jnp.asarray(a[i]), s, x)
                x = x + u
            xs.append(np.asarray(x))
    np.testing.assert_allclose(new.params.x, np.mean(xs, 0), rtol=1e-6, atol=1e-9)
    assert float(m["queries"]) == k * (1 + d)


def _quadratic(x, arrays):
    return jnp.sum((x - arrays[0]) ** 2)


def test_fzoos_round_counts_queries_and_keeps_trajectories():
    n, d, k, e, mf = 2, 3, 3, 2, 16
    c = np.random.default_rng(1).normal(size=(n, 1, d))
    rng = np.random.default_rng(2)
    rff = (jnp.asarray(rng.normal(size=(mf, d))), jnp.asarray(rng.uniform(0, 2 * np.pi, mf)))
    with jax.enable_x64(True):
        client = fzoos_client(_quadratic, rff_weights=rff, capacity=2 * k * (1 + e), local_steps=k, n_neighbours=8,
                              n_candidates=6, n_explore=e, rff_neighbours=10, learning_rate=0.05)
        alg = fzoos(client, n_clients=n)
        state = alg.init(None, FZooSServer(jnp.zeros(d), jnp.zeros(mf)))
        data = federated.ClientData((jnp.asarray(c),), jnp.ones(n, jnp.int32))
        for r in range(2):
            state, m = alg.round(state, data, jax.random.PRNGKey(r))
            assert float(m["queries"]) == k * (1 + e)
    hist = state.clients
    np.testing.assert_array_equal(hist.n, [2 * k * (1 + e)] * n)
    np.testing.assert_array_equal(hist.t, [2, 2])
    for i in range(n):  # every stored value is the black box at the stored point
        np.testing.assert_allclose(hist.hy[i], ((np.asarray(hist.hx[i]) - c[i]) ** 2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(state.params.nu, np.mean(np.asarray(hist.nu), 0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kw,match", [
    (dict(local_steps=0), "local_steps"), (dict(n_explore=200), "n_explore"), (dict(radius=0.0), "radius"),
    (dict(lengthscales=()), "lengthscales"), (dict(capacity=0), "capacity"),
])
def test_fzoos_validation(kw, match):
    rff = (jnp.zeros((4, 2)), jnp.zeros(4))
    with pytest.raises(ValueError, match=match):
        fzoos_client(_quadratic, **(dict(rff_weights=rff, capacity=10) | kw))
