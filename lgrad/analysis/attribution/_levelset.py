r"""Level-set traversal (blind spots; docs/papers/blind-spots.md).

From a source image :math:`x_s` of class c towards a target :math:`x_t`, every step
moves orthogonally to the input gradient of the source-class loss:

.. math::
   J = \nabla_x \mathrm{CE}(f(x), c), \quad v = x_t - x, \quad
   \Delta_\perp = v - \frac{\langle J, v\rangle}{\langle J, J\rangle} J, \quad
   x' = \mathrm{clip}(x + \eta \Delta_\perp, 0, 1),

and a sample accepts :math:`x'` only where :math:`p_0 - p_c(x') < p_{thresh}`
(:math:`p_0` the source confidence). The loop is one ``lax.scan``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgrad.analysis.attribution._core import Apply

__all__ = ["LevelSetResult", "level_set_traversal", "orthogonal_step"]


class LevelSetResult(NamedTuple):
    """``x`` final images; ``p0`` (n,) source confidences; per-step ``confidence`` (T, n),
    ``accepted`` (T, n) and ``cosine`` (T, n) = |cos(Δ⊥, J)|; ``start`` the noisy start."""

    x: jax.Array
    p0: jax.Array
    confidence: jax.Array
    accepted: jax.Array
    cosine: jax.Array
    start: jax.Array


def orthogonal_step(j: jax.Array, v: jax.Array) -> jax.Array:
    r""":math:`\Delta_\perp = v - (\langle J, v\rangle / \langle J, J\rangle) J` per example (leading batch axis)."""
    axes = tuple(range(1, j.ndim))
    jv = jnp.sum(j * v, axis=axes, keepdims=True)
    jj = jnp.sum(j * j, axis=axes, keepdims=True)
    return v - jv / jnp.where(jj > 0, jj, 1.0) * j


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    axes = tuple(range(1, a.ndim))
    return jnp.abs(jnp.sum(a * b, axis=axes)) / (jnp.linalg.norm(a.reshape(a.shape[0], -1), axis=1) * jnp.linalg.norm(b.reshape(b.shape[0], -1), axis=1) + 1e-30)


def level_set_traversal(
    apply: Apply, params: Any, source: jax.Array, target: jax.Array, labels: jax.Array, key: jax.Array, *,
    steps: int = 100, step_size: float = 5e-2, pthresh: float = 0.05, init_noise: float = 4.0 / 255.0,
) -> LevelSetResult:
    """Traverse from ``source`` (labels ``labels``) towards ``target`` along the level set
    (defaults: the authors' η 5e-2, 100 steps, p_thresh 0.05, start noise 4/255)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"level_set_traversal: steps={steps!r} must be an int >= 1")
    if not step_size > 0 or not pthresh > 0:
        raise ValueError(f"level_set_traversal: step_size={step_size!r} and pthresh={pthresh!r} must be > 0")
    prob = lambda x: jnp.take_along_axis(jax.nn.softmax(apply(params, x)), labels[:, None], 1)[:, 0]  # noqa: E731
    ce = lambda x: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(apply(params, x), labels))  # noqa: E731
    p0 = prob(source)
    start = jnp.clip(source + init_noise * (jax.random.uniform(key, source.shape, source.dtype) - 0.5), 0.0, 1.0)
    mask_shape = (-1,) + (1,) * (source.ndim - 1)

    def step(carry, _):
        x, p = carry
        j = jax.grad(ce)(x)
        d = orthogonal_step(j, target - x)
        x_new = jnp.clip(x + step_size * d, 0.0, 1.0)
        p_new = prob(x_new)
        ok = p0 - p_new < pthresh
        x = jnp.where(ok.reshape(mask_shape), x_new, x)
        p = jnp.where(ok, p_new, p)
        return (x, p), (p, ok, _cos(d, j))

    (x, _), (conf, acc, cos) = jax.lax.scan(step, (start, prob(start)), None, length=steps)
    return LevelSetResult(x, p0, conf, acc, cos, start)
