"""Layer-local learning rules (lgrad.local): isolation, closed forms, AugLocal indices, MAN EMA, bad input."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import lgrad.local as ll
from lgrad.local import models as M
from lgrad.bench import compiled_memory

C = 3


def dense_tanh(p, h):
    return jnp.tanh(h @ p["w"] + p["b"])


def dense(p, h):
    return h @ p["w"] + p["b"]


def _dense_params(key, din, dout, dtype=jnp.float32):
    return {"w": jax.random.normal(key, (din, dout), dtype) / np.sqrt(din), "b": 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (dout,), dtype)}


def _mlp_blocks(widths=(6, 6), din=4, seed=0, dtype=jnp.float32):
    dims = [din, *widths]
    keys = jax.random.split(jax.random.PRNGKey(seed), len(dims))
    blocks = [ll.Block(dense_tanh, _dense_params(k, a, b, dtype)) for k, a, b in zip(keys, dims[:-1], dims[1:])]
    return blocks + [ll.Block(dense, _dense_params(keys[-1], dims[-1], C, dtype))]


def _batch(n=5, din=4, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.uniform(kx, (n, din)), jax.random.randint(ky, (n,), 0, C)


LOCAL_RULES = [r for r in ll.RULES if r != "backprop"]


@pytest.mark.parametrize("rule", LOCAL_RULES)
def test_cross_block_gradients_exactly_zero(rule):
    learner = ll.LocalLearner(_mlp_blocks(), rule, input_shape=(4,), num_classes=C)
    params, state = learner.init_params(), learner.init_state()
    x, y = _batch()
    jac = jax.jacrev(lambda p: learner.local_losses(p, state, x, y))(params)
    K = len(learner.blocks)
    for j in range(K):
        for part in ("blocks", "aux"):
            for leaf in jax.tree.leaves(jac[part][j]):
                rows = np.abs(np.asarray(leaf)).reshape(K, -1).max(axis=1)
                assert np.all(np.delete(rows, j) == 0.0), (rule, part, j, rows)
                if part == "blocks":
                    assert rows[j] > 0  # the block does learn from its own loss
    # the interleaved forward-only step equals grad of the summed local losses
    g, metrics = jax.jit(learner.grads)(params, state, x, y)
    g2 = jax.grad(lambda p: learner.local_losses(p, state, x, y).sum())(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert metrics["local_losses"].shape == (K,)


def test_backprop_baseline_is_end_to_end():
    learner = ll.LocalLearner(_mlp_blocks(), "backprop", input_shape=(4,), num_classes=C)
    p = learner.init_params()
    x, y = _batch()
    g, _ = learner.grads(p, learner.init_state(), x, y)
    ref = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(learner.forward(q, x), y).mean())(p)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_drtp_update_equals_closed_form():
    """1 hidden layer: dW1 = x^T [(y* P) * f'(z1)] / B, output layer = ordinary CE gradient."""
    blocks = _mlp_blocks(widths=(5,))
    P = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (C, 5)))
    learner = ll.LocalLearner(blocks, ll.drtp(projections=[P]), input_shape=(4,), num_classes=C)
    params, state = learner.init_params(), learner.init_state()
    x, y = _batch(n=6)
    g, _ = learner.grads(params, state, x, y)
    xn, yn = np.asarray(x, np.float64), np.eye(C)[np.asarray(y)]
    w1, b1 = (np.asarray(params["blocks"][0][k], np.float64) for k in ("w", "b"))
    w2, b2 = (np.asarray(params["blocks"][1][k], np.float64) for k in ("w", "b"))
    h1 = np.tanh(xn @ w1 + b1)
    delta = (yn @ P) * (1 - h1**2)
    np.testing.assert_allclose(g["blocks"][0]["w"], xn.T @ delta / 6, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["blocks"][0]["b"], delta.mean(0), rtol=1e-5, atol=1e-6)
    logits = h1 @ w2 + b2
    sm = np.exp(logits - logits.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    np.testing.assert_allclose(g["blocks"][1]["w"], h1.T @ (sm - yn) / 6, rtol=1e-5, atol=1e-6)


def test_tpsgd_losses_and_rnn_per_time_step():
    x, y = _batch()
    for loss in ("l2", "l1", "ce"):
        learner = ll.LocalLearner(_mlp_blocks(), ll.tpsgd(loss=loss), input_shape=(4,), num_classes=C)
        P = learner.init_state()["P"]
        h = jnp.tanh(x @ learner.blocks[0].params["w"] + learner.blocks[0].params["b"])
        t = jax.nn.one_hot(y, C) @ P[0]
        want = {"l2": jnp.mean((h - t) ** 2), "l1": jnp.mean(jnp.abs(h - t)),
                "ce": optax.softmax_cross_entropy_with_integer_labels(h @ P[0].T, y).mean()}[loss]
        got = learner.local_losses(learner.init_params(), learner.init_state(), x, y)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    blocks = M.rnn(3, 6, C, truncate=True, rngs=nnx.Rngs(0))
    learner = ll.LocalLearner(blocks, "tpsgd", input_shape=(4, 3), num_classes=C)
    assert learner.init_state()["P"][0].shape == (C, 6)  # one target per time step, shared over steps
    xs = jax.random.normal(jax.random.PRNGKey(2), (5, 4, 3))
    g, m = jax.jit(learner.grads)(learner.init_params(), learner.init_state(), xs, y)
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g))


