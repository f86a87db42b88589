"""Straightforward float64 numpy versions of update rules, written from the papers'
equations (not from lgrad's code) so that they can check it.

Each ``*_reference(grad_fn, x0, steps, **hyper)`` returns the trajectory
``[x_1, ..., x_steps]`` of a flat float64 parameter vector.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

GradFn = Callable[[np.ndarray], np.ndarray]


def diffgrad_reference(
    grad_fn: GradFn,
    x0: np.ndarray,
    steps: int,
    *,
    learning_rate: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    constant_friction: bool = False,
) -> np.ndarray:
    """diffGrad, Dubey et al. 2019, Algorithm 1 (L2 decay added to the gradient)."""
    x = np.array(x0, dtype=np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    g_prev = np.zeros_like(x)
    out = []
    for t in range(1, steps + 1):
        g = grad_fn(x) + weight_decay * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        xi = np.full_like(x, 0.5) if constant_friction else 1.0 / (1.0 + np.exp(-np.abs(g_prev - g)))
        x = x - learning_rate * np.sqrt(1 - b2**t) / (1 - b1**t) * xi * m / (np.sqrt(v) + eps)
        g_prev = g
        out.append(x.copy())
    return np.asarray(out)


def adam_reference(
    grad_fn: GradFn,
    x0: np.ndarray,
    steps: int,
    *,
    learning_rate: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> np.ndarray:
    """Adam (Kingma & Ba 2015) with optax's placement of eps (on the corrected sqrt(v))."""
    x = np.array(x0, dtype=np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    out = []
    for t in range(1, steps + 1):
        g = grad_fn(x)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(x.copy())
    return np.asarray(out)


def dgc_reference(
    grad_fn: GradFn,
    x0: np.ndarray,
    steps: int,
    *,
    learning_rate: float = 0.1,
    density: float = 0.5,
    momentum: float = 0.9,
    nesterov: bool = False,
    momentum_masking: bool = True,
    segments: Sequence[int] | None = None,
) -> np.ndarray:
    """Single-worker Deep Gradient Compression with exact top-k (Lin et al. 2018,
    Algorithm 1 with n = 1): u <- m u + g, v <- v + u (Nesterov: u <- m (u + g),
    v <- v + u + g); send the k = round(density * size) largest |v|; u, v <- 0 there
    (u only with momentum masking); x <- x - lr * sent.

    ``segments``: the sizes of consecutive tensors in ``x`` (default: one tensor),
    each selecting its own top-k as DGC does per layer."""
    x = np.array(x0, dtype=np.float64)
    u = np.zeros_like(x)
    v = np.zeros_like(x)
    bounds = np.cumsum([0] + list(segments if segments is not None else [x.size]))
    if bounds[-1] != x.size:
        raise ValueError(f"segments must add up to x0.size = {x.size}, got {list(segments or [])!r}")
    out = []
    for _ in range(steps):
        g = grad_fn(x)
        if nesterov:
            u = momentum * (u + g)
            v = v + u + g
        else:
            u = momentum * u + g
            v = v + u
        sent = np.zeros_like(x)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            k = int(round(density * (hi - lo)))
            idx = lo + np.argsort(-np.abs(v[lo:hi]), kind="stable")[:k]
            sent[idx] = v[idx]
            v[idx] = 0.0
            if momentum_masking:
                u[idx] = 0.0
        x = x - learning_rate * sent
        out.append(x.copy())
    return np.asarray(out)


def mezo_reference(
    loss_fn: Callable[[np.ndarray], float],
    x0: np.ndarray,
    steps: int,
    noise: Callable[[int, int], np.ndarray],
    *,
    learning_rate: float = 1e-3,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    num_samples: int = 1,
) -> np.ndarray:
    """One-worker MeZO (Malladi et al. 2023, Eq. 1 and Algorithm 1):
    pg_s = (L(x + eps z_s) - L(x - eps z_s)) / (2 eps),
    x <- x - lr (mean_s pg_s z_s + weight_decay x); a step with a non-finite pg is
    skipped. ``noise(t, s)`` returns z_s of step t (the caller's random directions:
    the reference checks the update, not the random number generator)."""
    x = np.array(x0, dtype=np.float64)
    out = []
    for t in range(steps):
        zs = [np.asarray(noise(t, s), np.float64) for s in range(num_samples)]
        pgs = [(loss_fn(x + eps * z) - loss_fn(x - eps * z)) / (2 * eps) for z in zs]
        if all(np.isfinite(pgs)):
            g = sum(pg * z for pg, z in zip(pgs, zs)) / num_samples + weight_decay * x
            x = x - learning_rate * g
        out.append(x.copy())
    return np.asarray(out)


def sam_reference(
    grad_fn: GradFn,
    x0: np.ndarray,
    steps: int,
    *,
    learning_rate: float = 0.1,
    rho: float = 0.05,
    alpha: float = 1.0,
) -> np.ndarray:
    """SAM-style descent (Foret et al. 2021; FedSpeed's mixed gradient, Sun et al.
    2023): g1 = grad(x), g2 = grad(x + rho g1 / ||g1||) (g1 = 0: no ascent),
    x <- x - lr ((1 - alpha) g1 + alpha g2)."""
    x = np.array(x0, dtype=np.float64)
    out = []
    for _ in range(steps):
        g1 = grad_fn(x)
        norm = np.linalg.norm(g1)
        g2 = grad_fn(x + rho * g1 / norm) if norm > 0 else g1
        x = x - learning_rate * ((1 - alpha) * g1 + alpha * g2)
        out.append(x.copy())
    return np.asarray(out)


def momentum_reference(
    grad_fn: GradFn,
    x0: np.ndarray,
    steps: int,
    *,
    learning_rate: float = 0.1,
    beta: float = 0.9,
) -> np.ndarray:
    """Polyak momentum as an exponential average (MoNNA's local step, Farhadkhani et
    al. 2023, Alg. 1, on one node): m <- beta m + (1 - beta) g, x <- x - lr m."""
    x = np.array(x0, dtype=np.float64)
    m = np.zeros_like(x)
    out = []
    for _ in range(steps):
        m = beta * m + (1 - beta) * grad_fn(x)
        x = x - learning_rate * m
        out.append(x.copy())
    return np.asarray(out)


def gd_reference(grad_fn: GradFn, x0: np.ndarray, steps: int, *, learning_rate: float = 0.1) -> np.ndarray:
    """Plain gradient descent x <- x - lr grad(x)."""
    x = np.array(x0, dtype=np.float64)
    out = []
    for _ in range(steps):
        x = x - learning_rate * grad_fn(x)
        out.append(x.copy())
    return np.asarray(out)


def clipped_gd_reference(
    grad_fn: GradFn, x0: np.ndarray, steps: int, *, learning_rate: float = 0.1, l2_norm_clip: float = 1.0
) -> np.ndarray:
    """DP-SGD without noise on a batch of one example (Abadi et al. 2016, Alg. 1):
    x <- x - lr g min(1, C / ||g||)."""
    x = np.array(x0, dtype=np.float64)
    out = []
    for _ in range(steps):
        g = grad_fn(x)
        n = np.linalg.norm(g)
        x = x - learning_rate * g * min(1.0, l2_norm_clip / n if n > 0 else 1.0)
        out.append(x.copy())
    return np.asarray(out)

