"""lgrad.robust aggregators: numpy references, properties, bad input, non-finite rows."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad import robust
from lgrad.distributed import run_workers

SET = settings(max_examples=6, deadline=None)


# ----------------------------------------------------------------------------- numpy references
def np_trimmed(x, f):
    s = np.sort(x, axis=0)
    return s[f : len(x) - f].mean(0)


def np_krum_scores(x, f):
    n = len(x)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.array([np.sort(np.delete(d[i], i))[: n - f - 1].sum() for i in range(n)])


def np_nna(x, f, i):
    d = ((x - x[i]) ** 2).sum(-1)
    return x[np.argsort(d, kind="stable")[: len(x) - f]].mean(0)


def np_cc(x, v, tau, iters):
    for _ in range(iters):
        diff = x - v
        nrm = np.linalg.norm(diff, axis=1, keepdims=True)
        v = v + (diff * np.minimum(1, tau / nrm)).mean(0)
    return v


def _x(seed, n, d):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# few distinct shapes: every new shape recompiles the eager jnp ops
shapes = st.tuples(st.integers(0, 10_000), st.sampled_from([3, 6, 7]), st.sampled_from([1, 3]))


@SET
@given(shapes, st.data())
def test_numpy_references(sd, data):
    seed, n, d = sd
    x = _x(seed, n, d)
    f = data.draw(st.integers(0, (n - 1) // 2))
    i = data.draw(st.integers(0, n - 1))
    np.testing.assert_allclose(robust.mean(x), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(robust.median(x), np.median(x, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(robust.trimmed_mean(x, f), np_trimmed(x, f), rtol=1e-5, atol=1e-6)
    sc = np_krum_scores(x, f)
    np.testing.assert_allclose(robust.krum_scores(jnp.asarray(x), f), sc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(robust.krum(x, f), x[np.argmin(sc)], rtol=1e-6)
    np.testing.assert_allclose(robust.multi_krum(x, f), x[np.argsort(sc, kind="stable")[: n - f]].mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(robust.nna(x, f, i), np_nna(x, f, i), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(robust.nnm(x, f), np.stack([np_nna(x, f, j) for j in range(n)]), rtol=1e-5, atol=1e-6)
    v0 = np.zeros(d, np.float32)
    np.testing.assert_allclose(robust.centered_clipping(x, tau=0.7, iters=3), np_cc(x, v0, 0.7, 3), rtol=1e-4, atol=1e-5)


def test_geometric_median_weiszfeld():
    x = _x(3, 9, 4)
    z = np.median(x, 0)
    for _ in range(50):
        w = 1 / np.maximum(0.1, np.linalg.norm(x - z, axis=1))
        z = (w[:, None] * x).sum(0) / w.sum()
    np.testing.assert_allclose(robust.geometric_median(x, iters=50), z, rtol=1e-4, atol=1e-5)
    # with nu -> 0 it approaches the minimiser of sum of distances
    obj = lambda v: np.linalg.norm(x - v, axis=1).sum()  # noqa: E731
    g = np.asarray(robust.geometric_median(x, nu=1e-6, iters=200))
    assert obj(g) <= obj(x.mean(0)) + 1e-5 and obj(g) <= obj(np.median(x, 0)) + 1e-5


# ----------------------------------------------------------------------------- properties
def _rules(f, i):
    return {
        "median": robust.median,
        "trimmed_mean": lambda x: robust.trimmed_mean(x, f),
        "krum": lambda x: robust.krum(x, f),
        "multi_krum": lambda x: robust.multi_krum(x, f),
        "geometric_median": lambda x: robust.geometric_median(x, iters=5),
        "centered_clipping": lambda x: robust.centered_clipping(x, center=x[0] * 0, tau=1.0, iters=2),
        "mean": robust.mean,
    }


@SET
@given(shapes, st.integers(0, 10_000))
def test_permutation_invariance(sd, pseed):
    seed, n, d = sd
    x = _x(seed, n, d)
    perm = np.random.default_rng(pseed).permutation(n)
    f = (n - 1) // 2
    for name, rule in _rules(f, 0).items():
        if name in ("krum", "multi_krum"):  # the selection may differ on ties; the scores may not
            np.testing.assert_allclose(robust.krum_scores(jnp.asarray(x[perm]), f), np.asarray(robust.krum_scores(jnp.asarray(x), f))[perm], rtol=1e-4, atol=1e-5)
            continue
        np.testing.assert_allclose(rule(x[perm]), rule(x), rtol=1e-4, atol=1e-5, err_msg=name)
    # nna: node i's view is invariant when its own row moves with it
    j = int(np.flatnonzero(perm == 0)[0])
    np.testing.assert_allclose(robust.nna(x[perm], f, j), robust.nna(x, f, 0), rtol=1e-5, atol=1e-6)


@SET
@given(shapes, st.floats(-100, 100))
def test_translation_equivariance(sd, shift):
    seed, n, d = sd
    x = _x(seed, n, d)
    c = np.full(d, shift, np.float32)
    f = (n - 1) // 2
    for name, rule in _rules(f, 0).items():
        if name == "centered_clipping":
            got = robust.centered_clipping(x + c, center=c, tau=1.0, iters=2)
            want = robust.centered_clipping(x, center=np.zeros(d, np.float32), tau=1.0, iters=2) + c
        else:
            got, want = rule(x + c), rule(x) + c
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * (1 + abs(shift)), err_msg=name)
    np.testing.assert_allclose(robust.nna(x + c, f, 1), robust.nna(x, f, 1) + c, atol=1e-3 * (1 + abs(shift)))


@SET
@given(shapes)
def test_f0_reductions(sd):
    seed, n, d = sd
    x = _x(seed, n, d)
    np.testing.assert_allclose(robust.trimmed_mean(x, 0), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(robust.multi_krum(x, 0), x.mean(0), rtol=1e-5, atol=1e-6)
    for i in range(n):
        np.testing.assert_allclose(robust.nna(x, 0, i), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(robust.nnm(x, 0), np.broadcast_to(x.mean(0), x.shape), rtol=1e-5, atol=1e-6)


@SET
@given(shapes, st.floats(1e3, 1e30), st.integers(0, 10_000))
def test_one_huge_outlier(sd, big, where):
    seed, n, d = sd
    n = max(n, 3)
    x = _x(seed, n, d)
    k = where % n
    bad = x.copy()
    bad[k] = big
    lo, hi = x.min(0) - 1e-4, x.max(0) + 1e-4
    honest = np.delete(x, k, 0)
    for name, rule in {
        "median": robust.median,
        "trimmed_mean": lambda v: robust.trimmed_mean(v, 1),
        "krum": lambda v: robust.krum(v, 1),
        "nna": lambda v: robust.nna(v, 1, (k + 1) % n),
        "geometric_median": lambda v: robust.geometric_median(v, iters=20),
    }.items():
        out = np.asarray(rule(bad))
        assert np.all(np.isfinite(out)), name
        # The *smoothed* geometric median is not confined to the honest hull: at its
        # fixed point the outlier still pulls with force w*dist <= 1, balanced by the
        # honest rows, so it may leave the hull by up to about nu (0.1) per coordinate
        # (e.g. n=3: two honest rows 0.024 apart, the output lands 0.038 outside).
        # Its robustness is that this excursion is bounded whatever the outlier's size.
        slack = 0.1 + 1e-3 if name == "geometric_median" else 1e-3
        assert np.all(out >= np.minimum(lo, honest.min(0)) - slack) and np.all(out <= hi + slack), name


def test_jit_and_vmap():
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7, 3)), jnp.float32)
    for rule in [robust.median, functools.partial(robust.trimmed_mean, f=2), functools.partial(robust.krum, f=2),
                 functools.partial(robust.multi_krum, f=2), robust.geometric_median,
                 functools.partial(robust.nnm, f=2), lambda x: robust.centered_clipping(x, tau=1.0, iters=2)]:
        got = jax.jit(jax.vmap(rule))(xs)
        want = jnp.stack([rule(x) for x in xs])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got = jax.jit(jax.vmap(lambda x, i: robust.nna(x, 2, i)))(xs, jnp.arange(4))
    np.testing.assert_allclose(got, jnp.stack([robust.nna(xs[i], 2, i) for i in range(4)]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    x = np.zeros((4, 2), np.float32)
    for rule in (robust.trimmed_mean, robust.krum, robust.multi_krum):
        with pytest.raises(ValueError, match="2f < n"):
            rule(x, 2)
    for rule in (robust.nnm, lambda v, f: robust.nna(v, f, 0)):
        with pytest.raises(ValueError, match="f < n"):
            rule(x, 4)
    robust.nnm(x, 3)  # f = n - 1 is fine for NNM
    with pytest.raises(ValueError, match=r"i must lie in \[0, 4\)"):
        robust.nna(x, 1, 4)
    with pytest.raises(ValueError, match="i must lie"):
        robust.nna(x, 1, -1)
    with pytest.raises(ValueError, match="shape"):
        robust.median(np.zeros(3))
    with pytest.raises(ValueError, match="f must be >= 0"):
        robust.trimmed_mean(x, -1)
    with pytest.raises(ValueError, match="nu"):
        robust.geometric_median(x, nu=0.0)
    with pytest.raises(ValueError, match="tau"):
        robust.centered_clipping(x, tau=-1.0)


def test_non_finite_rows():
    x = _x(1, 7, 3)
    bad = x.copy()
    bad[2] = np.nan
    bad[5, 1] = np.inf
    honest = np.delete(x, [2, 5], 0)
    # two non-finite rows: rules with f >= 2 (or breakdown >= 2) ignore them
    for name, out in {
        "median": robust.median(bad),
        "trimmed_mean": robust.trimmed_mean(bad, 2),
        "krum": robust.krum(bad, 2),
        "multi_krum": robust.multi_krum(bad, 2),
        "nna": robust.nna(bad, 2, 0),
        "geometric_median": robust.geometric_median(bad),
        "centered_clipping": robust.centered_clipping(bad, tau=1.0, iters=2),
    }.items():
        assert np.all(np.isfinite(out)), name
    np.testing.assert_allclose(robust.multi_krum(bad, 2), honest.mean(0), rtol=1e-5)
    np.testing.assert_allclose(robust.nna(bad, 2, 0), honest.mean(0), rtol=1e-5)
    np.testing.assert_allclose(robust.geometric_median(bad, iters=30), robust.geometric_median(honest, iters=30), rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(robust.nnm(bad, 2))[[0, 1, 3, 4, 6]]))
    # too many non-finite rows: eager ValueError naming the count and bound
    with pytest.raises(ValueError, match="2 non-finite row"):
        robust.trimmed_mean(bad, 1)
    with pytest.raises(ValueError, match="non-finite"):
        robust.mean(bad)
    with pytest.raises(ValueError, match="non-finite"):
        robust.krum(bad, 1)
    # traced: no error, the output is non-finite rather than silently wrong
    out = jax.jit(lambda v: robust.multi_krum(v, 1))(bad)
    assert not np.all(np.isfinite(out))
    assert not np.all(np.isfinite(jax.jit(robust.mean)(bad)))


# ----------------------------------------------------------------------------- pytrees / worker axis
def test_tree_aggregate_matches_flat():
    rng = np.random.default_rng(0)
    tree = {"w": jnp.asarray(rng.normal(size=(6, 2, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
    out = robust.tree_aggregate(functools.partial(robust.trimmed_mean, f=1), tree)
    flat = np.concatenate([np.asarray(tree["w"]).reshape(6, -1), np.asarray(tree["b"]).reshape(6, 1)], 1)
    want = np_trimmed(flat, 1)
    np.testing.assert_allclose(np.asarray(out["w"]).ravel(), want[:6], rtol=1e-6)
    np.testing.assert_allclose(out["b"], want[6], rtol=1e-6)
    stacked = robust.tree_aggregate(functools.partial(robust.nnm, f=2), tree)
    assert stacked["w"].shape == (6, 2, 3) and stacked["b"].shape == (6,)


@pytest.mark.parametrize("backend", ["mesh", "pmap"])
def test_worker_aggregate_backends_agree(backend):
    rng = np.random.default_rng(1)
    tree = {"w": jnp.asarray(rng.normal(size=(8, 3, 2)), jnp.float32), "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}

    def fn(t):
        a = robust.worker_aggregate(functools.partial(robust.trimmed_mean, f=2), t)
        b = robust.worker_aggregate(lambda x, i: robust.nna(x, 2, i), t, with_index=True)
        c = robust.worker_aggregate(functools.partial(robust.nnm, f=2), t)
        return a, b, c

    want = run_workers(fn, tree, n_workers=8, backend="vmap")
    got = run_workers(fn, tree, n_workers=8, backend=backend)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
    flat = np.concatenate([np.asarray(tree["w"]).reshape(8, -1), np.asarray(tree["b"]).reshape(8, 1)], 1)
    for i in range(8):
        np.testing.assert_allclose(np.asarray(want[1]["w"][i]).ravel(), np_nna(flat, 2, i)[:6], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(want[0]["b"]), np.full(8, np_trimmed(flat, 2)[6]), rtol=1e-5)
