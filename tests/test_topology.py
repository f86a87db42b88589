"""Graphs, Metropolis-Hastings mixing matrices, spectral gaps and gossip."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.distributed import comm, run_workers, topology as T


def test_graph_shapes_and_degrees():
    assert (T.complete(5).sum(1) == 4).all()
    assert (T.ring(7).sum(1) == 2).all() and T.ring(2).sum() == 2 and T.ring(1).sum() == 0
    tor = T.torus(4, 4)
    assert (tor.sum(1) == 4).all() and np.array_equal(tor, tor.T) and not np.diag(tor).any()
    assert (T.torus(2, 3).sum(1) == 3).all()  # the two vertical neighbours coincide
    assert tor[0, 1] and tor[0, 3] and tor[0, 4] and tor[0, 12] and not tor[0, 5]


def test_erdos_renyi_seeded_and_connected():
    a, b = T.erdos_renyi(20, 0.2, seed=3), T.erdos_renyi(20, 0.2, seed=3)
    assert np.array_equal(a, b) and T.is_connected(a) and np.array_equal(a, a.T)
    assert not np.array_equal(a, T.erdos_renyi(20, 0.2, seed=4))
    assert not T.is_connected(np.zeros((3, 3)))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 24), p=st.floats(0.25, 1.0), seed=st.integers(0, 10_000))
def test_mh_doubly_stochastic_on_random_graphs(n, p, seed):
    a = T.erdos_renyi(n, p, seed=seed)
    w = T.metropolis_hastings(a)
    T.check_mixing_matrix(w)
    np.testing.assert_allclose(w.sum(0), 1, atol=1e-12)
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-12)
    assert (w >= 0).all() and np.array_equal(w, w.T)
    assert np.array_equal((w > 0) & ~np.eye(n, dtype=bool), a.astype(bool))
    assert 0 < T.spectral_gap(w) <= 1 + 1e-12  # connected: gap > 0
    plan = T.gossip_plan(w)
    assert len(plan.perms) == a.sum(1).max()  # König: max-degree rounds
    for perm in plan.perms:
        srcs, dsts = [s for s, _ in perm], [d for _, d in perm]
        assert len(set(srcs)) == len(srcs) and len(set(dsts)) == len(dsts)
    # Applying the plan reproduces W.
    m = np.diag(plan.self_weight).copy()
    for r, perm in enumerate(plan.perms):
        for s, d in perm:
            m[d, s] += plan.weights[r, d]
    np.testing.assert_allclose(m, w, atol=1e-15)


def test_spectral_gaps_closed_form():
    assert T.spectral_gap(T.metropolis_hastings(T.complete(16))) == pytest.approx(1.0)
    assert T.spectral_gap(T.metropolis_hastings(T.torus(4, 4))) == pytest.approx(0.4)
    ring = 1 - (1 + 2 * np.cos(2 * np.pi / 16)) / 3
    assert T.spectral_gap(T.metropolis_hastings(T.ring(16))) == pytest.approx(ring)


def test_bad_mixing_matrices():
    with pytest.raises(ValueError, match="row 0 sums to"):
        T.check_mixing_matrix(np.array([[0.6, 0.5], [0.4, 0.5]]))
    with pytest.raises(ValueError, match="column 0 sums to 0.5"):
        T.check_mixing_matrix(np.array([[0.5, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="negative entry"):
        T.check_mixing_matrix(np.array([[1.5, -0.5], [-0.5, 1.5]]))
    with pytest.raises(ValueError, match="square"):
        T.check_mixing_matrix(np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="not doubly stochastic"):
        T.spectral_gap(np.array([[1.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="not doubly stochastic"):
        run_workers(lambda x: T.gossip(x, np.full((4, 4), 0.3)), jnp.ones((4, 2)), n_workers=4)
    with pytest.raises(ValueError, match="symmetric"):
        T.metropolis_hastings(np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="p must lie"):
        T.erdos_renyi(5, 0.0)
    with pytest.raises(ValueError, match="connected"):
        T.erdos_renyi(30, 0.01, max_tries=3)
    with pytest.raises(ValueError, match="rows must be"):
        T.torus(0, 3)


def _gossip_with_bytes(plan, method="ppermute"):
    def f(x):
        with comm.counting() as sent:
            y = T.gossip(x, plan, method=method)
        return y, jnp.asarray(sent.bytes)

    return f


@pytest.mark.parametrize(
    "name,adj,backend",
    [
        ("ring16-mesh", T.ring(16), "mesh"),  # 2 workers per device on 8 CPU devices
        ("torus8-mesh", T.torus(2, 4), "mesh"),  # 1 worker per device: real ppermute
        ("er-vmap", T.erdos_renyi(12, 0.3, seed=1), "vmap"),  # irregular: partial perms
        ("ring5-vmap", T.ring(5), "vmap"),
    ],
)
def test_gossip_is_w_times_x_and_bytes_exact(name, adj, backend):
    w = T.metropolis_hastings(adj)
    n = len(w)
    plan = T.gossip_plan(w)
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    y, sent = run_workers(_gossip_with_bytes(plan), x, n_workers=n, backend=backend)
    np.testing.assert_allclose(np.asarray(y), w @ x, atol=1e-6)
    per_worker = T.gossip_bytes(plan, x[0])
    np.testing.assert_array_equal(per_worker, adj.sum(1) * 12)  # degree x float32[3]
    assert int(sent[0]) == per_worker.max() == adj.sum(1).max() * 12


def test_gossip_all_gather_method_and_size_check():
    w = T.metropolis_hastings(T.erdos_renyi(8, 0.4, seed=2))
    x = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    y, sent = run_workers(_gossip_with_bytes(w, "all_gather"), x, n_workers=8, backend="mesh")
    np.testing.assert_allclose(np.asarray(y), w @ x, atol=1e-6)
    assert int(sent[0]) == 8 and (T.gossip_bytes(w, x[0], method="all_gather") == 8).all()
    with pytest.raises(ValueError, match="8x8 but there are 4 workers"):
        run_workers(lambda v: T.gossip(v, w), x[:4], n_workers=4)
    with pytest.raises(ValueError, match="unknown gossip method"):
        run_workers(lambda v: T.gossip(v, w, method="rpc"), x, n_workers=8)


def test_gossip_preserves_average_and_contracts():
    w = T.metropolis_hastings(T.ring(8))
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))

    def f(v):
        before = T.consensus_distance(v)
        after = T.consensus_distance(T.gossip(v, w))
        return after, before, comm.pmean(T.gossip(v, w))

    after, before, mean = run_workers(f, x, n_workers=8)
    np.testing.assert_allclose(mean[0], x.mean(0), atol=1e-6)
    lam2 = 1 - T.spectral_gap(w)
    assert after[0] <= lam2**2 * before[0] + 1e-6
