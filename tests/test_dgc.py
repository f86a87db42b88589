"""Deep Gradient Compression pieces (lgrad.optim: dgc, scale_by_dgc and their pieces)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lgrad.distributed import comm, run_workers
from lgrad.optim import dgc, scale_by_dgc
from lgrad.optim import (
    accumulate,
    bookkeeping_error,
    clip_local_gradient,
    exchange,
    leaf_budget,
    local_step,
    select_topk,
    warmup_density,
    warmup_phases,
)
from lgrad.testing.numpy_reference import dgc_reference

N = 20_000
K = 20


@pytest.fixture(scope="module")
def sampled_select():
    return jax.jit(lambda x, key: select_topk(x, K, key=key))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), heavy=st.booleans())
@example(seed=15500743, heavy=True)  # the sample holds a 775 outlier, 18x the 20th largest |x|
def test_sampled_threshold_count_in_range(sampled_select, seed, heavy):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2, size=N) if heavy else rng.normal(size=N)
    x = jnp.asarray(x, jnp.float32)
    msg = sampled_select(x, jax.random.PRNGKey(seed))
    cnt = int(msg.count)
    assert cnt <= 1.3 * K
    if cnt < 0.8 * K:
        # Only when the bounded refinement (max_tries=10 lowerings by 0.8, i.e. down to
        # 0.107 of the sampled threshold) ran out: heavy tails, an outlier in the sample.
        # More lowerings reach the range.
        assert heavy, cnt
        longer = select_topk(x, K, key=jax.random.PRNGKey(seed), max_tries=40)
        assert 0.8 * K <= int(longer.count) <= 1.3 * K
        return
    idx = np.asarray(msg.indices)[:cnt]
    assert len(set(idx.tolist())) == cnt
    np.testing.assert_array_equal(np.asarray(msg.values)[:cnt], np.asarray(x)[idx])
    # padding: index == size, value 0
    assert np.all(np.asarray(msg.indices)[cnt:] == N) and np.all(np.asarray(msg.values)[cnt:] == 0)
    # whatever was sent is at least as large as everything not sent
    mag = np.abs(np.asarray(x))
    rest = np.delete(mag, idx)
    assert mag[idx].min() >= rest.max()


def test_exact_topk_and_fallback():
    x = jnp.asarray(np.random.default_rng(0).normal(size=5000), jnp.float32)
    msg = select_topk(x, 7, threshold="exact")
    want = np.argsort(-np.abs(np.asarray(x)))[:7]
    assert set(np.asarray(msg.indices).tolist()) == set(want.tolist()) and int(msg.count) == 7
    # a sample that over-estimates the count (all samples equal) triggers the exact top-k branch
    y = jnp.concatenate([jnp.ones(4900), jnp.arange(100.0) + 2.0])
    m2 = select_topk(y, 10, min_samples=10, sample_fraction=0.002)
    assert int(m2.count) <= 13
    assert leaf_budget(1000, 0.01) == (10, 13) and leaf_budget(1000, 0.01, threshold="exact") == (10, 10)


def test_bookkeeping_identity_and_masking():
    rng = np.random.default_rng(1)
    params = {"a": jnp.zeros((50, 40)), "b": jnp.zeros((30,))}
    u = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    v = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    st_ = jax.jit(lambda g, u, v: local_step(g, u, v, density=0.05, momentum=0.9, min_compress_size=0))(g, u, v)
    own = exchange(st_, g, axis_name=None)
    for k in params:
        np.testing.assert_allclose(own[k] + st_.v[k], st_.accumulated[k], atol=1e-6)
        sent = np.asarray(own[k]) != 0
        assert np.all(np.asarray(st_.u[k])[sent] == 0) and np.all(np.asarray(st_.v[k])[sent] == 0)
    assert int(st_.messages[0].count) >= 0.8 * 100  # leaf "a": k = 100
    # accumulation formulas
    u2, v2 = accumulate(g, u, v, 0.9)
    np.testing.assert_allclose(u2["a"], 0.9 * u["a"] + g["a"], rtol=1e-6)
    np.testing.assert_allclose(v2["a"], v["a"] + u2["a"], rtol=1e-6)
    u3, v3 = accumulate(g, u, v, 0.9, nesterov=True)
    np.testing.assert_allclose(u3["a"], 0.9 * (u["a"] + g["a"]), rtol=1e-6)
    np.testing.assert_allclose(v3["a"], v["a"] + u3["a"] + g["a"], rtol=1e-6)


def test_warmup_schedules():
    paper = [warmup_density(e) for e in range(6)]
    np.testing.assert_allclose(paper, [0.25, 0.0625, 0.015625, 0.00390625, 0.001, 0.001])
    sparsity = [1 - d for d in paper[:5]]
    np.testing.assert_allclose(sparsity, [0.75, 0.9375, 0.984375, 0.99609375, 0.999], atol=1e-12)
    code = [warmup_density(e, schedule="code") for e in range(7)]
    np.testing.assert_allclose(code, [0.001 ** ((e + 1) / 6) for e in range(6)] + [0.001])
    phases = warmup_phases(100, 10)
    assert sum(n for n, _ in phases) == 100
    assert [d for _, d in phases] == [0.25, 0.0625, 0.015625, 0.00390625, 0.001]
    assert phases[-1] == (60, 0.001)


def test_exchange_vmap_equals_mesh_and_counts_bytes():
    n = 8
    params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros((5,))}
    tx = scale_by_dgc(0.02, min_compress_size=10)
    rng = np.random.default_rng(2)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(n,) + p.shape), jnp.float32), params)
    states = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p] * n), params))
    out = {}
    for backend in ("vmap", "mesh"):
        with comm.counting() as sent:
            out[backend] = run_workers(tx.update, grads, states, n_workers=n, backend=backend)
        k, cap = leaf_budget(64 * 32, 0.02)
        assert sent.bytes == cap * 8 + 5 * 4  # values + int32 indices, dense bias via pmean
    (ua, sa), (ub, sb) = out["vmap"], out["mesh"]
    for key in params:
        np.testing.assert_allclose(ua[key], ub[key], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(sa.residual[key], sb.residual[key], rtol=1e-6, atol=1e-7)
        # every worker holds the same aggregate
        assert np.all(np.asarray(ua[key]) == np.asarray(ua[key])[0])
    # the aggregate is the mean of the workers' own sent tensors (sent = accumulated - residual)
    own_sent = np.asarray(grads["w"]) - np.asarray(sa.residual["w"])  # u = 0 before, so accumulated = g
    np.testing.assert_allclose(np.asarray(ua["w"])[0], own_sent.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ua["b"])[0], np.asarray(grads["b"]).mean(0), rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_single_worker_matches_numpy_reference(nesterov):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 12)) / np.sqrt(12)
    b = rng.normal(size=30)
    with jax.enable_x64(True):
        tx = dgc(0.1, density=0.25, threshold="exact", nesterov=nesterov, axis_name=None)
        x = jnp.asarray(rng.normal(size=12))
        loss = lambda p: 0.5 * jnp.sum((jnp.asarray(a) @ p - jnp.asarray(b)) ** 2)  # noqa: E731
        state = tx.init(x)
        upd = jax.jit(tx.update)
        traj, p = [], x
        for _ in range(60):
            u, state = upd(jax.grad(loss)(p), state)
            p = optax.apply_updates(p, u)
            traj.append(np.asarray(p))
    want = dgc_reference(lambda z: a.T @ (a @ z - b), np.asarray(x), 60, learning_rate=0.1, density=0.25,
                         nesterov=nesterov)
    np.testing.assert_allclose(np.asarray(traj), want, atol=1e-9)


def test_dense_without_masking_is_momentum_sgd():
    rng = np.random.default_rng(4)
    g_seq = [jnp.asarray(rng.normal(size=9), jnp.float32) for _ in range(6)]
    ours = dgc(0.1, density=1.0, momentum=0.9, momentum_masking=False, axis_name=None)
    ref = optax.sgd(0.1, momentum=0.9)
    s1, s2 = ours.init(g_seq[0]), ref.init(g_seq[0])
    for g in g_seq:
        u1, s1 = ours.update(g, s1)
        u2, s2 = ref.update(g, s2)
        np.testing.assert_allclose(u1, u2, rtol=1e-6)


def test_local_clipping_scaled_by_sqrt_n():
    g = {"a": jnp.full((4,), 3.0)}  # norm 6
    c = clip_local_gradient(g, 4.0, 4)  # limit 4 / 2 = 2
    np.testing.assert_allclose(optax.tree.norm(c), 2.0, rtol=1e-6)
    same = clip_local_gradient(g, 100.0, 4)
    np.testing.assert_allclose(same["a"], g["a"])


@pytest.mark.parametrize(
    "bad",
    [
        {"density": 0.0}, {"density": -0.1}, {"density": 1.5}, {"density": float("nan")},
        {"momentum": 1.0}, {"momentum": -0.1}, {"clip_norm": 0.0}, {"threshold": "approx"},
        {"sample_fraction": 0.0}, {"max_send_factor": 0.5}, {"min_compress_size": -1},
    ],
)
def test_bad_arguments(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        scale_by_dgc(**{"density": 0.01, **bad})


def test_k_zero_after_rounding_raises_at_init():
    tx = scale_by_dgc(0.001)
    with pytest.raises(ValueError, match="density"):
        tx.init({"b": jnp.zeros((10,))})
    # sending small leaves dense avoids it
    scale_by_dgc(0.001, min_compress_size=11).init({"b": jnp.zeros((10,))})
    with pytest.raises(ValueError, match="learning_rate"):
        dgc(-1.0)
    with pytest.raises(ValueError, match="final_density"):
        warmup_density(0, final_density=0.0)
    with pytest.raises(ValueError, match="schedule"):
        warmup_density(0, schedule="linear")


def test_inject_hyperparams_with_static_density():
    """The call DGC's own error message recommends works (and injects the learning rate)."""
    params = {"w": jnp.zeros(4)}
    g = {"w": jnp.array([1.0, -3.0, 0.5, 2.0])}
    inj = optax.inject_hyperparams(dgc, static_args=("density",))(0.1, density=0.5, axis_name=None)
    state = inj.init(params)
    assert set(state.hyperparams) == {"learning_rate", "momentum", "seed"}
    upd, state = jax.jit(inj.update)(g, state)
    np.testing.assert_allclose(upd["w"], [0.0, 0.3, 0.0, -0.2], rtol=1e-6)
    with pytest.raises(ValueError, match="static_args"):
        optax.inject_hyperparams(dgc)(0.1, density=0.5, axis_name=None).init(params)
    with pytest.raises(ValueError, match="sample_fraction"):  # set explicitly: static too
        optax.inject_hyperparams(dgc, static_args=("density",))(0.1, 0.5, sample_fraction=0.1).init(params)


