"""Deterministic data partitions for n workers (federated / decentralized setups).

Each function takes integer labels ``y`` (only their count matters for ``iid``)
and returns a list of n index arrays that together cover every sample exactly once.
"""
from __future__ import annotations

import numpy as np

__all__ = ["iid", "dirichlet", "shards"]


def _check(y: np.ndarray, n_workers: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if n_workers > len(y):
        raise ValueError(f"n_workers ({n_workers}) exceeds the number of samples ({len(y)}): some worker would get no data")
    return y


def iid(y: np.ndarray, n_workers: int, *, seed: int = 0) -> list[np.ndarray]:
    """A uniformly random split into n near-equal parts."""
    y = _check(y, n_workers)
    perm = np.random.default_rng(seed).permutation(len(y))
    return [np.sort(p) for p in np.array_split(perm, n_workers)]


def dirichlet(y: np.ndarray, n_workers: int, alpha: float, *, seed: int = 0, min_size: int = 1) -> list[np.ndarray]:
    """Label skew: for each class c, proportions p_c ~ Dirichlet(alpha * 1_n) split
    that class's samples over the workers (Hsu et al. 2019). Small alpha = more
    heterogeneous. Redraws (up to 100 times) until every worker has ``min_size``
    samples."""
    y = _check(y, n_workers)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_workers, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for w, chunk in enumerate(np.split(idx, cuts)):
                parts[w].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(
        f"could not give every one of {n_workers} workers {min_size} sample(s) with alpha={alpha}; "
        "use a larger alpha, fewer workers or min_size=0"
    )


def shards(y: np.ndarray, n_workers: int, shards_per_worker: int = 2, *, seed: int = 0) -> list[np.ndarray]:
    """Sort by label, cut into n * s shards, deal s random shards to each worker
    (McMahan et al. 2017's pathological non-IID split)."""
    y = _check(y, n_workers)
    if shards_per_worker < 1:
        raise ValueError(f"shards_per_worker must be >= 1, got {shards_per_worker}")
    n_shards = n_workers * shards_per_worker
    if n_shards > len(y):
        raise ValueError(f"{n_shards} shards requested for {len(y)} samples")
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(n_workers, shards_per_worker)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]
