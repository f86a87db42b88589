"""Zeroth-order SPSA / MeZO with shared randomness (lgrad.optim: mezo and its pieces)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.distributed import comm, run_workers
from lgrad.optim import (
    INVALID_CODE,
    mezo,
    one_byte_decode,
    one_byte_encode,
    perturb,
    sample_key,
    scale_by_mezo,
    spsa_gradient,
    spsa_projected_gradient,
)

A = jnp.asarray(np.diag(np.linspace(0.5, 2.0, 6)), jnp.float32)


def quad(p):
    x = jnp.concatenate([p["w"], p["b"]])
    return 0.5 * x @ A @ x + jnp.sum(x)


P0 = {"w": jnp.arange(4.0) / 4, "b": jnp.array([1.0, -1.0])}


def test_projected_gradient_is_directional_derivative():
    key = jax.random.PRNGKey(0)
    pg = spsa_projected_gradient(quad, P0, key, 1e-2)
    zero = jax.tree.map(jnp.zeros_like, P0)
    z = perturb(zero, key, 1.0)  # the same z, regenerated from the key
    g = jax.grad(quad)(P0)
    want = sum(jnp.vdot(g[k], z[k]) for k in P0)
    np.testing.assert_allclose(pg, want, rtol=1e-4)  # central differences are exact on a quadratic


def test_spsa_mean_points_along_gradient():
    est = spsa_gradient(quad, P0, jax.random.PRNGKey(1), 1e-3, num_samples=4000)
    g = jax.grad(quad)(P0)
    e = np.concatenate([np.asarray(est["w"]), np.asarray(est["b"])])
    t = np.concatenate([np.asarray(g["w"]), np.asarray(g["b"])])
    assert e @ t / (np.linalg.norm(e) * np.linalg.norm(t)) > 0.97
    # unbiased: E[pg z] = g; the error of the mean shrinks like 1/sqrt(S)
    assert np.linalg.norm(e - t) < 0.15 * np.linalg.norm(t)


def test_single_worker_converges():
    tx = mezo(0.05, axis_name=None)
    p, s = P0, tx.init(P0)
    upd = jax.jit(lambda s, p: tx.update(None, s, p, loss_fn=quad))
    for _ in range(400):
        u, s = upd(s, p)
        p = optax.apply_updates(p, u)
    x_star = -np.linalg.solve(np.asarray(A), np.ones(6))
    x = np.concatenate([np.asarray(p["w"]), np.asarray(p["b"])])
    assert np.linalg.norm(x - x_star) < 0.1 * np.linalg.norm(x_star)


def _distributed(codec, backend, steps=5, nan_at=None, n=4):
    tx = mezo(0.05, axis_name="workers", codec=codec, num_samples=2, codec_scale=0.5)
    rng = np.random.default_rng(0)
    shift = jnp.asarray(rng.normal(size=(n, 6)), jnp.float32)  # each worker its own loss

    def worker(p, s, c):
        hist, sent_bytes = [], 0
        for t in range(steps):  # one compiled program for all steps
            def loss(q, t=t):
                val = quad(q) + jnp.sum(c * jnp.concatenate([q["w"], q["b"]]))
                if nan_at == t:
                    val = jnp.where(comm.axis_index() == 1, jnp.nan, val)
                return val

            with comm.counting() as sent:
                u, s = tx.update(None, s, p, loss_fn=loss)
            sent_bytes = sent.bytes
            p = optax.apply_updates(p, u)
            hist.append(p)
        return p, s, jnp.asarray(sent_bytes), hist

    rep = jax.tree.map(lambda a: jnp.stack([a] * n), P0)
    s = jax.vmap(tx.init)(rep)
    p, s, b, history = run_workers(worker, rep, s, shift, n_workers=n, backend=backend)
    return p, s, int(np.asarray(b)[0]), history


@pytest.mark.parametrize("codec,backend,n", [("one_byte", "mesh", 8), ("float", "vmap", 4)])
def test_replicas_bitwise_identical_and_bytes(codec, backend, n):
    p, s, sent, _ = _distributed(codec, backend, n=n)
    for k in P0:
        a = np.asarray(p[k])
        assert all(a[i].tobytes() == a[0].tobytes() for i in range(len(a)))
        assert not np.array_equal(a[0], np.asarray(P0[k]))  # it did move
    assert sent == (2 if codec == "one_byte" else 8)  # 2 samples: 1 byte (or 4) each
    assert int(np.asarray(s[0].skipped).max()) == 0


def test_nan_loss_skips_step_on_every_replica():
    p, s, _, hist = _distributed("one_byte", "vmap", steps=4, nan_at=2)
    assert np.asarray(s[0].skipped).tolist() == [1, 1, 1, 1]
    for k in P0:
        before, after = np.asarray(hist[1][k]), np.asarray(hist[2][k])
        np.testing.assert_array_equal(before, after)  # step 2 applied nothing
        assert not np.array_equal(np.asarray(hist[2][k]), np.asarray(hist[3][k]))  # step 3 did
        assert np.all(np.isfinite(np.asarray(p[k])))
        assert all(np.asarray(p[k])[i].tobytes() == np.asarray(p[k])[0].tobytes() for i in range(4))


@settings(max_examples=30, deadline=None)
@given(
    mag=st.floats(0.0196, 51.0),
    sign=st.sampled_from([-1.0, 1.0]),
    scale=st.sampled_from([1e-3, 1.0, 10.0]),
)
def test_one_byte_roundtrip_error_bound(mag, sign, scale):
    pg = jnp.asarray(sign * mag * scale, jnp.float32)
    code = one_byte_encode(pg, scale=scale)
    assert code.dtype == jnp.int8
    back = float(one_byte_decode(code, scale=scale))
    assert np.sign(back) == sign
    assert abs(back - float(pg)) <= (np.exp(1 / 32) - 1) * abs(float(pg)) * (1 + 1e-5)


def test_one_byte_special_values():
    x = jnp.asarray([0.0, 1e-9, -1e9, jnp.nan, jnp.inf, -jnp.inf], jnp.float32)
    c = np.asarray(one_byte_encode(x))
    assert c[0] == 0 and c[3] == c[4] == c[5] == INVALID_CODE
    d = np.asarray(one_byte_decode(c))
    assert d[0] == 0 and np.isnan(d[3:]).all()
    np.testing.assert_allclose(d[1], np.exp(-63 / 16), rtol=1e-6)  # clipped to the smallest magnitude
    np.testing.assert_allclose(d[2], -np.exp(63 / 16), rtol=1e-6)


def test_sample_keys_distinct():
    base = jax.random.PRNGKey(0)
    keys = {tuple(np.asarray(jax.random.key_data(sample_key(base, t, m, s))).tolist())
            for t in range(3) for m in range(3) for s in range(3)}
    assert len(keys) == 27


@pytest.mark.parametrize(
    "bad",
    [{"eps": 0.0}, {"eps": -1e-3}, {"learning_rate": -1.0}, {"num_samples": 0}, {"weight_decay": -0.1},
     {"codec": "half"}, {"codec_scale": 0.0}],
)
def test_bad_arguments(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        mezo(**{"learning_rate": 0.1, **bad})


def test_update_needs_loss_fn():
    tx = mezo(0.1, axis_name=None)
    with pytest.raises(ValueError, match="loss_fn"):
        tx.update(None, tx.init(P0), P0)


def test_mezo_is_scale_by_mezo_then_learning_rate():
    """mezo(lr) == chain(scale_by_mezo, -lr); scale_by_mezo returns the (positive) SPSA estimate."""
    kw = dict(eps=1e-3, num_samples=3, weight_decay=0.01, axis_name=None)
    tx, rule = mezo(0.05, **kw), scale_by_mezo(**kw)
    s1, s2 = tx.init(P0), rule.init(P0)
    u1, s1 = tx.update(None, s1, P0, loss_fn=quad)
    g, s2 = rule.update(None, s2, P0, loss_fn=quad)
    for k in P0:
        np.testing.assert_allclose(u1[k], -0.05 * g[k], rtol=1e-6)
    # the estimate is the mean of pg_s z_s plus the decay: S = 3 samples of worker 0 at step 0
    zero = jax.tree.map(jnp.zeros_like, P0)
    keys = [sample_key(jax.random.PRNGKey(0), 0, 0, s) for s in range(3)]
    want = {k: 0.01 * P0[k] for k in P0}
    for key in keys:
        pg = spsa_projected_gradient(quad, P0, key, 1e-3)
        z = perturb(zero, key, 1.0)
        want = {k: want[k] + pg * z[k] / 3 for k in P0}
    for k in P0:
        np.testing.assert_allclose(g[k], want[k], rtol=1e-5, atol=1e-7)
    assert int(s1[0].count) == 1 and s1[0].projected_grads.shape == (3,)


def test_inject_hyperparams_with_static_num_samples():
    kw = dict(eps=1e-3, num_samples=2, codec="one_byte", axis_name=None)
    inj = optax.inject_hyperparams(mezo, static_args=("num_samples",))(0.05, **kw)
    direct = mezo(0.05, **kw)
    si, sd = inj.init(P0), direct.init(P0)
    assert set(si.hyperparams) == {"learning_rate", "eps", "weight_decay", "seed", "codec_scale"}
    step_i = jax.jit(lambda s, p: inj.update(None, s, p, loss_fn=quad))
    step_d = jax.jit(lambda s, p: direct.update(None, s, p, loss_fn=quad))
    pi = pd = P0
    for _ in range(3):
        ui, si = step_i(si, pi)
        ud, sd = step_d(sd, pd)
        pi, pd = optax.apply_updates(pi, ui), optax.apply_updates(pd, ud)
    for k in P0:
        np.testing.assert_allclose(pi[k], pd[k], rtol=1e-6, atol=1e-7)
    # forgetting the static argument is refused in one line that names the fix
    with pytest.raises(ValueError, match="static_args=\\('num_samples',\\)"):
        optax.inject_hyperparams(mezo)(0.05, **kw).init(P0)


def test_default_axis_is_workers():
    import inspect

    for f in (mezo, scale_by_mezo):
        assert inspect.signature(f).parameters["axis_name"].default == comm.AXIS
