"""The federated/decentralized algorithm layer (lgrad.federated): numpy references
for FedAvg, FedAvgM and D-SGD, sampling, weighting, aggregators, validation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad import federated, robust
from lgrad.distributed import comm, run_workers, topology

N, M, D = 6, 9, 3


def _problem(seed=0):
    """Heterogeneous least squares: client i holds (A_i, b_i), unequal sizes."""
    rng = np.random.default_rng(seed)
    sizes = [4, 9, 6, 7, 5, 8]
    x = rng.normal(size=(sum(sizes), D))
    y = rng.normal(size=(sum(sizes),)) + x @ np.array([1.0, -2.0, 0.5])
    bounds = np.cumsum([0] + sizes)
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(N)]
    return parts, x, y


def _loss(params, batch):
    xb, yb = batch
    r = xb @ params["w"] - yb
    return 0.5 * jnp.mean(r * r)


def _np_grad(w, xb, yb):
    return xb.T @ (xb @ w - yb) / len(yb)


def _fedavg_reference(parts, x, y, *, rounds, local_steps, lr, server_lr, server_momentum):
    """Full-batch local GD, weighted mean of deltas, server SGD (with momentum)."""
    w = np.zeros(D)
    mom = np.zeros(D)
    sizes = np.array([len(p) for p in parts], float)
    for _ in range(rounds):
        deltas = []
        for p in parts:
            wi = w.copy()
            for _ in range(local_steps):
                wi -= lr * _np_grad(wi, x[p], y[p])
            deltas.append(wi - w)
        avg = (sizes[:, None] * np.array(deltas)).sum(0) / sizes.sum()
        g = -avg
        mom = server_momentum * mom + g
        w = w - server_lr * mom
    return w


@pytest.mark.parametrize("server_lr,server_momentum", [(1.0, 0.0), (0.7, 0.9)], ids=["FedAvg", "FedAvgM"])
def test_fedavg_and_fedavgm_match_numpy(server_lr, server_momentum):
    parts, x, y = _problem()
    with jax.enable_x64(True):
        data = federated.stack_clients(parts, x, y)
        # full-batch local GD on the client's real rows (the padding is masked out)
        client = federated.local_training(
            optax.sgd(0.1), _masked_loss, local_steps=3, batch_fn=lambda arrays, count, key: (arrays, count)
        )
        server_opt = optax.sgd(server_lr, momentum=server_momentum or None)
        alg = federated.server_algorithm(client, n_clients=N, server_optimizer=server_opt)
        state = alg.init(jax.random.PRNGKey(0), {"w": jnp.zeros(D, jnp.float64)})
        step = jax.jit(alg.round)
        for r in range(5):
            state, metrics = step(state, data, jax.random.PRNGKey(r))
        got = np.asarray(state.params["w"])
    want = _fedavg_reference(parts, x, y, rounds=5, local_steps=3, lr=0.1, server_lr=server_lr,
                             server_momentum=server_momentum)
    assert np.max(np.abs(got - want)) < 1e-10
    assert int(metrics["participants"]) == N
    assert alg.traffic == {"bytes_up": D * 8, "bytes_down": D * 8}


def _masked_loss(params, batch):
    """Full-batch loss over the client's real rows (``count``), padding ignored."""
    (xs, ys), count = batch
    mask = (jnp.arange(xs.shape[0]) < count).astype(xs.dtype)
    r = xs @ params["w"] - ys
    return 0.5 * jnp.sum(mask * r * r) / jnp.sum(mask)


def test_dsgd_ring_matches_numpy():
    n, rounds, lr = 8, 5, 0.2
    parts, x, y = _problem()
    rng = np.random.default_rng(1)
    xs, ys = rng.normal(size=(n, 7, D)), rng.normal(size=(n, 7))
    w_mix = topology.metropolis_hastings(topology.ring(n))
    with jax.enable_x64(True):
        data = federated.ClientData((jnp.asarray(xs), jnp.asarray(ys)), jnp.full((n,), 7, jnp.int32))
        tx = federated.decentralized(optax.sgd(lr), federated.gossip_mix(w_mix))
        alg = federated.worker_algorithm(tx, _loss, n_workers=n)
        state = alg.init(None, {"w": jnp.zeros(D, jnp.float64)})
        for r in range(rounds):
            state, metrics = jax.jit(alg.round)(state, data, jax.random.PRNGKey(r))
        got = np.asarray(state.params["w"])
    w = np.zeros((n, D))
    for _ in range(rounds):
        half = np.stack([w[i] - lr * _np_grad(w[i], xs[i], ys[i]) for i in range(n)])
        w = w_mix @ half
    assert np.max(np.abs(got - w)) < 1e-10
    assert alg.traffic["bytes_sent"] == 2 * D * 8  # degree 2, one float64 model per neighbour
    assert float(metrics["bytes_sent"]) == 2 * D * 8


