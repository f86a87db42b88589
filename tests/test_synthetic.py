"""Synthetic generators: shapes, determinism by seed, heterogeneity, splits."""
from __future__ import annotations

import numpy as np
import pytest

from lgrad.data import Dataset, Regression, gaussian_mixture, linear_regression, logistic_regression, train_test_split


def test_gaussian_mixture():
    d = gaussian_mixture(301, n_classes=3, dim=4, mean_norm=5.0, noise=0.5, seed=1)
    assert isinstance(d, Dataset) and d.x.shape == (301, 4) and d.x.dtype == np.float32 and d.num_classes == 3
    assert np.bincount(d.y).tolist() == [101, 100, 100]
    means = np.stack([d.x[d.y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 5.0, atol=0.3)
    assert np.array_equal(d.x, gaussian_mixture(301, n_classes=3, dim=4, mean_norm=5.0, noise=0.5, seed=1).x)


def test_linear_regression_recovers_w():
    t = linear_regression(2000, dim=5, noise=0.01, seed=0)
    assert isinstance(t, Regression) and t.x.shape == (2000, 5) and t.w_true.shape == (5,)
    w, *_ = np.linalg.lstsq(t.x, t.y, rcond=None)
    np.testing.assert_allclose(w, t.w_true, atol=1e-3)


def test_logistic_per_worker_heterogeneity_and_split():
    iid = logistic_regression(50, dim=3, n_workers=4, heterogeneity=0.0, seed=0)
    het = logistic_regression(50, dim=3, n_workers=4, heterogeneity=2.0, seed=0)
    assert het.x.shape == (4, 50, 3) and het.y.shape == (4, 50) and het.w_true.shape == (4, 3)
    assert set(np.unique(het.y)) <= {0, 1}
    assert np.ptp(iid.w_true, axis=0).max() == 0 and np.ptp(het.w_true, axis=0).max() > 0.5
    tr, te = train_test_split(het, 0.2, seed=3, axis=1)
    assert isinstance(tr, Regression) and tr.x.shape == (4, 40, 3) and te.y.shape == (4, 10)
    assert np.array_equal(tr.w_true, het.w_true)
    tr2, _ = train_test_split(het, 0.2, seed=3, axis=1)
    assert np.array_equal(tr.x, tr2.x)


def test_bad_input():
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        gaussian_mixture(0)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        linear_regression(10, noise=-1.0)
    with pytest.raises(ValueError, match="heterogeneity needs n_workers"):
        logistic_regression(10, heterogeneity=1.0)
    with pytest.raises(ValueError, match="n_workers must be a positive integer"):
        logistic_regression(10, n_workers=0)


def test_normal_rows_cut_into_any_shape_equal_the_shaped_draws():
    """normal_rows: the first prod(shape) entries of a key's row are normal(key, shape)."""
    import jax

    from lgrad.data import normal_rows

    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    rows = np.asarray(normal_rows(keys, 60))
    assert rows.shape == (4, 60)
    for i, shape in enumerate([(60,), (3, 20), (7, 2, 4), (1,)]):
        want = np.asarray(jax.random.normal(keys[i], shape))
        np.testing.assert_array_equal(rows[i, : want.size].reshape(shape), want)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="length"):
            normal_rows(keys, bad)
