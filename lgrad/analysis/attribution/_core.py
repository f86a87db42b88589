"""Shared pieces of :mod:`lgrad.analysis.attribution`: target selection, named layers
(:func:`tap`) and the derivative rules of the nonlinearities (:func:`rules`).

Every attribution function takes a pure ``apply(params, x) -> outputs`` on a *batch*
``x`` of shape ``(n, ...)`` (captum's convention: the first axis is the batch) and a
``target``: ``None`` when ``apply`` returns one scalar per example ``(n,)``, an int
(the same output index for every example) or an ``(n,)`` integer array.

Two trace-time hooks let a model expose what the gradient family needs without
changing its parameters:

* ``tap(name, h)`` names an intermediate activation. Outside a capture it returns
  ``h``; inside :func:`layer_forward` it returns ``h + delta`` with a zero
  ``delta`` whose gradient is the gradient with respect to the activation, and
  records ``h``. (Flax NNX offers the same through ``Module.perturb`` and
  ``nnx.capture``; that needs a stateful capture call plus a separate ``sow`` for the
  value, so lgrad uses this small capture wrapper, which works in plain functions and
  NNX ``__call__`` alike, under ``jit``/``vmap``.)
* ``relu``, ``gelu``, ``silu``, ``softmax_pattern`` and ``layer_norm`` follow the rule
  set by :func:`rules` (``"plain"``, ``"guided"``, ``"deeplift"``, ``"relp"``):
  models written with them get Guided Backprop, DeepLIFT and RelP gradients.

Both hooks act while a function is *traced*: jit the attribution call, not ``apply``
on its own (a pre-jitted ``apply`` keeps the behaviour of its first trace).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

__all__ = [
    "RULES",
    "gelu",
    "layer_forward",
    "layer_norm",
    "relu",
    "rules",
    "select_target",
    "silu",
    "softmax_pattern",
    "tap",
    "target_function",
]

RULES = ("plain", "guided", "deeplift", "relp")
_STATE = threading.local()
Apply = Callable[[Any, jax.Array], jax.Array]


def _stack(attr: str) -> list:
    if not hasattr(_STATE, attr):
        setattr(_STATE, attr, [])
    return getattr(_STATE, attr)


def current_rule() -> str:
    """The derivative rule in force (``"plain"`` outside :func:`rules`)."""
    stack = _stack("rules")
    return stack[-1] if stack else "plain"


@contextlib.contextmanager
def rules(name: str) -> Iterator[None]:
    """Trace the enclosed computation with the derivative rule ``name`` (one of :data:`RULES`)."""
    if name not in RULES:
        raise ValueError(f"rules: name={name!r} is not one of {RULES}")
    _stack("rules").append(name)
    try:
        yield
    finally:
        _stack("rules").pop()


def select_target(out: jax.Array, target: Any) -> jax.Array:
    """The ``(n,)`` scalars of ``out`` picked by ``target`` (see the module docstring)."""
    if target is None:
        if out.ndim != 1:
            raise ValueError(f"target=None needs apply to return shape (n,), got {out.shape}; pass an output index")
        return out
    t = jnp.asarray(target)
    if t.ndim == 0:
        return out[:, t]
    return jnp.take_along_axis(out, t[:, None].astype(jnp.int32), axis=1)[:, 0]


def target_function(apply: Apply, params: Any, target: Any) -> Callable[[jax.Array], jax.Array]:
    """``x -> sum_i out_i[target_i]``: its gradient is every example's own gradient (examples independent)."""
    return lambda x: jnp.sum(select_target(apply(params, x), target))


# --- named layers -----------------------------------------------------------------
def tap(name: str, h: jax.Array) -> jax.Array:
    """Name the activation ``h`` (identity outside :func:`layer_forward`)."""
    stack = _stack("captures")
    if not stack:
        return h
    cap = stack[-1]
    if name == cap["name"]:
        cap["value"] = h
        if cap["delta"] is not None:
            return h + cap["delta"]
        if cap["replace"] is not None:
            return cap["replace"](h)
    return h


@contextlib.contextmanager
def _capturing(name: str, delta: Any = None, replace: Callable | None = None) -> Iterator[dict]:
    cap = {"name": name, "value": None, "delta": delta, "replace": replace}
    _stack("captures").append(cap)
    try:
        yield cap
    finally:
        _stack("captures").pop()


def layer_shape(apply: Apply, params: Any, x: jax.Array, layer: str) -> jax.ShapeDtypeStruct:
    """Shape and dtype of the activation tapped as ``layer`` on input ``x``."""

    def value(x):
        with _capturing(layer) as cap:
            apply(params, x)
        if cap["value"] is None:
            raise ValueError(f"layer={layer!r} is not tapped by apply (call attribution.tap({layer!r}, h) in the model)")
        return cap["value"]

    return jax.eval_shape(value, x)


def layer_forward(apply: Apply, layer: str) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """``(params, x, delta) -> (outputs, activation)`` with ``delta`` added at ``layer``.

    ``jax.grad`` with respect to ``delta`` (at zero) is the gradient with respect to the
    layer's activation; see :func:`layer_gradient`.
    """

    def fwd(params, x, delta):
        with _capturing(layer, delta=delta) as cap:
            out = apply(params, x)
        if cap["value"] is None:
            raise ValueError(f"layer={layer!r} is not tapped by apply (call attribution.tap({layer!r}, h) in the model)")
        return out, cap["value"]

    return fwd


