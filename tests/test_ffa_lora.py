"""LoRA / FFA-LoRA (lgrad.adapters) and DP-SGD (lgrad.optim._dpsgd): numpy references
of the merge, of per-example clipping and noise, the frozen A, the alpha/lr
equivalence, the federated client's message, validation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lgrad import federated
from lgrad.adapters import (LoRA, add_lora, combine, lora_client, lora_delta, lora_init, lora_labels,
                            lora_transform, merge_lora, partition, per_example_grads)
from lgrad.optim._dpsgd import clip_per_example, dpsgd, scale_by_dpsgd


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(6, 5, rngs=rngs)
        self.e = nnx.Einsum("bi,io->bo", (5, 4), rngs=rngs)
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.e(jnp.tanh(self.l1(x)))))


def _setup(seed=0):
    graphdef, state = nnx.split(_Net(nnx.Rngs(seed)))
    params = nnx.to_pure_dict(state)

    def loss(p, batch):
        logits = nnx.merge(graphdef, nnx.State(p))(batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(24, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=24), jnp.int32)
    return graphdef, params, loss, (x, y)


def test_lora_wraps_linear_and_einsum_kernels_and_merges():
    _, params, _, _ = _setup()
    lp = add_lora(params, jax.random.PRNGKey(1), rank=2, alpha=6.0)
    nodes = [n for n in jax.tree.leaves(lp, is_leaf=lambda x: isinstance(x, LoRA)) if isinstance(n, LoRA)]
    assert len(nodes) == 3 and all(n.scale == 3.0 for n in nodes)
    merged = merge_lora(lp)  # B = 0: the pretrained model
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(0)
    node = nodes[0]
    b = rng.normal(size=node.b.shape).astype(np.float32)
    node = LoRA(node.w0, node.a, jnp.asarray(b), node.scale)
    want = np.asarray(node.w0) + 3.0 * np.asarray(node.a, np.float64) @ b  # numpy reference of W0 + (alpha/r) A B
    np.testing.assert_allclose(np.asarray(node.w0 + lora_delta(node)), want, atol=1e-6)


def test_lora_init_shapes_and_in_dims():
    k = jnp.ones((2, 3, 5))
    n = lora_init(jax.random.PRNGKey(0), k, rank=4, alpha=4.0, in_dims=2)
    assert n.a.shape == (6, 4) and n.b.shape == (4, 5) and lora_delta(n).shape == (2, 3, 5)
    assert np.all(np.abs(np.asarray(n.a)) <= 1 / np.sqrt(6))
    with pytest.raises(ValueError, match="in_dims"):
        lora_init(jax.random.PRNGKey(0), k, rank=2, alpha=1.0, in_dims=3)
    with pytest.raises(ValueError, match="rank"):
        lora_init(jax.random.PRNGKey(0), k, rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        lora_init(jax.random.PRNGKey(0), k, rank=2, alpha=-1.0)


def test_shared_seed_gives_identical_a():
    _, params, _, _ = _setup()
    a1 = add_lora(params, jax.random.PRNGKey(5), rank=2, alpha=1.0)
    a2 = add_lora(params, jax.random.PRNGKey(5), rank=2, alpha=9.0)
    for x, y in zip(jax.tree.leaves(partition(a1, lora_labels(a1))[1]), jax.tree.leaves(partition(a2, lora_labels(a2))[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_ffa_mean_of_b_is_exact_and_lora_mean_is_not():
    rng = np.random.default_rng(1)
    a = rng.uniform(-0.5, 0.5, size=(6, 2))
    bs = rng.normal(size=(3, 2, 4))
    np.testing.assert_allclose(a @ bs.mean(0), np.mean([a @ b for b in bs], 0), atol=1e-12)
    as_ = a + rng.normal(size=(3, 6, 2))
    assert np.max(np.abs(as_.mean(0) @ bs.mean(0) - np.mean([x @ b for x, b in zip(as_, bs)], 0))) > 1e-3


def test_lora_transform_freezes_a_bitwise_and_trains_b():
    _, params, loss, batch = _setup()
    lp = add_lora(params, jax.random.PRNGKey(1), rank=2, alpha=4.0)
    tx = lora_transform(optax.sgd(0.5))
    s = tx.init(lp)
    obj = lambda p: loss(merge_lora(p), batch)  # noqa: E731
    p = lp
    for _ in range(5):
        u, s = tx.update(jax.grad(obj)(p), s, p)
        p = optax.apply_updates(p, u)
    frozen0 = partition(lp, lora_labels(lp))[1]
    frozen1 = partition(p, lora_labels(p))[1]
    for x, y in zip(jax.tree.leaves(frozen0), jax.tree.leaves(frozen1)):
        np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))
    assert float(obj(p)) < float(obj(lp))
    vanilla = lora_transform(optax.sgd(0.5), freeze_a=False)
    u, _ = vanilla.update(jax.grad(obj)(p), vanilla.init(p), p)
    assert any(np.any(np.asarray(n.a) != 0) for n in jax.tree.leaves(u, is_leaf=lambda x: isinstance(x, LoRA))
               if isinstance(n, LoRA))


def test_alpha_lr_equivalence():
    """FFA-LoRA with SGD: (alpha, eta) and (c alpha, eta / c^2) give the same Delta W."""
    _, params, loss, batch = _setup()
    out = []
    for alpha, lr in ((2.0, 0.3), (6.0, 0.3 / 9)):
        p = add_lora(params, jax.random.PRNGKey(1), rank=2, alpha=alpha)
        tx = lora_transform(optax.sgd(lr))
        s = tx.init(p)
        for _ in range(10):
            u, s = tx.update(jax.grad(lambda q: loss(merge_lora(q), batch))(p), s, p)
            p = optax.apply_updates(p, u)
        out.append([np.asarray(lora_delta(n)) for n in jax.tree.leaves(p, is_leaf=lambda x: isinstance(x, LoRA))
                    if isinstance(n, LoRA)])
    assert max(np.max(np.abs(a - b)) for a, b in zip(*out)) < 1e-6
    assert max(np.max(np.abs(a)) for a in out[0]) > 1e-3


def test_per_example_grads_match_single_examples():
    _, params, loss, batch = _setup()
    lp = add_lora(params, jax.random.PRNGKey(1), rank=2, alpha=4.0)
    lp = jax.tree.map(lambda n: LoRA(n.w0, n.a, n.b + 0.1, n.scale) if isinstance(n, LoRA) else n, lp,
                      is_leaf=lambda x: isinstance(x, LoRA))
    obj = lambda p, b: loss(merge_lora(p), b)  # noqa: E731
    labels = lora_labels(lp)
    pe = per_example_grads(obj, lp, batch, labels)
    for j in (0, 7):
        gj = jax.grad(obj)(lp, (batch[0][j:j + 1], batch[1][j:j + 1]))
        np.testing.assert_allclose(np.asarray(pe["l1"]["kernel"].b[j]), np.asarray(gj["l1"]["kernel"].b), atol=1e-6)
    assert pe["l1"]["kernel"].a.shape == lp["l1"]["kernel"].a.shape and not np.any(np.asarray(pe["l1"]["kernel"].a))


# ----------------------------------------------------------------------------- DP-SGD
def _np_dpsgd(per_example: list[np.ndarray], clip, sigma, noise: list[np.ndarray]) -> list[np.ndarray]:
    """numpy reference: clip each example's global norm to C, sum, add sigma C xi, divide by B."""
    b = per_example[0].shape[0]
    norms = np.sqrt(sum((g.reshape(b, -1) ** 2).sum(1) for g in per_example))
    f = np.minimum(1.0, clip / np.where(norms > 0, norms, 1.0))
    return [(np.tensordot(f, g, axes=(0, 0)) + sigma * clip * z) / b for g, z in zip(per_example, noise)]


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("use_key", [False, True])
def test_dpsgd_matches_numpy(sigma, use_key):
    rng = np.random.default_rng(2)
    g = {"w": jnp.asarray(rng.normal(size=(8, 3, 2)) * 2, jnp.float32), "b": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}
    g["w"] = g["w"].at[3].set(0.0)
    g["b"] = g["b"].at[3].set(0.0)  # a zero example is not divided by zero
    tx = scale_by_dpsgd(l2_norm_clip=1.5, noise_multiplier=sigma, seed=4)
    state = tx.init(None)
    key = jax.random.PRNGKey(9)
    for step in range(2):
        kw = {"key": jax.random.fold_in(key, step)} if use_key else {}
        out, state = tx.update(g, state, None, **kw)
        k = kw.get("key", jax.random.fold_in(jax.random.PRNGKey(4), step))
        leaves = jax.tree.leaves(g)
        noise = [np.asarray(jax.random.normal(jax.random.fold_in(k, i), l.shape[1:], jnp.float32)) for i, l in enumerate(leaves)]
        want = _np_dpsgd([np.asarray(l, np.float64) for l in leaves], 1.5, sigma, noise)
        for got, w in zip(jax.tree.leaves(out), want):
            np.testing.assert_allclose(np.asarray(got), w, atol=1e-6)


