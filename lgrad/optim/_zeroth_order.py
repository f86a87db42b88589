r"""Zeroth-order training with shared randomness: SPSA / MeZO and "Just One Byte".

References:

* S. Malladi, T. Gao, E. Nichani, A. Damian, J. D. Lee, D. Chen, S. Arora,
  "Fine-Tuning Language Models with Just Forward Passes" (MeZO), NeurIPS 2023,
  Definition 1 (SPSA, Eq. 1) and Algorithm 1 (in-place perturbation from a seed);
* E. Zelikman, Q. Huang, P. Liang, N. Haber, N. D. Goodman, "Just One Byte (per
  gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning Using
  Shared Randomness", 2023 (the (machine, sample)-seeded protocol and the 1-byte
  projected-gradient code).

Two-point SPSA with :math:`z \sim N(0, I)` regenerated from a key (never stored):

.. math::

    \widehat{pg} = \frac{L(\theta + \epsilon z) - L(\theta - \epsilon z)}{2\epsilon},
    \qquad \theta \leftarrow \theta - \eta\,(\widehat{pg}\, z + \lambda \theta).

Shared randomness: sample :math:`s` of worker :math:`m` at step :math:`t` uses the key
``fold_in(fold_in(fold_in(key, t), m), s)``; workers exchange only the scalars
:math:`\widehat{pg}_{m,s}` (all-gathered), and every worker applies
:math:`-\frac{\eta}{nS}\sum_{m,s} \widehat{pg}_{m,s}\, z(\text{key}_{t,m,s})` in the same
fixed order (m, then s), so replicas stay bitwise identical.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_int, check_learning_rate, check_nonnegative, check_positive
from lgrad.distributed import comm

__all__ = [
    "MeZOState",
    "sample_key",
    "perturb",
    "spsa_projected_gradient",
    "spsa_gradient",
    "one_byte_encode",
    "one_byte_decode",
    "scale_by_mezo",
    "mezo",
]

_CODECS = ("float", "one_byte")
#: The 1-byte code: int8 c. c = 0: pg == 0; c = -128: not finite; otherwise
#: sign(c) = sign(pg) and |c| - 64 = q = clip(round(16 ln |pg / scale|), -63, 63).
INVALID_CODE = -128
_Q_MAX = 63
_OFFSET = 64


def sample_key(key: jax.Array, step: jax.Array | int, worker: jax.Array | int, sample: jax.Array | int) -> jax.Array:
    """The key of (step, worker, sample): ``fold_in`` three times (shared by all workers)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, step), worker), sample)


def perturb(params: Any, key: jax.Array, scale: jax.Array | float) -> Any:
    """``params + scale * z`` with ``z ~ N(0, I)`` regenerated from ``key`` (leaf i uses
    ``fold_in(key, i)``; z has each leaf's dtype). z is never stored by the caller."""
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for i, p in enumerate(leaves):
        z = jax.random.normal(jax.random.fold_in(key, i), jnp.shape(p), jnp.result_type(p))
        out.append(p + jnp.asarray(scale, p.dtype) * z)
    return jax.tree.unflatten(treedef, out)


def spsa_projected_gradient(loss_fn: Callable[[Any], jax.Array], params: Any, key: jax.Array, eps: float) -> jax.Array:
    r"""The two-point projected gradient :math:`(L(\theta+\epsilon z) - L(\theta-\epsilon z))/(2\epsilon)`
    (MeZO Eq. 1) using two forward passes and no gradient."""
    # The two forward passes are the two iterations of one scan body: XLA:CPU then
    # reuses one pass's activation buffers for the other (two passes written out, even
    # sequenced by an optimization barrier, each got their own: `lgrad bench`
    # mezo-memory rows). The arithmetic is unchanged: p + (+eps or -eps) z per leaf.
    def one_pass(_, negative):
        leaves, treedef = jax.tree.flatten(params)
        out = []
        for i, p in enumerate(leaves):
            z = jax.random.normal(jax.random.fold_in(key, i), jnp.shape(p), jnp.result_type(p))
            scale = jnp.where(negative, jnp.asarray(-eps, p.dtype), jnp.asarray(eps, p.dtype))
            out.append(p + scale * z)
        return None, loss_fn(jax.tree.unflatten(treedef, out))

    _, losses = jax.lax.scan(one_pass, None, jnp.asarray([False, True]))
    lp, lm = losses[0], losses[1]
    return ((lp - lm) / (2.0 * eps)).astype(jnp.float32)


