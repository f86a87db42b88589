"""Ordered learning on federated clients (lgrad.federated._curriculum): pacing,
ordering, the paced client against a numpy reference, client selection by difficulty."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad import federated
from lgrad.federated._curriculum import (ORDERINGS, curriculum_training, difficulty_selection, linear_pacing,
                                         order_by_difficulty)


def test_linear_pacing_matches_formula():
    pace = linear_pacing(rounds=10, start=0.2, full_at=0.8)
    for t in range(12):
        assert float(pace(t)) == pytest.approx(min(1.0, 0.2 + 0.8 * t / 8.0), abs=1e-6)


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"start": 0.0}, {"start": 1.5}, {"full_at": 0.0}, {"full_at": 2.0}])
def test_linear_pacing_validation(bad):
    kw = dict(rounds=10)
    kw.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        linear_pacing(**kw)


def test_order_by_difficulty():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    cur = order_by_difficulty(parts, scores, "curriculum")
    anti = order_by_difficulty(parts, scores, "anti")
    rnd = order_by_difficulty(parts, scores, "random", seed=3)
    assert [c.tolist() for c in cur] == [[1, 2, 0], [5, 3, 4]]
    assert [a.tolist() for a in anti] == [[0, 2, 1], [4, 3, 5]]
    assert [sorted(r.tolist()) for r in rnd] == [[0, 1, 2], [3, 4, 5]]
    assert set(ORDERINGS) == {"curriculum", "anti", "random"}
    with pytest.raises(ValueError, match="ordering"):
        order_by_difficulty(parts, scores, "easy-first")


def _loss(w, batch):
    x, y = batch
    r = x @ w - y
    return 0.5 * jnp.mean(r * r)


def test_paced_client_matches_numpy():
    """K SGD steps on minibatches drawn (with the client's keys) from the first ceil(g(t) n) rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    y = rng.normal(size=10)
    pace = linear_pacing(rounds=5, start=0.2, full_at=0.8)
    client = curriculum_training(optax.sgd(0.1), _loss, local_steps=4, batch_size=3, pacing=pace)
    with jax.enable_x64(True):
        w0 = jnp.asarray(rng.normal(size=3))
        state = client.init(w0)
        key = jax.random.PRNGKey(1)
        for t in range(6):
            k = jax.random.fold_in(key, t)
            delta, state, m = client.apply(w0, state, (jnp.asarray(x), jnp.asarray(y)), jnp.int32(10), k)
            avail = max(1, min(10, int(np.ceil(min(1.0, 0.2 + 0.8 * t / 4.0) * 10 - 1e-4))))
            w = np.asarray(w0).copy()
            for ks in jax.random.split(k, 4):
                idx = np.asarray(jax.random.randint(ks, (3,), 0, jnp.int32(avail)))
                w -= 0.1 * x[idx].T @ (x[idx] @ w - y[idx]) / 3
            np.testing.assert_allclose(np.asarray(delta), w - np.asarray(w0), atol=1e-12)
            assert float(m["data_fraction"]) == pytest.approx(avail / 10)
            assert int(state) == t + 1


def test_unsampled_clients_keep_their_pacing():
    rng = np.random.default_rng(1)
    data = federated.stack_clients([np.arange(0, 6), np.arange(6, 12), np.arange(12, 18), np.arange(18, 24)],
                                   rng.normal(size=(24, 3)).astype(np.float32), rng.normal(size=24).astype(np.float32))
    data = federated.ClientData(tuple(jnp.asarray(a) for a in data.arrays), jnp.asarray(data.count))
    client = curriculum_training(optax.sgd(0.1), _loss, local_steps=2, batch_size=2,
                                 pacing=linear_pacing(rounds=4))
    alg = federated.server_algorithm(client, n_clients=4, participation=0.5)
    state = alg.init(None, jnp.zeros(3))
    for r in range(3):
        state, _ = alg.round(state, data, jax.random.PRNGKey(r))
    assert int(np.sum(np.asarray(state.clients))) == 3 * 2  # two clients per round took part


def test_difficulty_selection_matches_numpy():
    scores = np.array([0.3, 0.1, 0.4, 0.2])  # easiest first: clients 1, 3, 0, 2
    pace = linear_pacing(rounds=4, start=0.5, full_at=1.0)  # g = 0.5, 0.625, 0.75, 0.875, 1
    agg = difficulty_selection(scores, pace)
    state = agg.init(4, 2, jnp.float32)
    x = jnp.asarray(np.arange(8.0).reshape(4, 2))
    w = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    clients = jnp.arange(4)
    for t in range(5):
        out, state, m = agg.update(state, x, w, clients, None)
        g = min(1.0, 0.5 + 0.5 * t / 4)
        allowed = np.argsort(np.argsort(scores)) < np.ceil(g * 4 - 1e-4)
        ww = np.asarray(w) * allowed
        np.testing.assert_allclose(np.asarray(out), (ww[:, None] * np.asarray(x)).sum(0) / ww.sum(), rtol=1e-6)
        assert int(m["selected"]) == allowed.sum()
    # none of the sampled clients qualifies: all of them are averaged
    out, _, _ = agg.update(jnp.zeros([], jnp.int32), x[2:3], w[2:3], jnp.array([2]), None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x[2]))
