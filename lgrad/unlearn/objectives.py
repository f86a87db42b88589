"""Local unlearning objectives over per-example (sequence or class) log-probabilities.

All three are *local*: they use only log-probabilities of the forget set (NPO also
those of a frozen reference model on the same forget set). Each takes ``logp`` of
shape ``(n,)`` -- ``log pi_theta(y_i | x_i)`` for the ``n`` forget examples, a
sequence log-probability (sum of token log-probs) for language models or a class
log-probability for classifiers -- and returns the scalar loss to *minimise*.

References: Yu et al. 2025, "On the Impossibility of Retrain Equivalence in Machine
Unlearning" (Sec. 5 uses GA, NPO with beta = 0.5 and SimNPO with beta = 1); Zhang et
al. 2024, "Negative Preference Optimization" (NPO, Eq. 3); Fan et al. 2024,
"Simplicity Prevails: Rethinking Negative Preference Optimization" (SimNPO, Eq. 4).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lgrad._validation import check_nonnegative, check_positive

__all__ = [
    "gradient_ascent_loss",
    "npo_loss",
    "simnpo_loss",
    "class_logprob",
    "sequence_logprob",
]


def _check_logp(logp: Any, name: str = "logp") -> jax.Array:
    logp = jnp.asarray(logp)
    if logp.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-example log-probabilities, got shape {logp.shape}")
    if logp.shape[0] == 0:
        raise ValueError(f"{name} is empty: the forget set must contain at least one example")
    return logp


def gradient_ascent_loss(logp: Any) -> jax.Array:
    r"""Gradient ascent (GA) on the forget set's likelihood.

    .. math::
        L_{GA}(\theta) = \frac{1}{n} \sum_{i=1}^{n} \log \pi_\theta(y_i \mid x_i)

    Minimising :math:`L_{GA}` is gradient *ascent* on the forget-set negative
    log-likelihood. For squared-error regression pass ``logp = -(x_i^T theta - y_i)^2``
    (a Gaussian log-likelihood up to constants) to get the update of ``docs/papers/unlearning-paths.md#what-we-implement``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(gradient_ascent_loss(jnp.array([-1.0, -3.0])))
      -2.0

    Raises:
      ValueError: ``logp`` is empty (an empty forget set) or not 1-D.
    """
    return jnp.mean(_check_logp(logp))


def npo_loss(logp: Any, ref_logp: Any, *, beta: float = 0.5) -> jax.Array:
    r"""Negative Preference Optimization (Zhang et al. 2024, Eq. 3).

    .. math::
        L_{NPO}(\theta) = \frac{1}{n}\sum_i -\frac{2}{\beta}
          \log \sigma\!\Big(-\beta \log \frac{\pi_\theta(y_i|x_i)}{\pi_{ref}(y_i|x_i)}\Big)
        = \frac{1}{n}\sum_i \frac{2}{\beta}\,\mathrm{softplus}\big(\beta(\log\pi_\theta - \log\pi_{ref})\big)

    Its gradient is GA's per-example gradient weighted by
    :math:`w_i = 2\sigma(\beta(\log\pi_\theta - \log\pi_{ref}))`, so as
    :math:`\beta \to 0` (``w_i -> 1``) NPO's gradient tends to GA's. ``ref_logp`` are the
    frozen reference model's log-probs (no gradient flows into them).

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(npo_loss(jnp.zeros(3), jnp.zeros(3), beta=0.5)), 4)  # (2/beta) log 2
      2.7726

    Raises:
      ValueError: empty forget set, shapes that differ, or ``beta <= 0``.
    """
    check_positive(beta, "beta")
    logp = _check_logp(logp)
    ref_logp = jax.lax.stop_gradient(_check_logp(ref_logp, "ref_logp"))
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have the same shape, got {logp.shape} and {ref_logp.shape}")
    return jnp.mean((2.0 / beta) * jax.nn.softplus(beta * (logp - ref_logp)))


def simnpo_loss(logp: Any, *, beta: float = 1.0, gamma: float = 0.0, lengths: Any = None) -> jax.Array:
    r"""SimNPO: reference-free NPO (Fan et al. 2024, Eq. 4).

    .. math::
        L_{SimNPO}(\theta) = \frac{1}{n}\sum_i -\frac{2}{\beta}
          \log \sigma\!\Big(-\frac{\beta}{|y_i|}\log \pi_\theta(y_i|x_i) - \gamma\Big)

    With the defaults (``gamma = 0``, ``lengths = None`` i.e. :math:`|y_i| = 1`) this is
    The form in ``docs/papers/unlearning-paths.md#what-we-implement``, :math:`-(2/\beta)\log\sigma(-\beta\log\pi_\theta)`, beta = 1.
    Pass ``lengths`` (tokens per sequence) for SimNPO's length normalisation.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(simnpo_loss(jnp.zeros(2))), 4)  # 2 log 2
      1.3863

    Raises:
      ValueError: empty forget set, ``beta <= 0``, ``gamma < 0`` or non-positive lengths.
    """
    check_positive(beta, "beta")
    check_nonnegative(gamma, "gamma")
    logp = _check_logp(logp)
    if lengths is None:
        norm = logp
    else:
        lengths = jnp.asarray(lengths, logp.dtype)
        if lengths.shape != logp.shape:
            raise ValueError(f"lengths must have the shape of logp {logp.shape}, got {lengths.shape}")
        try:
            nonpositive = bool(jnp.any(lengths <= 0))
        except jax.errors.ConcretizationTypeError:  # traced: checked when first called concretely
            nonpositive = False
        if nonpositive:
            raise ValueError("lengths must all be > 0")
        norm = logp / lengths
    return jnp.mean((2.0 / beta) * jax.nn.softplus(beta * norm + gamma))


def class_logprob(logits: Any, labels: Any) -> jax.Array:
    """Per-example ``log softmax(logits)[label]``: shape ``(n,)`` from ``(n, c)`` and ``(n,)``."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(lp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_logprob(logits: Any, targets: Any, mask: Any = None) -> jax.Array:
    """Per-sequence ``sum_t mask_t log softmax(logits_t)[target_t]``: ``(n,)`` from ``(n, T, V)``.

    ``mask`` (``(n, T)``, 1 for tokens of the answer ``y``) selects which tokens count.
    """
    tok = class_logprob(logits, targets)
    if mask is not None:
        tok = tok * jnp.asarray(mask, tok.dtype)
    return jnp.sum(tok, axis=-1)
