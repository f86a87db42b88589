r"""Explanations as local function approximation (Han, Srinivas & Lakkaraju 2022; docs/papers/lfa-no-free-lunch.md).

Every method is a *neighbourhood* (where the model is probed, with weights) and a
*loss* (value matching or gradient matching); the explanation is the linear surrogate
:math:`g(x) = w^\top x + c` minimising the method's loss
:math:`\mathbb{E}_\xi\, \ell(f, g, x_0, \xi)`. Surrogates live in input space, so any
method's loss can be evaluated on any other method's surrogate; the attribution is
:math:`w` (additive methods) or :math:`w \odot x_0` (multiplicative / binary-mask ones).

====================  =========================================  ==============================================
method                neighbourhood :math:`x(\xi)`, weight        loss
====================  =========================================  ==============================================
lime                  :math:`x_0 \odot \xi`, ξ ~ Bern(½)^d,       weighted :math:`(f - g)^2`, free intercept
                      :math:`\exp(-D^2/2)`, D = 1 − cos(ξ, 1)
kernelshap            same ξ plus ∅ and 1; Shapley kernel         weighted :math:`(f - g)^2`, free intercept
                      (weight 1e6 at ∅ and 1)
occlusion             :math:`x_0 \odot e_i`                       :math:`(f(x) - f(0) - w^\top x)^2`
clime                 :math:`x_0 + \varepsilon`, ε ~ N(0, σ²)     :math:`(f - g)^2`, free intercept
smoothgrad            :math:`x_0 + \varepsilon`                   :math:`\|\nabla f(x) - w\|^2`
gradient              :math:`x_0` (σ → 0)                         :math:`\|\nabla f(x_0) - w\|^2`
integrated_gradients  :math:`\alpha x_0`, α ~ U(low, 1)           :math:`\|x_0 \odot (\nabla f(x) - w)\|^2`
gradient_x_input      :math:`x_0` (low → 1)                       :math:`\|x_0 \odot (\nabla f(x_0) - w)\|^2`
====================  =========================================  ==============================================

One solver (:func:`fit_surrogate`, weighted least squares) returns every surrogate.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "LFA_METHODS",
    "LinearSurrogate",
    "Neighbourhood",
    "explain",
    "fit_surrogate",
    "lfa_attribution",
    "lfa_loss",
    "neighbourhood",
]

LFA_METHODS = (
    "lime", "kernelshap", "occlusion", "clime", "smoothgrad", "gradient", "integrated_gradients", "gradient_x_input",
)
MULTIPLICATIVE = ("lime", "kernelshap", "occlusion", "integrated_gradients", "gradient_x_input")


class Neighbourhood(NamedTuple):
    """Samples of one method's neighbourhood around ``x0``.

    ``points`` (m, d) where f is probed, ``weights`` (m,), ``kind`` "value" or
    "gradient", ``scale`` (d,) multiplying gradient residuals, ``intercept`` None (free)
    or the fixed value of g's intercept (occlusion: f(0)).
    """

    points: jax.Array
    weights: jax.Array
    kind: str
    scale: jax.Array
    intercept: Any


class LinearSurrogate(NamedTuple):
    r"""The explanation :math:`g(x) = w^\top x + c` (``weights`` w, ``intercept`` c)."""

    weights: jax.Array
    intercept: jax.Array


def _check(method: str) -> None:
    if method not in LFA_METHODS:
        raise ValueError(f"lfa: method={method!r} is not one of {LFA_METHODS}")


def _masks(key: jax.Array, m: int, d: int, dtype) -> jax.Array:
    return jax.random.bernoulli(key, 0.5, (m, d)).astype(dtype)


def _shapley_kernel(z: jax.Array) -> jax.Array:
    d = z.shape[1]
    k = jnp.sum(z, axis=1)
    comb = jnp.exp(jax.scipy.special.gammaln(d + 1.0) - jax.scipy.special.gammaln(k + 1) - jax.scipy.special.gammaln(d - k + 1))
    edge = (k == 0) | (k == d)
    return jnp.where(edge, 1e6, (d - 1) / (comb * jnp.where(edge, 1.0, k * (d - k))))


def neighbourhood(
    method: str, f: Callable[[jax.Array], jax.Array], x0: jax.Array, key: jax.Array, *,
    n_samples: int = 1000, sigma: float = 0.1, low: float = 0.0, kernel_width: float = 1.0,
) -> Neighbourhood:
    """Draw ``n_samples`` points of ``method``'s neighbourhood around the 1-D input ``x0``."""
    _check(method)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"lfa: n_samples={n_samples!r} must be an int >= 1")
    d, dt = x0.shape[0], x0.dtype
    ones = jnp.ones((d,), dt)
    if method in ("lime", "kernelshap"):
        z = _masks(key, n_samples, d, dt)
        if method == "kernelshap":
            z = jnp.concatenate([jnp.zeros((1, d), dt), ones[None], z])
            w = _shapley_kernel(z)
        else:
            cos = z @ ones / (jnp.linalg.norm(z, axis=1) * math.sqrt(d) + 1e-12)
            w = jnp.exp(-((1.0 - cos) ** 2) / (2 * kernel_width**2))
        return Neighbourhood(x0 * z, w, "value", ones, None)
    if method == "occlusion":
        return Neighbourhood(jnp.diag(x0), jnp.ones((d,), dt), "value", ones, f(jnp.zeros_like(x0)))
    if method in ("clime", "smoothgrad"):
        pts = x0 + sigma * jax.random.normal(key, (n_samples, d), dt)
        return Neighbourhood(pts, jnp.ones((n_samples,), dt), "value" if method == "clime" else "gradient", ones, None)
    if method == "integrated_gradients":
        alpha = jax.random.uniform(key, (n_samples, 1), dt, low, 1.0)
        return Neighbourhood(alpha * x0, jnp.ones((n_samples,), dt), "gradient", x0, None)
    return Neighbourhood(x0[None], jnp.ones((1,), dt), "gradient", x0 if method == "gradient_x_input" else ones, None)


