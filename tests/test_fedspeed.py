"""FedSpeed (lgrad.federated._fedspeed) and the SAM-style perturbed gradient
(lgrad.optim._sam): plain-numpy references of the local step and of both
aggregations (full and partial participation), validation, optax composition."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad import federated
from lgrad.federated._data import sample_clients
from lgrad.federated._fedspeed import fedspeed, fedspeed_aggregator, fedspeed_client
from lgrad.optim._sam import perturbed_gradient, sam, scale_by_sam

N, M, D = 5, 8, 3


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, M, D)) * rng.uniform(0.5, 1.5, size=(N, 1, D))
    b = np.einsum("imd,id->im", a, 2.0 * rng.normal(size=(N, D))) + 0.1 * rng.normal(size=(N, M))
    return a, b


def _loss(x, batch):
    a, b = batch
    r = a @ x - b
    return 0.5 * jnp.mean(r * r)


def _np_grad(x, a, b):
    return a.T @ (a @ x - b) / len(b)


def _np_perturbed(x, a, b, rho, alpha):
    g1 = _np_grad(x, a, b)
    nrm = np.linalg.norm(g1)
    xb = x + (rho * g1 / nrm if nrm > 0 else 0.0)
    return (1 - alpha) * g1 + alpha * _np_grad(xb, a, b)


def _fedspeed_reference(a, b, rounds, keys, *, lr, k, lam, rho, alpha, participation, aggregation):
    """Plain-numpy FedSpeed (Sun et al. 2023): the paper's or the authors' code's server."""
    x = np.zeros(D)
    ghat = np.zeros((N, D))
    for r in range(rounds):
        idx = np.asarray(sample_clients(jax.random.split(keys[r], 4)[0], N, participation))
        xk = {}
        for i in idx:
            xi = x.copy()
            for _ in range(k):
                gt = _np_perturbed(xi, a[i], b[i], rho, alpha)
                xi = xi - lr * (gt - ghat[i] + (xi - x) / lam)
            ghat[i] = ghat[i] - (xi - x) / lam
            xk[i] = xi
        if aggregation == "paper":
            x = np.mean([xk[i] - lam * ghat[i] for i in idx], 0)
        else:
            x = np.mean([xk[i] for i in idx], 0) - lam * ghat.mean(0)
    return x


def _run(alg, a, b, keys):
    data = federated.ClientData((jnp.asarray(a), jnp.asarray(b)), jnp.full(N, M, jnp.int32))
    state = alg.init(None, jnp.zeros(D, jnp.float64))
    step = jax.jit(alg.round)
    for key in keys:
        state, metrics = step(state, data, key)
    return np.asarray(state.params), metrics


@pytest.mark.parametrize("aggregation", ["paper", "code"])
@pytest.mark.parametrize("participation", [1.0, 0.6])
@pytest.mark.parametrize("rho,alpha", [(0.0, 1.0), (0.1, 1.0), (0.2, 0.5)])
def test_fedspeed_matches_numpy(aggregation, participation, rho, alpha):
    a, b = _problem()
    kw = dict(lr=0.1, k=4, lam=2.0, rho=rho, alpha=alpha, participation=participation, aggregation=aggregation)
    with jax.enable_x64(True):
        keys = [jax.random.PRNGKey(r) for r in range(6)]
        alg = fedspeed(_loss, n_clients=N, learning_rate=kw["lr"], local_steps=kw["k"], lam=kw["lam"], rho=rho,
                       alpha=alpha, participation=participation, aggregation=aggregation)
        got, metrics = _run(alg, a, b, keys)
        want = _fedspeed_reference(a, b, 6, keys, **kw)
    np.testing.assert_allclose(got, want, atol=1e-10, rtol=1e-10)
    assert float(metrics["bytes_up"]) == D * 8  # one model-sized message, float64


def test_code_and_paper_agree_under_full_participation_only():
    a, b = _problem(1)
    with jax.enable_x64(True):
        keys = [jax.random.PRNGKey(r) for r in range(8)]
        out = {}
        for p in (1.0, 0.6):
            for agg in ("paper", "code"):
                alg = fedspeed(_loss, n_clients=N, learning_rate=0.1, local_steps=3, lam=1.0, rho=0.1,
                               participation=p, aggregation=agg)
                out[p, agg] = _run(alg, a, b, keys)[0]
    assert np.max(np.abs(out[1.0, "paper"] - out[1.0, "code"])) <= 1e-12
    assert np.max(np.abs(out[0.6, "paper"] - out[0.6, "code"])) > 1e-3


def test_fedspeed_rho0_removes_client_drift():
    """rho = 0: the correction makes the fixed point the global optimum; FedAvg's is biased."""
    a, b = _problem(2)
    hess = np.einsum("imd,ime->de", a, a) / (N * M)
    xstar = np.linalg.solve(hess, np.einsum("imd,im->d", a, b) / (N * M))
    with jax.enable_x64(True):
        keys = [jax.random.PRNGKey(r) for r in range(150)]
        fs = _run(fedspeed(_loss, n_clients=N, learning_rate=0.1, local_steps=5, lam=1.0, rho=0.0), a, b, keys)[0]
        avg = federated.server_algorithm(federated.local_training(optax.sgd(0.1), _loss, local_steps=5),
                                         n_clients=N, weighted=False)
        fa = _run(avg, a, b, keys)[0]
    assert np.linalg.norm(fs - xstar) < 1e-8
    assert np.linalg.norm(fa - xstar) > 1e-2