def test_auglocal_paper_examples():
    assert ll.auglocal_indices(0, 16, 3) == [5, 10, 15]
    assert ll.auglocal_indices(10, 16, 3) == [12, 13, 15]
    assert ll.auglocal_indices(13, 16, 3) == [14, 15]  # all later layers when d >= n - 1 - l
    depths = ll.auglocal_depths(16, 4, gamma=0.5)
    assert depths[0] == 4 and depths[-1] == 2 and all(a >= b for a, b in zip(depths, depths[1:]))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.data())
def test_auglocal_indices_properties(n, data):
    l = data.draw(st.integers(0, n - 2))
    d = data.draw(st.integers(1, 12))
    idx = ll.auglocal_indices(l, n, d)
    assert len(idx) == min(d, n - 1 - l)
    assert idx[-1] == n - 1 and idx[0] > l
    assert all(a < b for a, b in zip(idx, idx[1:]))


def test_man_ema_rule():
    with jax.enable_x64(True):
        blocks = _mlp_blocks(dtype=jnp.float64)
        m = 0.9
        learner = ll.LocalLearner(blocks, ll.man(momentum=m), input_shape=(4,), num_classes=C)
        tx = optax.sgd(0.3)
        x, y = _batch()
        x = x.astype(jnp.float64)
        s = learner.init_train_state(tx)
        ema0 = s.rule_state["ema"]
        step = jax.jit(learner.train_step(tx, lambda t, k: (x, y)))
        s1, _ = step(s)
        s2, _ = step(s1)
        for i in range(len(blocks) - 1):
            e1 = jax.tree.map(lambda e, t: m * np.asarray(e) + (1 - m) * np.asarray(t), ema0[i], s1.params["blocks"][i + 1])
            e2 = jax.tree.map(lambda e, t: m * e + (1 - m) * np.asarray(t), e1, s2.params["blocks"][i + 1])
            for a, b in zip(jax.tree.leaves(s2.rule_state["ema"][i]), jax.tree.leaves(e2)):
                np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-7)
        # the EMA copy receives no gradient; the trainable copy (learnable bias) does
        g, _ = learner.grads(s.params, s.rule_state, x, y)
        assert float(jnp.max(jnp.abs(g["aux"][0]["lb"]["w"]))) > 0


def test_optax_transforms_and_diffgrad_apply():
    from lgrad.optim import diffgrad

    learner = ll.LocalLearner(_mlp_blocks(), "tpsgd", input_shape=(4,), num_classes=C)
    x, y = _batch(n=16)
    res = learner.fit(diffgrad(0.05), steps=30, batch_fn=lambda t, k: (x, y))
    loss = res.history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]