def test_dpsgd_clipping_equals_optax_without_noise():
    rng = np.random.default_rng(3)
    g = {"w": jnp.asarray(rng.normal(size=(6, 5)) * 3, jnp.float32)}
    tx = scale_by_dpsgd(l2_norm_clip=1.0, noise_multiplier=0.0)
    ours, _ = tx.update(g, tx.init(None))
    ref = optax.contrib.differentially_private_aggregate(l2_norm_clip=1.0, noise_multiplier=0.0, key=0)
    theirs, _ = ref.update(g, ref.init(g))
    np.testing.assert_allclose(np.asarray(ours["w"]), np.asarray(theirs["w"]), atol=1e-6)
    summed, norms = clip_per_example(g, 1.0)
    assert np.all(np.asarray(norms) > 1.0)
    assert np.linalg.norm(np.asarray(summed["w"])) <= 6.0 + 1e-5


def test_dpsgd_validation_and_chain():
    for bad in ({"l2_norm_clip": 0.0}, {"noise_multiplier": -1.0}):
        kw = dict(l2_norm_clip=1.0, noise_multiplier=1.0)
        kw.update(bad)
        with pytest.raises(ValueError, match=next(iter(bad))):
            scale_by_dpsgd(**kw)
    with pytest.raises(ValueError, match="learning_rate"):
        dpsgd(-1.0, l2_norm_clip=1.0, noise_multiplier=1.0)
    tx = dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=0.0)
    u, _ = tx.update({"w": jnp.ones((4, 2))}, tx.init(None), None, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * np.ones(2) / np.sqrt(2), atol=1e-6)


