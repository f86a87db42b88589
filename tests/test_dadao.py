"""DADAO simulator (lgrad.federated._dadao): event replay vs numpy/scipy, invariants, constants, convergence."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from lgrad.distributed import topology
from lgrad.federated import _dadao as dadao


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _ridge(n=5, m=8, d=3, r=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m, d)) + rng.standard_normal((n, 1, d))
    y = x @ rng.standard_normal(d) + 0.1 * rng.standard_normal((n, m))
    hess = np.stack([2 / m * x[i].T @ x[i] + 2 * r * np.eye(d) for i in range(n)])
    eig = np.concatenate([np.linalg.eigvalsh(h) for h in hess])
    x_star = np.linalg.solve(hess.sum(0), sum(2 / m * x[i].T @ y[i] for i in range(n)))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    grad = lambda v, i: 2 / m * xj[i].T @ (xj[i] @ v - yj[i]) + 2 * r * v  # noqa: E731
    return x, y, grad, float(eig.min()), float(eig.max()), x_star


def _setup(n=5, seed=0, n_events=200):
    x, y, grad, mu, L, x_star = _ridge(n=n, seed=seed)
    edges, chi1, chi2 = dadao.dadao_graph(topology.ring(n))
    c = dadao.dadao_constants(mu, L, chi1, chi2)
    ev = dadao.dadao_events(jax.random.PRNGKey(seed), n_events, n_nodes=n, edges=edges, lam_mix=c.lam_mix)
    return x, y, grad, c, ev, x_star


def _numpy_replay(x, y, c, ev, x0, r=0.1):
    """The paper's updates, event by event, in numpy (scipy.linalg.expm for the ODE)."""
    n, m, d = x.shape
    mat = np.zeros((6, 6))
    mat[0, :2], mat[1, :2] = [-c.eta, c.eta], [c.eta, -c.eta]
    mat[2, 2:4] = [-c.alpha, c.alpha]
    mat[3, [1, 2, 4]] = [-c.theta * c.nu, -c.theta, -c.theta]
    mat[4, 4:6], mat[5, 4:6] = [-c.alpha, c.alpha], [c.alpha_tilde, -c.alpha_tilde]
    s, tl = np.zeros((n, 6, d)), np.zeros(n)
    s[:, 0] = x0
    for t, g_ev, a, b in zip(*map(np.asarray, ev)):
        for i in {int(a), int(b)}:
            s[i] = scipy.linalg.expm(mat * (t - tl[i])) @ s[i]
            tl[i] = t
        if g_ev:
            g = 2 / m * x[a].T @ (x[a] @ s[a, 0] - y[a]) + 2 * r * s[a, 0] - c.nu * s[a, 0] - s[a, 3]
            s[a, 0] -= c.gamma * g
            s[a, 1] -= c.gamma_tilde * g
            s[a, 3] += c.delta * g
        else:
            q = (s[a, 2] + s[a, 4]) - (s[b, 2] + s[b, 4])
            s[a, 4:6] -= np.outer([0.5, c.beta_tilde], q)
            s[b, 4:6] += np.outer([0.5, c.beta_tilde], q)
    return s, tl


def test_simulator_equals_numpy_replay():
    x, y, grad, c, ev, _ = _setup(n_events=300)
    x0 = np.random.default_rng(3).standard_normal((5, 3))
    got, hist = dadao.dadao_simulate(grad, dadao.dadao_init(jnp.asarray(x0)), ev, c, record_every=30)
    ref_s, ref_t = _numpy_replay(x, y, c, ev, x0)
    np.testing.assert_allclose(np.asarray(got.s), ref_s, atol=1e-11)
    np.testing.assert_allclose(np.asarray(got.t_last), ref_t, atol=1e-12)
    assert int(got.n_grad) + int(got.n_comm) == 300
    assert int(got.n_grad) == int(np.sum(np.asarray(ev.is_grad)))
    assert np.max(np.asarray(hist["sum_z"])) < 1e-12 and np.max(np.asarray(hist["sum_z_tilde"])) < 1e-12