def _rows(f: Callable, nb: Neighbourhood) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted least-squares rows ``(A, y, sqrt_w)`` with unknowns ``[w, c]``."""
    m, d = nb.points.shape
    if nb.kind == "value":
        y = jax.vmap(f)(nb.points)
        if nb.intercept is None:
            return jnp.concatenate([nb.points, jnp.ones((m, 1))], 1), y, jnp.sqrt(nb.weights)
        return jnp.concatenate([nb.points, jnp.zeros((m, 1))], 1), y - nb.intercept, jnp.sqrt(nb.weights)
    g = jax.vmap(jax.grad(f))(nb.points)  # (m, d)
    eye = jnp.concatenate([jnp.diag(nb.scale), jnp.zeros((d, 1), nb.points.dtype)], 1)
    a = jnp.tile(eye, (m, 1))
    y = (g * nb.scale).reshape(-1)
    return a, y, jnp.repeat(jnp.sqrt(nb.weights), d)


def fit_surrogate(f: Callable[[jax.Array], jax.Array], nb: Neighbourhood) -> LinearSurrogate:
    r"""The one solver: :math:`\arg\min_{w, c} \sum_k \pi_k\, r_k(w, c)^2` by least squares
    (minimum-norm where the neighbourhood leaves directions free; gradient losses fix c = 0,
    occlusion fixes c = f(0))."""
    a, y, sw = _rows(f, nb)
    sol = jnp.linalg.lstsq(a * sw[:, None], y * sw)[0]
    d = nb.points.shape[1]
    if nb.kind == "gradient":
        return LinearSurrogate(sol[:d], jnp.zeros((), sol.dtype))
    c = sol[d] if nb.intercept is None else jnp.asarray(nb.intercept, sol.dtype)
    return LinearSurrogate(sol[:d], c)


def lfa_loss(f: Callable[[jax.Array], jax.Array], nb: Neighbourhood, g: LinearSurrogate) -> jax.Array:
    r"""The neighbourhood's weighted mean loss of surrogate ``g`` (free intercepts profiled out:
    the loss of :math:`w` with the best c, so surrogates from gradient methods compare fairly)."""
    a, y, sw = _rows(f, nb)
    r = y - a[:, :-1] @ g.weights
    if nb.kind == "value" and nb.intercept is None:
        r = r - jnp.sum(sw**2 * r) / jnp.sum(sw**2)
    return jnp.sum((sw * r) ** 2) / jnp.sum(sw**2)


def explain(method: str, f: Callable[[jax.Array], jax.Array], x0: jax.Array, key: jax.Array, **options: Any) -> LinearSurrogate:
    """``fit_surrogate(f, neighbourhood(method, f, x0, key, **options))``."""
    return fit_surrogate(f, neighbourhood(method, f, x0, key, **options))


def lfa_attribution(method: str, g: LinearSurrogate, x0: jax.Array) -> jax.Array:
    """The method's attribution: ``w`` (additive) or ``w * x0`` (multiplicative / binary)."""
    _check(method)
    return g.weights * x0 if method in MULTIPLICATIVE else g.weights
