r"""The SAM-style perturbed gradient (ascent step, then the gradient there).

References:

* P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur, "Sharpness-Aware Minimization for
  Efficiently Improving Generalization", ICLR 2021 (the ascent step);
* Y. Sun, L. Shen, T. Huang, L. Ding, D. Tao, "FedSpeed: Larger Local Interval,
  Less Communication Round, and Higher Generalization Accuracy", ICLR 2023 (the
  mixed gradient :math:`\tilde g`, its local step; ``docs/papers/fedspeed-heterogeneity.md``).

Given the gradient :math:`g_1 = \nabla f(x)` (the incoming updates) and the loss
:math:`f` (``loss_fn``):

.. math::

    \breve x = x + \rho\, \frac{g_1}{\|g_1\|}, \qquad g_2 = \nabla f(\breve x), \qquad
    \tilde g = (1 - \alpha)\, g_1 + \alpha\, g_2 .

:math:`\alpha = 1` is SAM's gradient (and the FedSpeed authors' code); :math:`\rho = 0`
or :math:`\alpha = 0` return :math:`g_1`. :math:`\|g_1\|` is the global norm over all
leaves; a zero gradient is not perturbed.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_in_interval, check_learning_rate, check_nonnegative

__all__ = ["ScaleBySAMState", "perturbed_gradient", "scale_by_sam", "sam"]


class ScaleBySAMState(NamedTuple):
    """State of :func:`scale_by_sam` (none is needed; kept for a stable type)."""


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def perturbed_gradient(loss_fn, params: Any, grads: Any, *, rho: Any, alpha: Any = 1.0) -> Any:
    r""":math:`\tilde g = (1-\alpha) g_1 + \alpha \nabla f(x + \rho g_1/\|g_1\|)` for
    ``grads`` = :math:`g_1` at ``params`` = :math:`x` (a pure function; see the module)."""
    if _is_zero(rho) or _is_zero(alpha):
        return grads
    norm = optax.tree.norm(grads)
    scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    x_breve = jax.tree.map(lambda p, g: p + (scale * g).astype(p.dtype), params, grads)
    g2 = jax.grad(loss_fn)(x_breve)
    return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(a.dtype), grads, g2)


def _check_sam(rho: Any, alpha: Any) -> None:
    check_nonnegative(rho, "rho")
    check_in_interval(alpha, "alpha", 0.0, 1.0, low_closed=True, high_closed=True)


def scale_by_sam(*, rho: float = 0.05, alpha: float = 1.0) -> optax.GradientTransformationExtraArgs:
    r"""Replace the gradient by the perturbed gradient :math:`\tilde g` (module docstring).

    ``update(updates, state, params, *, loss_fn)``: ``updates`` is :math:`g_1 = \nabla
    f(x)`, ``params`` is :math:`x` and ``loss_fn(params) -> scalar`` is :math:`f` on the
    same batch (one extra gradient evaluation per step). Chain with
    ``optax.scale_by_learning_rate`` (see :func:`sam`). ``rho`` and ``alpha`` may be
    injected with ``optax.inject_hyperparams`` (no static arguments).

    Args:
      rho: ascent radius :math:`\rho \ge 0` (SAM 0.05; FedSpeed 0.1).
      alpha: mixing weight :math:`\alpha \in [0, 1]` (1: SAM and the FedSpeed code).
    """
    _check_sam(rho, alpha)

    def init_fn(params):
        del params
        return ScaleBySAMState()

    def update_fn(updates, state, params=None, *, loss_fn=None, **extra_args):
        del extra_args
        if params is None or loss_fn is None:
            raise ValueError("scale_by_sam's update needs params and the keyword argument loss_fn")
        return perturbed_gradient(loss_fn, params, updates, rho=rho, alpha=alpha), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam(learning_rate: optax.ScalarOrSchedule, *, rho: float = 0.05, alpha: float = 1.0) -> optax.GradientTransformationExtraArgs:
    r"""SAM-style descent: :math:`x \leftarrow x - \eta\, \tilde g` (:func:`scale_by_sam`
    then :math:`-\eta`); ``alpha = 1`` is SAM (Foret et al. 2021). ``update`` needs
    ``loss_fn``. ``optax.inject_hyperparams(sam)`` works with no static arguments
    (``learning_rate``, ``rho`` and ``alpha`` may all be injected)."""
    check_learning_rate(learning_rate)
    return optax.chain(scale_by_sam(rho=rho, alpha=alpha), optax.scale_by_learning_rate(learning_rate))
