"""Small image transforms for flattened square images (MNIST-5k, digits)."""
from __future__ import annotations

import numpy as np

__all__ = ["average_pool"]


def average_pool(x: np.ndarray, k: int, *, side: int = 28) -> np.ndarray:
    """``k x k`` average pooling of flattened ``side x side`` images: (N, side**2) ->
    (N, (side // k)**2) float32; ``k = 1`` returns the images as float32."""
    if not isinstance(k, (int, np.integer)) or k < 1 or side % k:
        raise ValueError(f"k must be a positive integer dividing the image side {side}, got {k!r}")
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != side * side:
        raise ValueError(f"expected flattened {side}x{side} images of shape (N, {side * side}), got {x.shape}")
    if k == 1:
        return x
    s = side // k
    return x.reshape(-1, s, k, s, k).mean((2, 4)).reshape(-1, s * s)