def spsa_gradient(loss_fn: Callable[[Any], jax.Array], params: Any, key: jax.Array, eps: float = 1e-3, num_samples: int = 1) -> Any:
    r"""The SPSA gradient estimate :math:`\frac1S\sum_s \widehat{pg}_s z_s` (for analysis;
    the training rule never materialises it)."""
    def one(s):
        k = jax.random.fold_in(key, s)
        pg = spsa_projected_gradient(loss_fn, params, k, eps)
        zero = jax.tree.map(jnp.zeros_like, params)
        return jax.tree.map(lambda a, b: a - b, perturb(zero, k, pg), zero)

    est = jax.lax.map(one, jnp.arange(num_samples))
    return jax.tree.map(lambda e: jnp.mean(e, axis=0), est)


def one_byte_encode(pg: jax.Array, *, scale: float = 1.0, levels_per_e: float = 16.0) -> jax.Array:
    r"""Encode projected gradients as one byte each (int8).

    :math:`q = \text{clip}(\text{round}(16 \ln|pg/\text{scale}|), -63, 63)`, stored as
    :math:`c = \text{sign}(pg)\,(q + 64)`; 0 encodes an exact zero and -128 a
    non-finite value. The paper's :math:`q \in [-127, 127]` plus a sign needs 9 bits;
    this code keeps one byte by halving the range of q (magnitudes
    :math:`\text{scale}\cdot e^{\pm 63/16} \approx \text{scale}\cdot[0.02, 51]`).
    Inside that range the relative error is at most :math:`e^{1/32} - 1 \approx 3.2\%`.
    """
    pg = jnp.asarray(pg, jnp.float32)
    mag = jnp.abs(pg) / scale
    q = jnp.clip(jnp.round(levels_per_e * jnp.log(jnp.maximum(mag, 1e-38))), -_Q_MAX, _Q_MAX)
    c = jnp.sign(pg) * (q + _OFFSET)
    c = jnp.where(pg == 0, 0, c)
    c = jnp.where(jnp.isfinite(pg), c, INVALID_CODE)
    return c.astype(jnp.int8)


def one_byte_decode(code: jax.Array, *, scale: float = 1.0, levels_per_e: float = 16.0) -> jax.Array:
    """Decode :func:`one_byte_encode`: ``sign * scale * exp(q / 16)`` (NaN for -128)."""
    c = jnp.asarray(code).astype(jnp.int32)
    q = (jnp.abs(c) - _OFFSET).astype(jnp.float32)
    val = jnp.sign(c).astype(jnp.float32) * scale * jnp.exp(q / levels_per_e)
    val = jnp.where(c == 0, 0.0, val)
    return jnp.where(c == INVALID_CODE, jnp.nan, val)


class MeZOState(NamedTuple):
    """State of :func:`scale_by_mezo` (identical on every worker)."""

    count: chex.Array  # int32: steps attempted
    skipped: chex.Array  # int32: steps skipped because some projected gradient was not finite
    projected_grads: chex.Array  # float32 (num_samples,): this worker's last projected gradients (as sent)


def _check_mezo(eps, weight_decay, num_samples, codec, codec_scale) -> None:
    check_positive(eps, "eps")
    check_nonnegative(weight_decay, "weight_decay")
    if not isinstance(num_samples, bool) and isinstance(num_samples, numbers.Integral):
        check_int(num_samples, "num_samples", minimum=1)
    else:
        raise ValueError(
            f"num_samples must be a Python integer >= 1 (it fixes the message size), got {num_samples!r}; "
            "with optax.inject_hyperparams pass static_args=('num_samples',)"
        )
    check_positive(codec_scale, "codec_scale")
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {_CODECS}, got {codec!r}")


