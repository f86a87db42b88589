"""Synthetic data, deterministic by seed (numpy, float32 features).

* :func:`gaussian_mixture`: k Gaussian clusters (classification), a :class:`Dataset`;
* :func:`linear_regression`: ``y = x w + noise``, a :class:`Regression`;
* :func:`logistic_regression`: ``y ~ Bernoulli(sigmoid(x w))``, a :class:`Regression`,
  optionally one task per worker with controlled heterogeneity.

With ``n_workers`` set, the regression generators return one task per worker,
stacked on a leading worker axis: ``x`` (n_workers, n_samples, dim), ``y``
(n_workers, n_samples), ``w_true`` (n_workers, dim); ``n_samples`` is then *per
worker*. That is the layout ``run_workers(..., in_axes=0)`` expects.

Train/test: draw once with ``n_samples = n_train + n_test`` and split by seed with
:func:`lgrad.data.train_test_split` (``axis=1`` for per-worker data), so both parts
come from the same distribution (the same ``w_true``):

>>> from lgrad.data import logistic_regression, train_test_split
>>> task = logistic_regression(120, dim=5, n_workers=4, heterogeneity=1.0, seed=0)
>>> train, test = train_test_split(task, 0.25, seed=0, axis=1)
>>> train.x.shape, test.x.shape
((4, 90, 5), (4, 30, 5))
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lgrad.data.datasets import Dataset

__all__ = ["Regression", "gaussian_mixture", "linear_regression", "logistic_regression"]


class Regression(NamedTuple):
    """Features ``x`` (float32), targets ``y`` and the generating weights ``w_true``.

    ``y`` is float32 for linear regression and int32 in {0, 1} for logistic regression.
    """

    x: np.ndarray
    y: np.ndarray
    w_true: np.ndarray


def _pos_int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)


def _nonneg(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)) or not np.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)


def gaussian_mixture(
    n_samples: int, *, n_classes: int = 2, dim: int = 2, mean_norm: float = 3.0, noise: float = 1.0, seed: int = 0
) -> Dataset:
    """``n_samples`` points from k isotropic Gaussians, one per class.

    Class c has mean ``mean_norm * u_c`` with ``u_c`` a random unit vector and
    covariance ``noise^2 I``; classes are balanced (``n_samples // k`` each, the
    remainder to the first ones) and the rows shuffled.

    Returns a :class:`lgrad.data.Dataset` with ``x`` (n, dim) float32 and ``y`` (n,) int32.
    """
    n = _pos_int(n_samples, "n_samples")
    k = _pos_int(n_classes, "n_classes")
    d = _pos_int(dim, "dim")
    mean_norm, noise = _nonneg(mean_norm, "mean_norm"), _nonneg(noise, "noise")
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(k, d))
    means = mean_norm * u / np.linalg.norm(u, axis=1, keepdims=True)
    y = np.arange(n) % k
    y = y[rng.permutation(n)]
    x = means[y] + noise * rng.normal(size=(n, d))
    return Dataset(x.astype(np.float32), y.astype(np.int32))


def _weights_and_features(rng, n_workers, n, d, heterogeneity, w_norm):
    w0 = rng.normal(size=d)
    w0 *= w_norm / np.linalg.norm(w0)
    shape = (n_workers,) if n_workers else ()
    # Worker i: w_i = w0 + h * w_norm * xi_i / sqrt(d), features centred at h * mu_i.
    w = w0 + heterogeneity * w_norm * rng.normal(size=shape + (d,)) / np.sqrt(d)
    shift = heterogeneity * rng.normal(size=shape + (1, d)) if n_workers else 0.0
    x = rng.normal(size=shape + (n, d)) + shift
    return w, x


def linear_regression(
    n_samples: int,
    *,
    dim: int = 10,
    noise: float = 0.1,
    n_workers: int | None = None,
    heterogeneity: float = 0.0,
    w_norm: float = 1.0,
    seed: int = 0,
) -> Regression:
    """``y = x w_true + noise * eps`` with ``x ~ N(0, I)`` and ``|w_true| = w_norm``.

    With ``n_workers``: worker i has ``w_i = w_0 + h * w_norm * xi_i / sqrt(dim)`` and
    features ``N(h * mu_i, I)`` (``xi_i, mu_i ~ N(0, I)``, h = ``heterogeneity``;
    h = 0 gives i.i.d. workers), ``n_samples`` rows each.
    """
    n = _pos_int(n_samples, "n_samples")
    d = _pos_int(dim, "dim")
    noise, h = _nonneg(noise, "noise"), _nonneg(heterogeneity, "heterogeneity")
    if n_workers is not None:
        _pos_int(n_workers, "n_workers")
    elif h:
        raise ValueError("heterogeneity needs n_workers (it varies the task across workers)")
    rng = np.random.default_rng(seed)
    w, x = _weights_and_features(rng, n_workers, n, d, h, _nonneg(w_norm, "w_norm"))
    y = np.einsum("...nd,...d->...n", x, w) + noise * rng.normal(size=x.shape[:-1])
    return Regression(x.astype(np.float32), y.astype(np.float32), w.astype(np.float32))


def logistic_regression(
    n_samples: int,
    *,
    dim: int = 10,
    n_workers: int | None = None,
    heterogeneity: float = 0.0,
    w_norm: float = 3.0,
    seed: int = 0,
) -> Regression:
    """Binary labels ``y ~ Bernoulli(sigmoid(x . w_true))``, ``x ~ N(0, I)``.

    ``w_norm`` sets the signal-to-noise ratio (larger: more separable). With
    ``n_workers``, worker i draws from its own ``w_i`` and feature mean as in
    :func:`linear_regression` (``heterogeneity`` h >= 0 scales both; different local
    optima are what makes decentralized training hard).
    """
    n = _pos_int(n_samples, "n_samples")
    d = _pos_int(dim, "dim")
    h = _nonneg(heterogeneity, "heterogeneity")
    if n_workers is not None:
        _pos_int(n_workers, "n_workers")
    elif h:
        raise ValueError("heterogeneity needs n_workers (it varies the task across workers)")
    rng = np.random.default_rng(seed)
    w, x = _weights_and_features(rng, n_workers, n, d, h, _nonneg(w_norm, "w_norm"))
    logits = np.einsum("...nd,...d->...n", x, w)
    y = (rng.random(size=logits.shape) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int32)
    return Regression(x.astype(np.float32), y, w.astype(np.float32))