@pytest.mark.parametrize("n", [1, 3])
def test_track_bookkeeping(n):
    """state.bookkeeping: own sent + new residual == accumulated, without changing the numerics."""
    params = {"w": jnp.zeros((40, 30)), "b": jnp.zeros((7,))}
    rng = np.random.default_rng(5)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(n,) + p.shape), jnp.float32), params)
             for _ in range(3)]
    out = {}
    for track in (False, True):
        tx = scale_by_dgc(0.05, min_compress_size=10, track_bookkeeping=track)
        s = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p] * n), params))
        step = jax.jit(lambda g, s, tx=tx: run_workers(tx.update, g, s, n_workers=n))  # one compile, not op by op
        for g in grads:
            u, s = step(g, s)
        out[track] = (u, s)
    (u0, s0), (u1, s1) = out[False], out[True]
    for k in params:
        np.testing.assert_array_equal(u0[k], u1[k])
        np.testing.assert_array_equal(s0.residual[k], s1.residual[k])
    assert np.all(np.asarray(s0.bookkeeping) == 0)
    book = np.asarray(s1.bookkeeping)
    assert book.shape == (n,) and book.dtype == np.float32 and np.all(book <= 1e-6)
    # the helper on its own: a corrupted residual is caught
    g0 = jax.tree.map(lambda a: a[0], grads[0])
    zeros = jax.tree.map(jnp.zeros_like, params)
    st_ = jax.jit(lambda g, z: local_step(g, z, z, density=0.05, min_compress_size=10))(g0, zeros)
    error = jax.jit(bookkeeping_error)
    assert float(error(st_, params)) <= 1e-6
    bad = st_._replace(v={"w": st_.v["w"] + 0.5, "b": st_.v["b"]})
    np.testing.assert_allclose(float(error(bad, params)), 0.5, rtol=1e-6)


