"""Dataset-distillation pieces: CDA's crop-scale curriculum, a differentiable random
resized crop, jitter, and the BN-statistics matching loss of SRe²L.

References: Yin, Xing, Shen 2023 (SRe²L, "Squeeze, Recover and Relabel"); Yin & Shen
2023, "Dataset Distillation via Curriculum Data Synthesis in Large Data Era" (CDA).
Our account: docs/papers/cda-distill.md.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["bn_matching_loss", "crop_scale_schedule", "jitter", "random_resized_crop"]


def crop_scale_schedule(step, total_steps: int, *, milestone: float = 0.5, start: float = 1.0, end: float = 0.08):
    """CDA's curriculum on the minimum scale of the random resized crop:

    .. math:: s_{min}(t) = s_e + \\tfrac12 (s_0 - s_e)\\,(1 + \\cos(\\pi\\, t / (m T)))
              \\ \\text{for } t < mT, \\quad s_{min}(t) = s_e \\text{ after},

    a cosine from ``start`` (global: whole images) to ``end`` (local crops) over the
    first ``milestone`` fraction of the ``total_steps`` synthesis steps.
    """
    if not (isinstance(total_steps, int) and total_steps >= 1):
        raise ValueError(f"total_steps: must be an integer >= 1, got {total_steps!r}")
    if not 0.0 < milestone <= 1.0:
        raise ValueError(f"milestone: must lie in (0, 1], got {milestone!r}")
    if not 0.0 < end <= start <= 1.0:
        raise ValueError(f"start, end: must satisfy 0 < end <= start <= 1, got start={start!r}, end={end!r}")
    span = milestone * total_steps
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / span, 0.0, 1.0)
    return end + 0.5 * (start - end) * (1.0 + jnp.cos(math.pi * frac))


def random_resized_crop(key, img, *, min_scale, max_scale: float = 1.0, ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """A random crop of area fraction ``U(min_scale, max_scale)`` and aspect ratio
    log-uniform in ``ratio`` (clipped to the image), resized back to ``img``'s size
    by bilinear interpolation; differentiable in ``img`` (H, W, C). ``min_scale`` may be traced."""
    H, W = img.shape[0], img.shape[1]
    ks, kr, ky, kx = jax.random.split(key, 4)
    area = jax.random.uniform(ks, minval=min_scale, maxval=max_scale)
    logr = jax.random.uniform(kr, minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    r = jnp.exp(logr)
    h = jnp.clip(jnp.sqrt(area / r) * H, 1.0, H)
    w = jnp.clip(jnp.sqrt(area * r) * W, 1.0, W)
    y0 = jax.random.uniform(ky) * (H - h)
    x0 = jax.random.uniform(kx) * (W - w)
    ys = y0 + (jnp.arange(H) + 0.5) * h / H - 0.5
    xs = x0 + (jnp.arange(W) + 0.5) * w / W - 0.5
    # bilinear resampling as two interpolation matrices (tent weights; edges clamped)
    ay = jax.nn.relu(1.0 - jnp.abs(jnp.clip(ys, 0, H - 1)[:, None] - jnp.arange(H)[None, :]))
    ax = jax.nn.relu(1.0 - jnp.abs(jnp.clip(xs, 0, W - 1)[:, None] - jnp.arange(W)[None, :]))
    return jnp.einsum("ih,hwc,jw->ijc", ay, img, ax)


def jitter(key, img, max_shift: int):
    """SRe²L's jitter: roll the image by independent integer offsets in ``[-max_shift, max_shift]``."""
    if not (isinstance(max_shift, int) and max_shift >= 0):
        raise ValueError(f"max_shift: must be an integer >= 0, got {max_shift!r}")
    dy, dx = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
    return jnp.roll(img, (dy, dx), axis=(0, 1))


def bn_matching_loss(batch_stats, target_stats, *, first_multiplier: float = 10.0):
    """SRe²L's BN-statistics matching, summed over BN layers ``l``:

    .. math:: \\sum_l w_l \\left(\\|\\mu_l(\\tilde x) - \\mu_l\\|_2 + \\|\\sigma^2_l(\\tilde x) - \\sigma^2_l\\|_2\\right),

    ``w_1`` = ``first_multiplier``, ``w_l = 1`` otherwise; ``batch_stats`` and
    ``target_stats`` are sequences of ``(mean, var)`` per layer.
    """
    if len(batch_stats) != len(target_stats) or not batch_stats:
        raise ValueError(f"batch_stats, target_stats: must list the same number (>= 1) of layers, got "
                         f"{len(batch_stats)} and {len(target_stats)}")
    total = 0.0
    for i, ((m, v), (tm, tv)) in enumerate(zip(batch_stats, target_stats)):
        w = first_multiplier if i == 0 else 1.0
        total = total + w * (jnp.linalg.norm(m - tm) + jnp.linalg.norm(v - tv))
    return total