def test_code_aggregator_tracks_every_client():
    agg = fedspeed_aggregator()
    h = agg.init(4, 2, jnp.float32)
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    out, h, _ = agg.update(h, x, jnp.ones(2), jnp.array([1, 3]), None)
    np.testing.assert_allclose(np.asarray(h), [[0, 0], [1, 2], [0, 0], [3, 4]])
    np.testing.assert_allclose(np.asarray(out), [2 + 1, 3 + 1.5])


def test_client_state_is_persistent_and_minibatched():
    a, b = _problem()
    client = fedspeed_client(_loss, learning_rate=0.1, local_steps=2, lam=1.0, rho=0.05, batch_size=3)
    s0 = client.init(jnp.zeros(D))
    msg, s1, m = client.apply(jnp.zeros(D), s0, (jnp.asarray(a[0], jnp.float32), jnp.asarray(b[0], jnp.float32)),
                              jnp.int32(M), jax.random.PRNGKey(0))
    assert msg.shape == (D,) and np.all(np.isfinite(np.asarray(msg))) and float(m["loss"]) > 0
    assert np.any(np.asarray(s1.correction) != 0)


# ----------------------------------------------------------------------------- the perturbed gradient
def test_perturbed_gradient_matches_numpy():
    a, b = _problem()
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(3).normal(size=D))
        obj = lambda q: _loss(q, (jnp.asarray(a[0]), jnp.asarray(b[0])))  # noqa: E731
        g1 = jax.grad(obj)(x)
        for rho, alpha in [(0.05, 1.0), (0.3, 0.25), (0.0, 1.0), (0.2, 0.0)]:
            tx = scale_by_sam(rho=rho, alpha=alpha)
            u, _ = tx.update(g1, tx.init(x), x, loss_fn=obj)
            np.testing.assert_allclose(np.asarray(u), _np_perturbed(np.asarray(x), a[0], b[0], rho, alpha), atol=1e-12)


def test_sam_descends_and_composes():
    a, b = _problem()
    obj = lambda p: _loss(p["w"], (jnp.asarray(a[0], jnp.float32), jnp.asarray(b[0], jnp.float32)))  # noqa: E731
    for tx in (sam(0.1, rho=0.05), optax.inject_hyperparams(sam)(learning_rate=0.1, rho=0.05, alpha=0.5),
               optax.chain(optax.clip_by_global_norm(10.0), sam(0.1, rho=0.05))):
        p = {"w": jnp.zeros(D)}
        s = tx.init(p)
        step = jax.jit(lambda p, s: tx.update(jax.grad(obj)(p), s, p, loss_fn=obj))
        for _ in range(300):
            u, s = step(p, s)
            p = optax.apply_updates(p, u)
        best = np.linalg.lstsq(a[0], b[0], rcond=None)[0]
        assert float(obj(p)) < float(obj({"w": jnp.asarray(best, jnp.float32)})) + 0.05


def test_zero_gradient_is_not_perturbed():
    tx = scale_by_sam(rho=0.1)
    x = jnp.ones(3)
    u, _ = tx.update(jnp.zeros(3), tx.init(x), x, loss_fn=lambda q: jnp.sum((q - 1.0) ** 2))
    assert np.all(np.asarray(u) == 0)


def test_perturbed_gradient_pure_function():
    x = {"a": jnp.ones(2), "b": jnp.zeros(1)}
    f = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    g = perturbed_gradient(f, x, jax.grad(f)(x), rho=0.5)
    # x + 0.5 g/|g| with g = (2, 2, 0): a = 1 + 0.5/sqrt(2); gradient 2a
    np.testing.assert_allclose(np.asarray(g["a"]), 2 * (1 + 0.5 / np.sqrt(2)) * np.ones(2), rtol=1e-6)


@pytest.mark.parametrize("bad", [{"rho": -0.1}, {"alpha": 1.5}, {"alpha": -0.1}, {"rho": float("nan")}])
def test_sam_validation(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        scale_by_sam(**bad)


def test_sam_needs_loss_fn():
    tx = scale_by_sam(rho=0.1)
    with pytest.raises(ValueError, match="loss_fn"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))


@pytest.mark.parametrize("bad", [{"lam": 0.0}, {"rho": -1.0}, {"alpha": 2.0}, {"aggregation": "mean"},
                                 {"local_steps": 0}, {"learning_rate": -0.1}])
def test_fedspeed_validation(bad):
    kw = dict(n_clients=3, learning_rate=0.1, local_steps=2)
    kw.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))) as err:
        fedspeed(_loss, **kw)
    assert "\n" not in str(err.value)