def test_default_axis_is_workers():
    import inspect

    for f in (dgc, scale_by_dgc, exchange):
        assert inspect.signature(f).parameters["axis_name"].default == comm.AXIS


@pytest.mark.parametrize("n", [20_000, 20_011, 31])
def test_blocked_count_and_compaction_match_numpy(n):
    """Per-block counts (also packed: three thresholds in one pass), the blocked
    compaction (a tail block shorter than _BLOCK included) and the multi-rank order
    statistics against numpy."""
    from lgrad.optim._dgc import _block_counts, _block_counts_packed, _compact_over, _kth_largest, _order_statistics

    mag = jnp.abs(jnp.asarray(np.random.default_rng(n).standard_t(3, size=n), jnp.float32))
    m = np.asarray(mag)
    ranks = (1, 3, min(n, 17))
    thrs = _kth_largest(mag, ranks)
    np.testing.assert_array_equal(np.asarray(thrs), np.sort(m)[::-1][np.asarray(ranks) - 1])
    np.testing.assert_array_equal(np.asarray(_order_statistics(mag, ranks)), np.asarray(thrs))  # top_k at n >= 8*17
    packed = np.asarray(_block_counts_packed(mag, thrs))
    for j, t in enumerate(np.asarray(thrs)):
        single = np.asarray(_block_counts(mag, t))
        np.testing.assert_array_equal(packed[j], single)
        assert single.sum() == (m >= t).sum()
        cap = max(int((m >= t).sum()), 5)
        want = np.nonzero(m >= t)[0]
        got = np.asarray(_compact_over(mag, jnp.float32(t), cap, jnp.asarray(single)))
        np.testing.assert_array_equal(got[: len(want)], want)
        assert np.all(got[len(want):] == n)