def test_nnx_optimizer_adapter_matches_functional_step():
    def make():
        return nnx.Sequential(M.DenseBlock(4, 6, rngs=nnx.Rngs(0)), M.Readout(6, C, rngs=nnx.Rngs(1)))

    x, y = _batch()
    model = make()
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    trainer = ll.NNXLocalTrainer(model, opt, "infopro", input_shape=(4,), num_classes=C)
    trainer.step(x, y)
    ref = ll.LocalLearner(make(), "infopro", input_shape=(4,), num_classes=C)
    s, _ = ref.train_step(optax.sgd(0.1), lambda t, k: (x, y))(ref.init_train_state(optax.sgd(0.1)))
    np.testing.assert_allclose(model.layers[0].linear.kernel[...], s.params["blocks"][0]["linear"]["kernel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.layers[1].linear.kernel[...], s.params["blocks"][1]["linear"]["kernel"], rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(trainer.aux), jax.tree.leaves(s.params["aux"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_forward_only_tpsgd_memory_constant_in_depth():
    x = jnp.ones((256, 32))
    y = jnp.zeros((256,), jnp.int32)
    temp = {}
    for rule in ("backprop", "tpsgd"):
        for D in (2, 6):
            learner = ll.LocalLearner(M.mlp(32, (64,) * D, C, rngs=nnx.Rngs(0)), rule, input_shape=(32,), num_classes=C)
            temp[rule, D] = compiled_memory(learner.grads, learner.init_params(), learner.init_state(), x, y)["temp"]
    assert temp["tpsgd", 6] <= 1.05 * temp["tpsgd", 2]
    assert temp["backprop", 6] > 1.5 * temp["backprop", 2]
    assert temp["tpsgd", 6] < temp["backprop", 6]


# ---- bad input: clear errors at construction ---------------------------------------------
def test_bad_projection_shape():
    with pytest.raises(ValueError, match=r"projections\[1\] must have shape"):
        ll.LocalLearner(_mlp_blocks(), ll.tpsgd(projections=[np.zeros((C, 6)), np.zeros((C, 7))]), input_shape=(4,), num_classes=C)
    with pytest.raises(ValueError, match="one matrix per hidden block"):
        ll.LocalLearner(_mlp_blocks(), ll.drtp(projections=[np.zeros((C, 6))]), input_shape=(4,), num_classes=C)


def test_blocks_that_do_not_chain():
    blocks = _mlp_blocks()
    blocks[1] = ll.Block(dense_tanh, _dense_params(jax.random.PRNGKey(0), 7, 6))
    with pytest.raises(ValueError, match=r"blocks do not chain: blocks\[1\]"):
        ll.LocalLearner(blocks, "tpsgd", input_shape=(4,), num_classes=C)
    with pytest.raises(ValueError, match="num_classes=5"):
        ll.LocalLearner(_mlp_blocks(), "tpsgd", input_shape=(4,), num_classes=5)
    # AugLocal's copies must chain on the block output too
    with pytest.raises(ValueError, match="auglocal auxiliary net of block 0"):
        ll.LocalLearner(_mlp_blocks(widths=(6, 5)), ll.auglocal(depth=1), input_shape=(4,), num_classes=C)


def test_unknown_rule_and_bad_options():
    with pytest.raises(ValueError, match="unknown local rule 'nope'"):
        ll.LocalLearner(_mlp_blocks(), "nope", input_shape=(4,), num_classes=C)
    with pytest.raises(ValueError, match="unknown local rule"):
        ll.make_rule("hebbian")
    with pytest.raises(ValueError, match="loss must be one of"):
        ll.tpsgd(loss="huber")
    with pytest.raises(ValueError, match="momentum"):
        ll.man(momentum=1.5)
    with pytest.raises(ValueError, match="depth"):
        ll.auglocal(depth=0)
    with pytest.raises(ValueError, match="rule must be"):
        ll.LocalLearner(_mlp_blocks(), 3, input_shape=(4,), num_classes=C)


def test_model_activation_option():
    """mlp/cnn take act="relu" (default) or "tanh" (DRTP's paper uses tanh units); anything else is refused."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
    for act, f in (("relu", jax.nn.relu), ("tanh", jnp.tanh)):
        blocks = M.mlp(8, (5,), C, rngs=nnx.Rngs(0), act=act)
        lin = blocks[0].linear
        np.testing.assert_allclose(np.asarray(blocks[0](x)), np.asarray(f(lin(x))), rtol=1e-6)
    img = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    conv = M.cnn((8, 8), 4, C, rngs=nnx.Rngs(0), act="tanh")[0]
    out = np.asarray(conv(img))
    assert out.min() >= -1 and out.max() <= 1 and out.min() < 0  # tanh, not ReLU
    with pytest.raises(ValueError, match="act must be one of"):
        M.mlp(8, (5,), C, rngs=nnx.Rngs(0), act="gelu")
    with pytest.raises(ValueError, match="act must be one of"):
        M.cnn((8, 8), 4, C, rngs=nnx.Rngs(0), act="sigmoid")
