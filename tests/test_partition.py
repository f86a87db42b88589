"""Data partitions cover every sample exactly once, deterministically by seed."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.distributed import partition


def _assert_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


labels = st.integers(1, 6).flatmap(
    lambda k: st.lists(st.integers(0, k - 1), min_size=8, max_size=200).map(lambda v: np.asarray(v))
)


@settings(max_examples=40, deadline=None)
@given(y=labels, n_workers=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_iid_and_shards_cover_exactly_once(y, n_workers, seed):
    parts = partition.iid(y, n_workers, seed=seed)
    assert len(parts) == n_workers and min(map(len, parts)) >= len(y) // n_workers
    _assert_cover(parts, len(y))
    if 2 * n_workers <= len(y):
        parts = partition.shards(y, n_workers, 2, seed=seed)
        assert len(parts) == n_workers
        _assert_cover(parts, len(y))


@settings(max_examples=40, deadline=None)
@given(y=labels, n_workers=st.integers(1, 6), alpha=st.floats(0.05, 100.0), seed=st.integers(0, 2**31 - 1))
def test_dirichlet_covers_exactly_once(y, n_workers, alpha, seed):
    parts = partition.dirichlet(y, n_workers, alpha, seed=seed, min_size=0)
    assert len(parts) == n_workers
    _assert_cover(parts, len(y))


def test_deterministic_by_seed_and_skew():
    y = np.repeat(np.arange(10), 50)
    a = partition.dirichlet(y, 10, 0.1, seed=1)
    b = partition.dirichlet(y, 10, 0.1, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, partition.dirichlet(y, 10, 0.1, seed=2)))
    # small alpha: each worker is dominated by few classes; large alpha: near uniform.
    top = lambda parts: np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])  # noqa: E731
    assert top(a) > 0.5 > top(partition.dirichlet(y, 10, 1000.0, seed=1))
    s = partition.shards(y, 10, 2, seed=0)
    assert all(len(np.unique(y[p])) <= 2 for p in s)


def test_bad_input():
    y = np.arange(5) % 2
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition.dirichlet(y, 2, 0.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition.dirichlet(y, 2, -1.0)
    for fn in (partition.iid, partition.dirichlet, partition.shards):
        args = (1.0,) if fn is partition.dirichlet else ()
        with pytest.raises(ValueError, match=r"n_workers \(6\) exceeds the number of samples \(5\)"):
            fn(y, 6, *args)
    with pytest.raises(ValueError, match="n_workers must be a positive integer"):
        partition.iid(y, 0)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        partition.iid(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="6 shards requested for 5 samples"):
        partition.shards(y, 3, 2)