@pytest.mark.parametrize("backend", ["vmap", "mesh"])
def test_worker_loss_metric_is_per_worker_and_unreduced(backend):
    """``loss`` is each worker's pre-step minibatch loss, shape (n,), split like the
    workers on a mesh: a round adds no reduction over the workers of its own."""
    n = 8  # a multiple of the test session's device count
    rng = np.random.default_rng(2)
    xs, ys = rng.normal(size=(n, 5, D)).astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32)
    data = federated.shard_workers(federated.ClientData((xs, ys), np.full((n,), 5, np.int32)), n_workers=n,
                                   backend=backend)
    alg = federated.worker_algorithm(optax.sgd(0.1), _loss, n_workers=n, backend=backend)
    w0 = np.array([0.5, -1.0, 2.0], np.float32)
    state0, key = alg.init(None, {"w": w0}), jax.random.PRNGKey(0)
    state, metrics = jax.jit(alg.round)(state0, data, key)
    hlo = jax.jit(alg.round).lower(state0, data, key).compile().as_text()
    assert not any(op in hlo for op in ("all-reduce", "all-gather", "collective-permute"))  # sgd: no communication
    want = [0.5 * np.mean((xs[i] @ w0 - ys[i]) ** 2) for i in range(n)]
    np.testing.assert_allclose(np.asarray(metrics["loss"]), want, rtol=1e-5)
    assert metrics["loss"].sharding.is_equivalent_to(state.params["w"].sharding, 1)
    assert metrics["bytes_sent"].shape == ()