# ----------------------------------------------------------------------------- federated client
@pytest.mark.parametrize("freeze_a", [True, False])
def test_lora_client_sends_only_trained_leaves(freeze_a):
    _, params, loss, (x, y) = _setup()
    lp = add_lora(params, jax.random.PRNGKey(1), rank=2, alpha=4.0)
    trained, frozen = partition(lp, lora_labels(lp, freeze_a=freeze_a))
    data = federated.stack_clients([np.arange(0, 12), np.arange(12, 24)], np.asarray(x), np.asarray(y))
    data = federated.ClientData(tuple(jnp.asarray(a) for a in data.arrays), jnp.asarray(data.count))
    tx = dpsgd(0.2, l2_norm_clip=1.0, noise_multiplier=0.5)
    client = lora_client(tx, loss, frozen, freeze_a=freeze_a, local_steps=3, batch_size=4)
    alg = federated.server_algorithm(client, n_clients=2, weighted=False)
    state = alg.init(None, trained)
    state, m = jax.jit(alg.round)(state, data, jax.random.PRNGKey(0))
    n_b = sum(int(np.size(n.b)) for n in jax.tree.leaves(lp, is_leaf=lambda v: isinstance(v, LoRA)) if isinstance(n, LoRA))
    n_a = sum(int(np.size(n.a)) for n in jax.tree.leaves(lp, is_leaf=lambda v: isinstance(v, LoRA)) if isinstance(n, LoRA))
    assert int(m["bytes_up"]) == 4 * (n_b + (0 if freeze_a else n_a))
    assert float(m["frozen_changed"]) == 0.0
    full = combine(state.params, frozen)
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(merge_lora(full))[0])))


def test_dpsgd_inject_hyperparams_and_traced_sigma():
    g = {"w": jnp.ones((4, 3))}
    tx = optax.inject_hyperparams(dpsgd)(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=0.0)
    u, s = tx.update(g, tx.init({"w": jnp.zeros(3)}), None)
    np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * np.ones(3) / np.sqrt(3), atol=1e-6)

    def out(sigma):
        t = scale_by_dpsgd(l2_norm_clip=1.0, noise_multiplier=sigma, seed=1)
        return t.update(g, t.init(None))[0]["w"]

    many = jax.vmap(out)(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(many[0]), np.ones(3) / np.sqrt(3), atol=1e-6)
    np.testing.assert_allclose(np.asarray(many[1]), np.asarray(out(1.0)), atol=1e-6)