def _gathered_projected_grads(loss_fn, params, base, t, *, eps, num_samples, codec, codec_scale, axis_name):
    """This worker's S projected gradients (as sent) and every worker's, decoded, in
    the order (m, s): ``(own (S,), all (n*S,), n)``."""
    me = 0 if axis_name is None else comm.axis_index(axis_name)
    pgs = jnp.stack(
        [spsa_projected_gradient(loss_fn, params, sample_key(base, t, me, s), eps) for s in range(num_samples)]
    )
    msg = one_byte_encode(pgs, scale=codec_scale) if codec == "one_byte" else pgs
    if axis_name is not None:
        msg = comm.all_gather(msg, axis_name)  # (n, S)
        n = comm.axis_size(axis_name)
    else:
        msg, n = msg[None], 1
    decoded = one_byte_decode(msg, scale=codec_scale) if codec == "one_byte" else msg
    own = one_byte_decode(one_byte_encode(pgs, scale=codec_scale), scale=codec_scale) if codec == "one_byte" else pgs
    return own, decoded.reshape(-1).astype(jnp.float32), n


def scale_by_mezo(
    *,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    codec: str = "float",
    codec_scale: float = 1.0,
    axis_name: str | None = comm.AXIS,
) -> optax.GradientTransformationExtraArgs:
    r"""The shared-randomness SPSA gradient estimate (MeZO without its learning rate).

    ``update(updates, state, params, *, loss_fn)``: ``updates`` is ignored (pass None or
    anything: no gradient is computed); ``loss_fn(params) -> scalar`` is this worker's
    loss on its own batch. Per step :math:`t`, every worker :math:`m` computes
    ``num_samples`` = :math:`S` projected gradients with keys
    :func:`sample_key` ``(PRNGKey(seed), t, m, s)``, the scalars are all-gathered
    (``codec="one_byte"``: one int8 each, so S bytes per worker per step), and every
    worker returns the same estimate

    .. math::

        \hat g = \frac{1}{nS}\sum_{m=0}^{n-1}\sum_{s=0}^{S-1}
            \widehat{pg}_{m,s}\, z(\text{key}_{t,m,s}) \;+\; \lambda\theta,

    accumulated sequentially in the order (m, s) with each z regenerated from its key
    (never stored; Malladi et al. 2023, Algorithm 1; Zelikman et al. 2023 for the
    shared seeds and the one-byte code). Chain with ``optax.scale_by_learning_rate``
    (see :func:`mezo`).

    **Non-finite losses**: if any gathered projected gradient is NaN/inf (every worker
    sees the same gathered scalars, so all decide alike) the step is skipped: the
    estimate is zero and ``state.skipped`` is incremented (``state.projected_grads``
    holds each worker's own last scalars, so the offending worker can be identified).

    **The update must run under the worker axis** ``axis_name`` (default
    ``"workers"``, :data:`lgrad.distributed.comm.AXIS`): inside
    :func:`lgrad.distributed.run_workers` / ``make_program``; ``axis_name=None``: one
    worker.

    ``optax.inject_hyperparams``: ``num_samples`` fixes the message size, so pass
    ``static_args=("num_samples",)`` (``codec`` and ``axis_name`` are strings, static
    anyway); ``eps``, ``weight_decay``, ``seed`` and ``codec_scale`` may be injected.

    Args:
      eps: perturbation scale :math:`\epsilon > 0` (MeZO default 1e-3).
      weight_decay: :math:`\lambda \ge 0`.
      num_samples: perturbations per worker per step, S >= 1 (a Python integer).
      seed: the shared seed (all workers must use the same).
      codec: ``"float"`` (4 bytes per scalar) or ``"one_byte"`` (int8, see
        :func:`one_byte_encode`).
      codec_scale: the scale of the 1-byte code (magnitudes it covers: scale *
        [0.02, 51]).
      axis_name: the worker axis (default ``"workers"``), or None for one worker.
    """
    _check_mezo(eps, weight_decay, num_samples, codec, codec_scale)

    def init_fn(params):
        del params
        return MeZOState(
            count=jnp.zeros([], jnp.int32),
            skipped=jnp.zeros([], jnp.int32),
            projected_grads=jnp.zeros((num_samples,), jnp.float32),
        )

    def update_fn(updates, state, params=None, *, loss_fn=None, **extra_args):
        del updates, extra_args
        if params is None or loss_fn is None:
            raise ValueError("mezo's update needs params and the keyword argument loss_fn")
        base = jax.random.PRNGKey(seed)
        t = state.count
        own, pgs, n = _gathered_projected_grads(
            loss_fn, params, base, t, eps=eps, num_samples=num_samples, codec=codec, codec_scale=codec_scale,
            axis_name=axis_name,
        )
        ok = jnp.all(jnp.isfinite(pgs))
        coef = jnp.where(ok, pgs / (n * num_samples), 0.0)

        def add(j, est):
            m, s = j // num_samples, j % num_samples
            # perturb(est, key, c) = est + c z(key): the regenerated z, applied in order.
            return perturb(est, sample_key(base, t, m, s), coef[j])

        est = jax.lax.fori_loop(0, n * num_samples, add, jax.tree.map(jnp.zeros_like, params))
        if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
            wd = jnp.where(ok, jnp.asarray(weight_decay, jnp.float32), 0.0)
            est = jax.tree.map(lambda e, p: e + wd.astype(p.dtype) * p, est, params)
        new_state = MeZOState(
            count=optax.safe_increment(t), skipped=state.skipped + (~ok).astype(jnp.int32), projected_grads=own
        )
        return est, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mezo(
    learning_rate: optax.ScalarOrSchedule = 1e-6,
    *,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    codec: str = "float",
    codec_scale: float = 1.0,
    axis_name: str | None = comm.AXIS,
) -> optax.GradientTransformationExtraArgs:
    r"""MeZO / shared-randomness SPSA: :func:`scale_by_mezo` then :math:`-\eta`.

    .. math::

        \Delta\theta = -\eta\Big(\frac{1}{nS}\sum_{m=0}^{n-1}\sum_{s=0}^{S-1}
            \widehat{pg}_{m,s}\, z(\text{key}_{t,m,s}) + \lambda\theta\Big)

    (Malladi et al. 2023, Algorithm 1; Zelikman et al. 2023). An
    ``optax.GradientTransformationExtraArgs``: call
    ``update(updates, state, params, loss_fn=...)``; ``updates`` is ignored. The
    state is ``(MeZOState, <learning-rate state>)``: ``state[0].skipped`` counts the
    skipped non-finite steps. Memory is that of inference plus one perturbed copy of
    the parameters (the paper's in-place ``theta += eps z`` trick is what XLA's
    buffer reuse does for a functional program). Every other argument is
    :func:`scale_by_mezo`'s; the update must run under the ``"workers"`` axis
    unless ``axis_name=None``.

    ``optax.inject_hyperparams(mezo, static_args=("num_samples",))`` injects
    ``learning_rate``, ``eps``, ``weight_decay``, ``seed`` and ``codec_scale``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from lgrad.optim import mezo
      >>> loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
      >>> tx = mezo(0.05, eps=1e-3, axis_name=None)   # one worker
      >>> params = {"w": jnp.zeros(4)}
      >>> state = tx.init(params)
      >>> step = jax.jit(lambda s, p: tx.update(None, s, p, loss_fn=loss))
      >>> for _ in range(300):
      ...     upd, state = step(state, params)
      ...     params = optax.apply_updates(params, upd)
      >>> bool(loss(params) < 1e-2)
      True
    """
    check_learning_rate(learning_rate)
    rule = scale_by_mezo(
        eps=eps, weight_decay=weight_decay, num_samples=num_samples, seed=seed, codec=codec,
        codec_scale=codec_scale, axis_name=axis_name,
    )
    return optax.chain(rule, optax.scale_by_learning_rate(learning_rate))