def test_constants_follow_the_paper():
    c = dadao.dadao_constants(0.5, 8.0, 3.0, 2.0)
    nu = 0.25
    assert c.nu == nu and np.isclose(c.alpha, 0.25 * np.sqrt(nu / 8)) and np.isclose(c.eta, 0.125 * np.sqrt(nu / 8))
    assert np.isclose(c.alpha_tilde, c.eta) and np.isclose(c.theta, 0.5 * np.sqrt(8 / nu))
    assert np.isclose(c.gamma, 1 / 32) and np.isclose(c.gamma_tilde, 1 / (4 * np.sqrt(8 * nu)))
    assert np.isclose(c.delta, 0.25 * np.sqrt(nu / 8) + 1) and np.isclose(c.lam_mix, np.sqrt(12.0))
    assert np.isclose(c.beta_tilde, 2 * (3.0 / np.sqrt(12.0)) * np.sqrt(8 / nu))


@pytest.mark.parametrize("n", [4, 7])
def test_graph_constants_complete_graph_closed_form(n):
    """K_n: Laplacian/E has lambda_2 = 2/(n-1) and edge resistance (n-1) (halved: (n-1)/2)."""
    edges, chi1, chi2 = dadao.dadao_graph(topology.complete(n))
    assert len(edges) == n * (n - 1) // 2
    assert np.isclose(chi1, (n - 1) / 2) and np.isclose(chi2, (n - 1) / 2)


def test_converges_linearly_to_the_optimum():
    x, y, grad, c, ev, x_star = _setup(n_events=20000)
    _, hist = dadao.dadao_simulate(grad, dadao.dadao_init(jnp.zeros((5, 3))), ev, c, record_every=100, x_star=x_star)
    err = np.asarray(hist["error"])
    assert err[-1] < 1e-8 * err[0]
    t = np.asarray(hist["time"])[err > 1e-14]
    slope, _ = np.polyfit(t, np.log10(err[err > 1e-14]), 1)
    assert slope < 0


def test_events_rates():
    edges, chi1, chi2 = dadao.dadao_graph(topology.ring(6))
    ev = dadao.dadao_events(jax.random.PRNGKey(0), 50000, n_nodes=6, edges=edges, lam_mix=3.0)
    frac = float(np.mean(np.asarray(ev.is_grad)))
    assert abs(frac - 6 / 9) < 0.01
    assert abs(50000 / float(ev.times[-1]) - 9.0) < 0.2
    a, b = np.asarray(ev.a), np.asarray(ev.b)
    g = np.asarray(ev.is_grad)
    assert np.all(a[g] == b[g]) and np.all(np.isin(np.abs(a[~g] - b[~g]), [1, 5]))  # ring edges (i, i+1) or (0, 5)


def test_dsgd_baseline_matches_numpy_dgd():
    from lgrad import federated

    x, y, _, _, L, _ = _ridge(n=4)
    adj = topology.ring(4)
    loss = lambda v, b: jnp.mean((b[0] @ v - b[1]) ** 2) + 0.1 * jnp.sum(v**2)  # noqa: E731
    alg = dadao.dsgd_baseline(loss, adj, learning_rate=1 / L, n_workers=4)
    data = federated.shard_workers(federated.ClientData((jnp.asarray(x), jnp.asarray(y)), np.full(4, 8, np.int32)),
                                   n_workers=4, backend="vmap")
    state = alg.init(None, jnp.zeros(3))
    w = topology.metropolis_hastings(adj)
    ref = np.zeros((4, 3))
    for k in range(5):
        state, _ = alg.round(state, data, jax.random.PRNGKey(k))
        g = np.stack([2 / 8 * x[i].T @ (x[i] @ ref[i] - y[i]) + 0.2 * ref[i] for i in range(4)])
        ref = w @ (ref - g / L)
    np.testing.assert_allclose(np.asarray(state.params), ref, atol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dadao.dadao_constants(2.0, 1.0, 1.0, 1.0), "mu must be <= L"),
        (lambda: dadao.dadao_constants(-1.0, 1.0, 1.0, 1.0), "mu must be > 0"),
        (lambda: dadao.dadao_graph(np.zeros((3, 3))), "connected"),
        (lambda: dadao.dadao_init(jnp.zeros(3)), "x0 must be an"),
        (lambda: dadao.dadao_events(jax.random.PRNGKey(0), 0, n_nodes=2, edges=[[0, 1]], lam_mix=1.0), "n_events"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