def test_candidate_thresholds_pick_the_in_range_one():
    """Sampled candidates counted in one pass: the in-range one nearest
    sqrt(lo * cap) is taken without a refinement pass; none in range with candidates on
    both sides starts regula falsi from that bracket; all on one side refines as before."""
    from lgrad.optim._dgc import _candidate_ranks, _refine

    assert _candidate_ranks(10_000, 10) == (7, 9, 11, 14, 18)
    assert _candidate_ranks(1000, 1) == (1, 1, 1, 1, 2)
    assert _candidate_ranks(20, 15) == (10, 14, 16, 20, 20)
    mag = jnp.arange(1.0, 10_001.0, dtype=jnp.float32)  # count(>= t) = 10_001 - t
    hint = (jnp.float32(10_000.0), jnp.asarray(1, jnp.int32))

    def refine(thrs, lo=800, cap=1300):
        from lgrad.optim._dgc import _block_counts_packed

        thrs = jnp.asarray(thrs, jnp.float32)
        t, counts, cnt = _refine(mag, thrs, _block_counts_packed(mag, thrs), lo, cap, 0.8, 10, hint)
        assert int(counts.sum()) == int(cnt) == int((mag >= t).sum())
        return float(t), int(cnt)

    assert refine([9501.0, 8901.0, 8001.0]) == (8901.0, 1100)  # middle in range, nearest 1020
    assert refine([9501.0, 9001.0, 8001.0]) == (9001.0, 1000)  # two in range: the nearer
    assert refine([9301.0, 9101.0, 8601.0]) == (9101.0, 900)  # 700, 900, 1400 -> 900
    t, cnt = refine([9501.0, 9301.0, 5001.0])  # 500, 700 below, 5000 above: bracketed
    assert 800 <= cnt <= 1300 and 5001.0 < t < 9301.0
    t, cnt = refine([9901.0, 9801.0, 9701.0])  # all below: lowered
    assert 800 <= cnt <= 1300
    t, cnt = refine([1.0, 2.0, 3.0][::-1])  # all above: raised
    assert 800 <= cnt <= 1300
