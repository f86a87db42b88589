"""The gradient family and occlusion, following captum's conventions (docs/attribution.md).

All functions take ``apply(params, x)`` on a batch ``x`` of shape ``(n, ...)`` and a
``target`` (see :mod:`lgrad.analysis.attribution._core`) and return attributions of
the shape of ``x``. Baselines default to zero, as in captum.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lgrad.analysis.attribution._core import Apply, layer_gradient, rules, select_target, target_function

__all__ = [
    "IG_METHODS",
    "deeplift",
    "grad_cam",
    "gradient",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
    "integration_points",
    "noise_tunnel",
    "occlusion",
    "saliency",
    "smoothgrad",
]

IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _baseline(x: jax.Array, baselines: Any) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(0.0 if baselines is None else baselines, x.dtype), x.shape)


def gradient(apply: Apply, params: Any, x: jax.Array, *, target: Any = None) -> jax.Array:
    r"""Signed input gradient :math:`\partial f_t / \partial x` (Simonyan et al. 2014)."""
    return jax.grad(target_function(apply, params, target))(x)


def saliency(apply: Apply, params: Any, x: jax.Array, *, target: Any = None, abs: bool = True) -> jax.Array:
    r"""captum ``Saliency``: :math:`|\partial f_t/\partial x|` (``abs=True``, captum's default) or the signed gradient."""
    g = gradient(apply, params, x, target=target)
    return jnp.abs(g) if abs else g


def input_x_gradient(apply: Apply, params: Any, x: jax.Array, *, target: Any = None) -> jax.Array:
    r"""captum ``InputXGradient``: :math:`x \odot \partial f_t/\partial x`."""
    return x * gradient(apply, params, x, target=target)


def integration_points(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """captum's ``(step_sizes, alphas)`` on [0, 1] for ``method`` (one of :data:`IG_METHODS`)."""
    if method not in IG_METHODS:
        raise ValueError(f"integrated_gradients: method={method!r} is not one of {IG_METHODS}")
    if not isinstance(n_steps, int) or n_steps < (2 if method == "riemann_trapezoid" else 1):
        raise ValueError(f"integrated_gradients: n_steps={n_steps!r} must be an int >= 1 (>= 2 for riemann_trapezoid)")
    n = n_steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * weights, 0.5 * (nodes + 1.0)
    if method == "riemann_trapezoid":
        steps = np.full(n, 1.0 / (n - 1))
        steps[[0, -1]] = 0.5 / (n - 1)
        return steps, np.linspace(0.0, 1.0, n)
    start = {"riemann_left": 0.0, "riemann_right": 1.0 / n, "riemann_middle": 0.5 / n}[method]
    return np.full(n, 1.0 / n), np.linspace(start, start + (n - 1) / n, n)


def integrated_gradients(
    apply: Apply, params: Any, x: jax.Array, *, target: Any = None, baselines: Any = None,
    n_steps: int = 50, method: str = "gausslegendre",
) -> jax.Array:
    r"""captum ``IntegratedGradients`` (Sundararajan et al. 2017):

    .. math:: \mathrm{IG}(x) = (x - b) \odot \sum_k s_k\, \nabla f_t(b + \alpha_k (x - b)),

    :math:`(s_k, \alpha_k)` from :func:`integration_points` (default Gauss-Legendre, 50
    steps, zero baseline: captum's defaults). Completeness: the attributions sum to
    :math:`f_t(x) - f_t(b)` up to the quadrature error.
    """
    steps, alphas = integration_points(n_steps, method)
    b = _baseline(x, baselines)
    grad = jax.grad(target_function(apply, params, target))

    def one(carry, sa):
        s, a = sa
        return carry + s * grad(b + a * (x - b)), None

    total, _ = jax.lax.scan(one, jnp.zeros_like(x), (jnp.asarray(steps, x.dtype), jnp.asarray(alphas, x.dtype)))
    return (x - b) * total


def noise_tunnel(
    attribute: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, *,
    nt_samples: int = 5, stdevs: float = 1.0, nt_type: str = "smoothgrad",
) -> jax.Array:
    r"""captum ``NoiseTunnel``: attributions of :math:`x + \varepsilon`, :math:`\varepsilon \sim N(0, \sigma^2)`,
    combined by ``nt_type``: ``"smoothgrad"`` (mean), ``"smoothgrad_sq"`` (mean of squares) or
    ``"vargrad"`` (variance). ``attribute(x) -> attributions``; captum's defaults 5 samples, σ = 1."""
    if nt_type not in NT_TYPES:
        raise ValueError(f"noise_tunnel: nt_type={nt_type!r} is not one of {NT_TYPES}")
    if not isinstance(nt_samples, int) or nt_samples < 1:
        raise ValueError(f"noise_tunnel: nt_samples={nt_samples!r} must be an int >= 1")
    noise = stdevs * jax.random.normal(key, (nt_samples,) + x.shape, x.dtype)
    a = jax.lax.map(lambda e: attribute(x + e), noise)
    if nt_type == "smoothgrad":
        return jnp.mean(a, axis=0)
    if nt_type == "smoothgrad_sq":
        return jnp.mean(a**2, axis=0)
    return jnp.var(a, axis=0)


def smoothgrad(
    apply: Apply, params: Any, x: jax.Array, key: jax.Array, *, target: Any = None,
    nt_samples: int = 5, stdevs: float = 1.0, abs: bool = False,
) -> jax.Array:
    r"""SmoothGrad (Smilkov et al. 2017): :math:`\frac1N\sum_i \nabla f_t(x + \varepsilon_i)` (signed by
    default; captum ``NoiseTunnel(Saliency)`` would take ``abs`` per sample)."""
    att = lambda z: saliency(apply, params, z, target=target, abs=abs)  # noqa: E731
    return noise_tunnel(att, x, key, nt_samples=nt_samples, stdevs=stdevs)


def guided_backprop(apply: Apply, params: Any, x: jax.Array, *, target: Any = None) -> jax.Array:
    """captum ``GuidedBackprop`` (Springenberg et al. 2015): the gradient with every ReLU written
    with :func:`lgrad.analysis.attribution.relu` passing back only positive gradients."""
    with rules("guided"):
        return gradient(apply, params, x, target=target)


def deeplift(apply: Apply, params: Any, x: jax.Array, *, target: Any = None, baselines: Any = None) -> jax.Array:
    r"""captum ``DeepLift`` (Shrikumar et al. 2017, rescale rule): the model runs on
    :math:`[x; b]`; each ruled nonlinearity passes back :math:`\Delta y / \Delta x`
    (its derivative where :math:`|\Delta x| < 10^{-10}`); attributions
    :math:`(x - b) \odot m` (``multiply_by_inputs``). Summation to delta holds exactly
    for networks whose only nonlinearities are the ruled ones.
    """
    b = _baseline(x, baselines)
    n = x.shape[0]

    def f(z):
        out = select_target(apply(params, jnp.concatenate([z, b])), None if target is None else _pair_target(target, n))
        return jnp.sum(out[:n])

    with rules("deeplift"):
        m = jax.grad(f)(x)
    return (x - b) * m


def _pair_target(target: Any, n: int) -> Any:
    t = jnp.asarray(target)
    return t if t.ndim == 0 else jnp.concatenate([t, t])


def _windows(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]) -> list[tuple[int, ...]]:
    """captum's start positions: ceil((size - window) / stride) + 1 per axis from 0 (the last
    window may be cut off at the edge)."""
    starts = [[k * st for k in range(math.ceil((s - w) / st) + 1)] for s, w, st in zip(shape, window, strides)]
    return list(itertools.product(*starts))


def occlusion(
    apply: Apply, params: Any, x: jax.Array, *, sliding_window_shapes: tuple[int, ...],
    strides: int | tuple[int, ...] = 1, target: Any = None, baselines: Any = None,
) -> jax.Array:
    r"""captum ``Occlusion`` (Zeiler & Fergus 2014): each window (start positions every
    ``strides`` from 0 until the axis is covered; the last window may be cut off at the
    edge, as in captum) is set to the baseline; every feature receives
    :math:`f_t(x) - f_t(x_{\text{window} \leftarrow b})` averaged over the windows covering it
    (features no window covers get 0). Window shapes are per example (without the batch axis).
    """
    shape = tuple(x.shape[1:])
    window = tuple(sliding_window_shapes)
    st = (strides,) * len(shape) if isinstance(strides, int) else tuple(strides)
    if len(window) != len(shape) or len(st) != len(shape) or any(w < 1 or w > s for w, s in zip(window, shape)):
        raise ValueError(f"occlusion: sliding_window_shapes={window} must have one entry in [1, size] per axis of {shape}")
    if any(s < 1 for s in st):
        raise ValueError(f"occlusion: strides={strides!r} must be >= 1")
    masks = np.zeros((len(_windows(shape, window, st)),) + shape, np.float32)
    for k, start in enumerate(_windows(shape, window, st)):
        masks[(k,) + tuple(slice(a, a + w) for a, w in zip(start, window))] = 1.0
    masks = jnp.asarray(masks, x.dtype)
    b = _baseline(x, baselines)
    f = lambda z: select_target(apply(params, z), target)  # noqa: E731
    base = f(x)
    diffs = jax.lax.map(lambda m: base - f(x * (1 - m) + b * m), masks)  # (K, n)
    total = jnp.einsum("kn,k...->n...", diffs, masks)
    count = jnp.sum(masks, axis=0)
    return total / jnp.where(count > 0, count, 1.0)


def grad_cam(
    apply: Apply, params: Any, x: jax.Array, *, layer: str, target: Any = None,
    channel_axis: int = -1, relu_attributions: bool = False,
) -> jax.Array:
    r"""captum ``LayerGradCam`` (Selvaraju et al. 2017) at the tapped ``layer``:
    :math:`\sum_c \bar g_c A_c` with :math:`\bar g_c` the spatial mean of the gradient, shape
    of the layer without its channel axis (ReLU only with ``relu_attributions=True``, captum's default off)."""
    act, grad = layer_gradient(apply, params, x, layer=layer, target=target)
    ax = channel_axis % act.ndim
    spatial = tuple(i for i in range(1, act.ndim) if i != ax)
    w = jnp.mean(grad, axis=spatial, keepdims=True)
    cam = jnp.sum(w * act, axis=ax)
    return jax.nn.relu(cam) if relu_attributions else cam