def test_partial_participation_is_keyed_and_reproducible():
    parts, x, y = _problem()
    data = federated.stack_clients(parts, x.astype(np.float32), y.astype(np.float32))
    client = federated.local_training(optax.sgd(0.05), _loss, local_steps=2, batch_size=3)
    alg = federated.server_algorithm(client, n_clients=N, participation=0.5)
    s0 = alg.init(None, {"w": jnp.zeros(D)})
    a, ma = alg.round(s0, data, jax.random.PRNGKey(3))
    b, mb = alg.round(s0, data, jax.random.PRNGKey(3))
    c, _ = alg.round(s0, data, jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert int(ma["participants"]) == 3
    assert not np.array_equal(a.params["w"], c.params["w"])
    idx = federated.sample_clients(jax.random.PRNGKey(0), 10, 0.3)
    assert idx.shape == (3,) and len(set(np.asarray(idx).tolist())) == 3


def test_unsampled_clients_keep_their_state():
    """Per-client persistent state (a counter) advances only for sampled clients."""

    def apply(server_params, state, arrays, count, key):
        return jax.tree.map(jnp.zeros_like, server_params), state + 1, {"loss": jnp.zeros(())}

    client = federated.ClientUpdate(lambda params: jnp.zeros((), jnp.int32), apply)
    alg = federated.server_algorithm(client, n_clients=10, participation=0.3)
    data = federated.ClientData(jnp.zeros((10, 2, 1)), jnp.full((10,), 2, jnp.int32))
    state = alg.init(None, {"w": jnp.zeros(2)})
    for r in range(4):
        state, _ = alg.round(state, data, jax.random.PRNGKey(r))
    assert int(state.clients.sum()) == 4 * 3
    assert int(state.round) == 4


def test_robust_and_stateful_aggregators():
    parts, x, y = _problem()
    data = federated.stack_clients(parts, x.astype(np.float32), y.astype(np.float32))
    client = federated.local_training(optax.sgd(0.05), _loss, local_steps=2, batch_size=3)

    def sign_flip_first(xm, clients, key):
        return xm.at[0].multiply(-100.0)

    med = federated.server_algorithm(client, n_clients=N, corrupt=sign_flip_first,
                                     aggregator=federated.rule_aggregator(robust.median))
    avg = federated.server_algorithm(client, n_clients=N, corrupt=sign_flip_first)
    s_med, s_avg = med.init(None, {"w": jnp.zeros(D)}), avg.init(None, {"w": jnp.zeros(D)})
    s_med, _ = med.round(s_med, data, jax.random.PRNGKey(0))
    s_avg, _ = avg.round(s_avg, data, jax.random.PRNGKey(0))
    assert float(jnp.linalg.norm(s_med.params["w"])) < float(jnp.linalg.norm(s_avg.params["w"]))
    mh = federated.server_algorithm(client, n_clients=N, aggregator=robust.mudhog.aggregator())
    s = mh.init(None, {"w": jnp.zeros(D)})
    for r in range(3):
        s, metrics = mh.round(s, data, jax.random.PRNGKey(r))
    assert metrics["flags"].shape == (N,) and int(s.aggregator.round) == 3


def test_neighbour_mix_on_a_ring_and_complete_graph():
    n = 6
    v = jax.random.normal(jax.random.PRNGKey(0), (n, 4))
    mean_rule = lambda xs, i: jnp.mean(xs, 0)  # noqa: E731
    ring = run_workers(lambda a: federated.neighbour_mix(mean_rule, topology.ring(n))(a, comm.AXIS), v, n_workers=n)
    want = (v + jnp.roll(v, 1, 0) + jnp.roll(v, -1, 0)) / 3
    np.testing.assert_allclose(ring, want, atol=1e-6)
    full = run_workers(lambda a: federated.neighbour_mix(lambda xs, i: xs[i])(a, comm.AXIS), v, n_workers=n)
    np.testing.assert_allclose(full, v, atol=0)
    with pytest.raises(ValueError, match="regular"):
        star = np.zeros((4, 4), np.int8)
        star[0, 1:] = star[1:, 0] = 1
        federated.neighbour_mix(mean_rule, star)


def test_monna_on_a_torus_tolerates_a_byzantine_neighbour():
    n = 9
    adj = topology.torus(3, 3)
    tx = robust.monna(0.1, f=1, beta=0.0, adjacency=adj, byzantine=(4,), attack=lambda h: 1e3 * jnp.ones(h.shape[1]))
    params = jnp.zeros((n, 2))
    grads = jnp.ones((n, 2))

    def step(p, g):
        u, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, u)

    out = run_workers(step, params, grads, n_workers=n)
    honest = np.delete(np.asarray(out), 4, axis=0)
    assert np.all(np.abs(honest) < 1.0)  # the 1e3 vector never enters an honest node's NNA


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda c: federated.server_algorithm(c, n_clients=4, participation=0.0), "participation"),
        (lambda c: federated.server_algorithm(c, n_clients=4, participation=1.5), "participation"),
        (lambda c: federated.server_algorithm(c, n_clients=0), "n_clients"),
        (lambda c: federated.server_algorithm(c, n_clients=4, backend="vmpa"), "backend"),
        (lambda c: federated.local_training(optax.sgd(0.1), _loss, local_steps=0), "local_steps"),
        (lambda c: federated.local_training(optax.sgd(0.1), _loss, local_steps=1, batch_size=0), "batch_size"),
        (lambda c: federated.worker_algorithm(optax.sgd(0.1), _loss, n_workers=4, backend="foo"), "backend"),
        (lambda c: federated.decentralized(optax.sgd(0.1), None), "mix"),
        (lambda c: federated.decentralized(optax.sgd(0.1), federated.gossip_mix(np.eye(3)), byzantine=(1, 1)), "byzantine"),
        (lambda c: robust.monna(0.1, f=-1), "f"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(make, match):
    client = federated.local_training(optax.sgd(0.1), _loss, local_steps=1, batch_size=2)
    with pytest.raises(ValueError, match=match) as err:
        make(client)
    assert "\n" not in str(err.value)


def test_f_must_be_below_half_of_the_rows_mixed():
    tx = robust.monna(0.1, f=3, beta=0.0)
    with pytest.raises(ValueError, match="f"):
        run_workers(lambda p: tx.update(p, tx.init(p), p)[0], jnp.zeros((6, 2)), n_workers=6)


def test_bytes_of_a_server_round_are_the_model_and_the_message():
    parts, x, y = _problem()
    data = federated.stack_clients(parts, x.astype(np.float32), y.astype(np.float32))
    client = federated.local_training(optax.sgd(0.05), _loss, local_steps=1, batch_size=2)
    alg = federated.server_algorithm(client, n_clients=N)
    _, metrics = alg.round(alg.init(None, {"w": jnp.zeros(D), "b": jnp.zeros(2)}), data, jax.random.PRNGKey(0))
    assert float(metrics["bytes_up"]) == float(metrics["bytes_down"]) == (D + 2) * 4
    assert {"loss", "participants"} <= set(metrics)


def test_mean_over_workers_is_data_parallel_sgd():
    n = 4
    grads = jax.random.normal(jax.random.PRNGKey(0), (n, 3))
    tx = optax.chain(federated.mean_over_workers(), optax.sgd(0.5))
    out = run_workers(lambda g: tx.update(g, tx.init(g), g)[0], grads, n_workers=n)
    np.testing.assert_allclose(out, -0.5 * jnp.broadcast_to(grads.mean(0), (n, 3)), atol=1e-6)


def test_stack_runs_pads_every_run_to_the_longest_shard():
    x = np.arange(20.0)[:, None]
    a = federated.stack_clients([np.arange(3), np.arange(3, 5)], x)  # m = 3
    b = federated.stack_clients([np.arange(6), np.arange(6, 10)], x)  # m = 6
    runs = federated.stack_runs([a, b])
    assert runs.arrays[0].shape == (2, 2, 6, 1) and runs.count.tolist() == [[3, 2], [6, 4]]
    np.testing.assert_array_equal(runs.arrays[0][0, :, :3], a.arrays[0])  # each run's own rows first
    np.testing.assert_array_equal(runs.arrays[0][1], b.arrays[0])
    assert not runs.arrays[0][0, :, 3:].any()  # zero padding past the run's own m
    one = federated.stack_clients([np.arange(3)], x)
    with pytest.raises(ValueError, match="same number of clients"):
        federated.stack_runs([a, one])
    with pytest.raises(ValueError, match="at least one"):
        federated.stack_runs([])
