"""diffGrad: Adam whose step is damped by the local change of the gradient.

Reference: S. R. Dubey, S. Chakraborty, S. K. Roy, S. Mukherjee, S. K. Singh,
B. B. Chaudhuri, "diffGrad: An Optimization Method for Convolutional Neural
Networks", IEEE TNNLS 2019 (arXiv:1909.11015), Algorithm 1 / Eqs. (4)-(8).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_in_interval, check_learning_rate, check_nonnegative, check_positive

__all__ = ["ScaleByDiffGradState", "scale_by_diffgrad", "diffgrad"]


class ScaleByDiffGradState(NamedTuple):
    """State of :func:`scale_by_diffgrad`."""

    count: chex.Array  # number of updates applied so far (int32 scalar)
    mu: optax.Updates  # first moment m
    nu: optax.Updates  # second moment v
    prev_grad: optax.Updates  # g_{t-1} (zeros before the first step)


def _friction(prev_grad: jax.Array, grad: jax.Array) -> jax.Array:
    # xi = sigmoid(|g_{t-1} - g_t|). ``jax.nn.sigmoid`` (lax.logistic) measured faster
    # on XLA:CPU than the spelled-out 1 / (1 + exp(-x)) and than folding 1/xi into the
    # denominator (`lgrad bench`, 10M parameters).
    return jax.nn.sigmoid(jnp.abs(prev_grad - grad))


def _check_state_dtype(state_dtype: Any) -> None:
    if state_dtype is None:
        return
    try:
        dt = jnp.dtype(state_dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"state_dtype must be None or a floating dtype (e.g. 'bfloat16'), got {state_dtype!r}")


def scale_by_diffgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    constant_friction: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by the diffGrad rule (the optimizer without its learning rate).

    With :math:`g_t` the incoming update (gradient) and :math:`g_0 = 0`,

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \xi_t &= \frac{1}{1 + e^{-|g_{t-1} - g_t|}}, \\
        u_t &= -\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
               \frac{\xi_t\, m_t}{\sqrt{v_t} + \epsilon},

    the paper's Algorithm 1 (Eqs. 4-8) without :math:`\eta`. The bias corrections
    multiply the step and ``eps`` is added to the *uncorrected* :math:`\sqrt{v_t}`,
    exactly as in the paper (and the authors' code); this differs from optax's Adam
    (``eps`` added to :math:`\sqrt{\hat v_t}`) only through ``eps``. The sign is
    positive here: like ``optax.scale_by_adam``, the descent sign comes from
    ``optax.scale_by_learning_rate`` in :func:`diffgrad`.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to :math:`\sqrt{v_t}`, > 0.
      constant_friction: reproduce the authors' first published code, in which
        ``g_{t-1}`` aliased ``g_t`` so that :math:`\xi \equiv 0.5` (their README says
        the paper's numbers came from that version). Default: the paper's rule.
      state_dtype: dtype of ``m``, ``v`` and the stored previous gradient (default:
        each parameter's own dtype). Arithmetic is always done in at least float32,
        and the returned updates keep the incoming updates' dtype.

    ``optax.inject_hyperparams(scale_by_diffgrad)`` needs no ``static_args``, except
    ``static_args=("state_dtype",)`` for a dtype object (see :func:`diffgrad`).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from lgrad.optim import scale_by_diffgrad
      >>> tx = optax.chain(scale_by_diffgrad(), optax.scale(-1e-3))
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([1.0, -2.0, 0.5])}, state)
    """
    check_in_interval(b1, "b1", 0.0, 1.0)
    check_in_interval(b2, "b2", 0.0, 1.0)
    check_positive(eps, "eps")
    _check_state_dtype(state_dtype)

    def init_fn(params: optax.Params) -> ScaleByDiffGradState:
        zeros = lambda: jax.tree.map(lambda p: jnp.zeros_like(p, dtype=state_dtype), params)  # noqa: E731
        return ScaleByDiffGradState(
            count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(), prev_grad=zeros()
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)

        def step_size(ct):
            # sqrt(1 - b2^t) / (1 - b1^t), in the leaf's compute dtype (a scalar).
            t = count.astype(ct)
            return jnp.sqrt(1 - jnp.asarray(b2, ct) ** t) / (1 - jnp.asarray(b1, ct) ** t)

        def moment(decay, power):
            # Arithmetic in (at least) float32: in bfloat16, 0.999 rounds to 1.0 and
            # 1 - b2 would vanish. The state keeps its own dtype.
            def f(g, m):
                ct = jnp.promote_types(m.dtype, jnp.float32)
                c = jnp.asarray(decay, ct)
                g = g.astype(ct)
                return (c * m.astype(ct) + (1 - c) * (g if power == 1 else g * g)).astype(m.dtype)

            return f

        mu = jax.tree.map(moment(b1, 1), updates, state.mu)
        nu = jax.tree.map(moment(b2, 2), updates, state.nu)

        def direction(g, m, v, g_prev):
            ct = jnp.promote_types(g.dtype, jnp.float32)
            g32, m32, v32 = g.astype(ct), m.astype(ct), v.astype(ct)
            xi = jnp.asarray(0.5, ct) if constant_friction else _friction(g_prev.astype(ct), g32)
            u = (step_size(ct) * xi) * m32 / (jnp.sqrt(v32) + jnp.asarray(eps, ct))
            return u.astype(g.dtype)

        u = jax.tree.map(direction, updates, mu, nu, state.prev_grad)
        prev = jax.tree.map(lambda g, old: g.astype(old.dtype), updates, state.prev_grad)
        return u, ScaleByDiffGradState(count=count, mu=mu, nu=nu, prev_grad=prev)

    return optax.GradientTransformation(init_fn, update_fn)


def diffgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    constant_friction: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""The diffGrad optimizer (Dubey et al. 2019, Algorithm 1).

    .. math::

        g_t \leftarrow \nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}, \qquad
        \theta_t = \theta_{t-1} - \eta\,
            \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{\xi_t\, m_t}{\sqrt{v_t} + \epsilon}

    with :math:`m_t, v_t, \xi_t` as in :func:`scale_by_diffgrad`. The L2 weight decay
    :math:`\lambda` is added to the gradient *before* the moments and the friction,
    as in the paper and the authors' code (coupled, not AdamW-style).

    Args:
      learning_rate: :math:`\eta` (a number >= 0 or an optax schedule).
      b1, b2, eps: see :func:`scale_by_diffgrad`.
      weight_decay: L2 coefficient :math:`\lambda >= 0` added to the gradient.
      constant_friction: :math:`\xi \equiv 0.5` (authors' first code), see
        :func:`scale_by_diffgrad`.
      state_dtype: dtype of the moments and the stored previous gradient (default:
        each parameter's own), see :func:`scale_by_diffgrad`.

    ``optax.inject_hyperparams(diffgrad)`` needs no ``static_args`` (it injects
    ``learning_rate``, ``b1``, ``b2``, ``eps`` and ``weight_decay``), except
    ``static_args=("state_dtype",)`` when ``state_dtype`` is a dtype object such as
    ``jnp.bfloat16`` (callable, it would be taken for a schedule); a dtype *name*
    (``"bfloat16"``) needs nothing.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from lgrad.optim import diffgrad
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> params = {"w": jnp.zeros(2)}
      >>> tx = diffgrad(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params["w"], 3.0, atol=0.1))
      True
    """
    check_learning_rate(learning_rate)
    check_nonnegative(weight_decay, "weight_decay")
    parts: list[Any] = []
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(scale_by_diffgrad(b1, b2, eps, constant_friction=constant_friction, state_dtype=state_dtype))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