def layer_gradient(apply: Apply, params: Any, x: jax.Array, *, layer: str, target: Any = None) -> tuple[jax.Array, jax.Array]:
    """``(activation, gradient)`` at the tapped ``layer`` of the target output (batch-summed)."""
    shape = layer_shape(apply, params, x, layer)
    fwd = layer_forward(apply, layer)

    def f(delta):
        out, act = fwd(params, x, delta)
        return jnp.sum(select_target(out, target)), act

    grad, act = jax.grad(f, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return act, grad


def replace_layer(apply: Apply, layer: str, fn: Callable[[jax.Array], jax.Array]) -> Apply:
    """``apply`` with the activation at ``layer`` replaced by ``fn(activation)`` (patching)."""

    def patched(params, x):
        with _capturing(layer, replace=fn):
            return apply(params, x)

    return patched


# --- nonlinearities with selectable derivative rules -------------------------------
def _pair_halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = x.shape[0] // 2
    return x[:n], x[n:]


def _rescale(act: Callable, x: jax.Array, eps: float = 1e-10) -> jax.Array:
    """DeepLIFT rescale rule on a batch [inputs; baselines]: multipliers Δy/Δx (captum's eps 1e-10)."""

    @jax.custom_vjp
    def f(x):
        return act(x)

    def fwd(x):
        return act(x), x

    def bwd(x, g):
        xi, xr = _pair_halves(x)
        dx = jnp.concatenate([xi - xr, xi - xr])
        dy = jnp.concatenate([act(xi) - act(xr)] * 2)
        local = jax.vmap(jax.grad(lambda v: act(v)))(x.reshape(-1)).reshape(x.shape)
        return (jnp.where(jnp.abs(dx) < eps, g * local, g * dy / jnp.where(jnp.abs(dx) < eps, 1.0, dx)),)

    f.defvjp(fwd, bwd)
    return f(x)


@jax.custom_vjp
def _guided_relu(x):
    return jax.nn.relu(x)


def _guided_fwd(x):
    return jax.nn.relu(x), x


def _guided_bwd(x, g):
    return (jax.nn.relu(jnp.where(x > 0, g, 0.0)),)  # captum: relu of the ReLU's input gradient


_guided_relu.defvjp(_guided_fwd, _guided_bwd)


def _relp_act(act: Callable, x: jax.Array, stabiliser: float = 1e-6) -> jax.Array:
    """RelP's rule for GELU/SiLU: x * sg(act(x) / x) (same value, linearised gradient)."""
    safe = jnp.where(jnp.abs(x) < stabiliser, jnp.where(x < 0, -stabiliser, stabiliser), x)
    return x * jax.lax.stop_gradient(act(x) / safe)


def relu(x: jax.Array) -> jax.Array:
    """ReLU; backward by the active rule (guided: positive gradients only; deeplift: rescale)."""
    rule = current_rule()
    if rule == "guided":
        return _guided_relu(x)
    if rule == "deeplift":
        return _rescale(jax.nn.relu, x)
    if rule == "relp":
        return _relp_act(jax.nn.relu, x)
    return jax.nn.relu(x)


def gelu(x: jax.Array) -> jax.Array:
    """GELU (exact erf form); rules: deeplift rescale, relp x * sg(gelu(x)/x)."""
    act = lambda v: jax.nn.gelu(v, approximate=False)  # noqa: E731
    rule = current_rule()
    if rule == "deeplift":
        return _rescale(act, x)
    if rule == "relp":
        return _relp_act(act, x)
    return act(x)


def silu(x: jax.Array) -> jax.Array:
    """SiLU; rules: deeplift rescale, relp x * sg(silu(x)/x)."""
    rule = current_rule()
    if rule == "deeplift":
        return _rescale(jax.nn.silu, x)
    if rule == "relp":
        return _relp_act(jax.nn.silu, x)
    return jax.nn.silu(x)


def softmax_pattern(scores: jax.Array, axis: int = -1) -> jax.Array:
    """Attention pattern ``softmax(scores)``; under ``"relp"`` it is detached (no gradient)."""
    p = jax.nn.softmax(scores, axis=axis)
    return jax.lax.stop_gradient(p) if current_rule() == "relp" else p


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis; under ``"relp"`` it divides by stop-gradient σ
    (the mean-centring is still differentiated)."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    sigma = jnp.sqrt(jnp.mean(xc**2, axis=-1, keepdims=True) + eps)
    if current_rule() == "relp":
        sigma = jax.lax.stop_gradient(sigma)
    return xc / sigma * scale + bias


def gated(y: jax.Array) -> jax.Array:
    """RelP's rule for a gated unit's product ``y = a * b``: y/2 + sg(y/2) (half the
    relevance to each factor); identity outside ``"relp"``."""
    if current_rule() != "relp":
        return y
    return y / 2 + jax.lax.stop_gradient(y / 2)
