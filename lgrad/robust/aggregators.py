r"""Robust aggregators on stacked vectors ``x`` of shape (n, d) (byzfl semantics).

Every function is pure ``jax.numpy``: jit- and vmap-safe, with ``f`` (and the
other integer options) static Python integers. Semantics follow ``docs/papers/monna-robustness.md#robust-aggregators`` and
the conventions of the byzfl library (Allouah et al.):

=====================  ==========================================================
``mean(x)``            :math:`\frac1n\sum_i x_i`
``median(x)``          coordinate-wise median (mean of the two middle values for even n)
``trimmed_mean(x, f)`` per coordinate, drop the f largest and f smallest, average the rest
``krum(x, f)``         the :math:`x_i` minimising the sum of squared distances to its
                       n−f−1 nearest other vectors (Blanchard et al. 2017, Eq. 2)
``multi_krum(x, f)``   mean of the n−f vectors with the lowest Krum scores
``geometric_median``   smoothed Weiszfeld, weights :math:`1/\max(\nu, \|z-x_i\|)`
``nnm(x, f)``          (n, d): row i = mean of the n−f vectors nearest to :math:`x_i`
                       (itself included) (Allouah et al. 2023, Alg. 1)
``nna(x, f, i)``       row i of ``nnm`` (Farhadkhani et al. 2023, MoNNA, Eq. 3)
``centered_clipping``  :math:`v \leftarrow v + \frac1n\sum_i \mathrm{clip}_\tau(x_i - v)`,
                       ``iters`` times (Karimireddy et al. 2021, Eq. 4)
=====================  ==========================================================

Bad input
---------
Eagerly (concrete arrays) every function raises ``ValueError`` when ``x`` is not
2-D, when ``2f >= n`` (trimmed mean, Krum, Multi-Krum) or ``f >= n`` (NNM, NNA),
when ``i`` is outside ``[0, n)``, and when ``x`` holds more non-finite rows than
the rule can ignore (see below): the error names the count and the bound. Under
``jit``/``vmap`` (traced ``x`` or ``i``) only the shape checks run; a traced
out-of-range ``i`` is clamped by JAX indexing.

Non-finite rows (NaN/Inf sent by an attacker)
---------------------------------------------
A row with any non-finite entry is *maximally distant*: every distance to it is
``+inf`` (its own distance to itself is 0 but it never selects itself as a
neighbour of a finite row). Concretely:

* ``median`` / ``trimmed_mean``: NaN is read as ``+inf`` per coordinate, so up to
  ``ceil(n/2)-1`` (median) or ``f`` (trimmed mean) non-finite values per
  coordinate are sorted to the ends and ignored.
* ``krum`` / ``multi_krum`` / ``nnm`` / ``nna``: non-finite rows get infinite
  distance, hence an infinite score / are never among the n−f nearest of a finite
  row while at most ``f`` rows are non-finite.
* ``geometric_median``: non-finite rows get weight 0 (any number < n ignored).
* ``centered_clipping``: a non-finite row contributes 0 (its clipped difference
  has no direction); the remaining rows are clipped as usual.
* ``mean`` ignores nothing: one non-finite row makes the result non-finite.

When more non-finite rows arrive than tolerated, the selected set contains one and
the output is non-finite (NaN/Inf), never a silently wrong finite number; eagerly
this is a ``ValueError`` instead.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lgrad._validation import check_int, check_positive

__all__ = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "nnm",
    "nna",
    "centered_clipping",
    "krum_scores",
    "pairwise_sq_distances",
    "finite_rows",
]


# ----------------------------------------------------------------------------- checks
def _concrete(a: Any) -> np.ndarray | None:
    if isinstance(a, jax.core.Tracer):
        return None
    try:
        return np.asarray(a)
    except Exception:  # pragma: no cover - anything that cannot be read now
        return None


def _check_x(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a stack of vectors of shape (n, d), got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one vector (n >= 1)")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_f(f: Any, n: int, *, strict_half: bool) -> int:
    f = check_int(f, "f", minimum=0)
    if strict_half and 2 * f >= n:
        raise ValueError(f"f must satisfy 2f < n, got f={f} with n={n} vectors")
    if not strict_half and f >= n:
        raise ValueError(f"f must satisfy f < n, got f={f} with n={n} vectors")
    return f


def _check_nonfinite(x: jax.Array, tolerated: int, rule: str) -> None:
    a = _concrete(x)
    if a is None:
        return
    bad = int(np.sum(~np.all(np.isfinite(a), axis=1)))
    if bad > tolerated:
        raise ValueError(
            f"x has {bad} non-finite row(s) (NaN/Inf) but {rule} can ignore at most {tolerated}; "
            "the aggregate would be non-finite"
        )


def finite_rows(x: jax.Array) -> jax.Array:
    """Boolean (n,) mask of the rows whose entries are all finite."""
    return jnp.all(jnp.isfinite(x), axis=1)


def _select_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_i w_i x_i / sum_i w_i over rows with w_i > 0; unselected rows (possibly
    non-finite) contribute exactly 0, selected non-finite rows propagate."""
    w = weights.astype(x.dtype)
    picked = jnp.where((w > 0)[:, None], x, jnp.zeros_like(x))
    return (w[:, None] * picked).sum(0) / w.sum()


def pairwise_sq_distances(x: jax.Array) -> jax.Array:
    """(n, n) squared Euclidean distances; +inf to and from non-finite rows (0 on
    the diagonal)."""
    ok = finite_rows(x)
    xs = jnp.where(ok[:, None], x, 0.0)
    sq = jnp.sum(xs * xs, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (xs @ xs.T)
    d2 = jnp.maximum(d2, 0.0)
    both = ok[:, None] & ok[None, :]
    d2 = jnp.where(both, d2, jnp.inf)
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d2)


def _sorted_cols(x: jax.Array) -> jax.Array:
    return jnp.sort(jnp.where(jnp.isnan(x), jnp.inf, x), axis=0)


# ----------------------------------------------------------------------------- rules
def mean(x: jax.Array) -> jax.Array:
    r"""Average :math:`\frac1n\sum_i x_i` (not robust: no non-finite row tolerated)."""
    x = _check_x(x)
    _check_nonfinite(x, 0, "mean")
    return jnp.mean(x, axis=0)


def median(x: jax.Array) -> jax.Array:
    r"""Coordinate-wise median; for even n the mean of the two middle values
    (as ``numpy.median``). Up to ``ceil(n/2) - 1`` non-finite values per coordinate
    are ignored (NaN counts as ``+inf``)."""
    x = _check_x(x)
    n = x.shape[0]
    _check_nonfinite(x, (n + 1) // 2 - 1, "median")
    s = _sorted_cols(x)
    lo, hi = (n - 1) // 2, n // 2
    return s[lo] if lo == hi else 0.5 * (s[lo] + s[hi])


def trimmed_mean(x: jax.Array, f: int) -> jax.Array:
    r"""Coordinate-wise trimmed mean: per coordinate drop the ``f`` largest and
    ``f`` smallest values, average the n−2f left. Requires 2f < n."""
    x = _check_x(x)
    n = x.shape[0]
    f = _check_f(f, n, strict_half=True)
    _check_nonfinite(x, f, f"trimmed_mean with f={f}")
    s = _sorted_cols(x)
    return jnp.mean(s[f : n - f], axis=0)


def krum_scores(x: jax.Array, f: int) -> jax.Array:
    """Krum score of each row: the sum of squared distances to its n−f−1 nearest
    other rows (+inf for a non-finite row)."""
    n = x.shape[0]
    d2 = pairwise_sq_distances(x)
    d2 = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, d2)  # exclude self
    k = n - f - 1
    if k <= 0:
        return jnp.where(finite_rows(x), 0.0, jnp.inf).astype(x.dtype)
    nearest = -jax.lax.top_k(-d2, k)[0]
    return jnp.sum(nearest, axis=1)


def krum(x: jax.Array, f: int) -> jax.Array:
    r"""Krum: :math:`x_{i^*}`, :math:`i^* = \arg\min_i \sum_{j \in N_i} \|x_i - x_j\|^2`,
    :math:`N_i` the n−f−1 nearest other rows (Blanchard et al. 2017, Eq. 2; ties:
    lowest index). Requires 2f < n."""
    x = _check_x(x)
    n = x.shape[0]
    f = _check_f(f, n, strict_half=True)
    _check_nonfinite(x, f, f"krum with f={f}")
    return x[jnp.argmin(krum_scores(x, f))]


def multi_krum(x: jax.Array, f: int) -> jax.Array:
    """Multi-Krum: the mean of the n−f rows with the lowest Krum scores (ties: lowest
    index). Requires 2f < n."""
    x = _check_x(x)
    n = x.shape[0]
    f = _check_f(f, n, strict_half=True)
    _check_nonfinite(x, f, f"multi_krum with f={f}")
    order = jnp.argsort(krum_scores(x, f), stable=True)
    w = jnp.zeros((n,), x.dtype).at[order[: n - f]].set(1.0)
    return _select_mean(x, w)


def geometric_median(
    x: jax.Array, *, nu: float = 0.1, iters: int = 10, init: jax.Array | None = None
) -> jax.Array:
    r"""Smoothed Weiszfeld iterations for the geometric median
    :math:`\arg\min_z \sum_i \|z - x_i\|` (Pillutla et al. 2022, RFA, Alg. 2):

    .. math::

        z \leftarrow \frac{\sum_i w_i x_i}{\sum_i w_i}, \qquad
        w_i = \frac{1}{\max(\nu, \|z - x_i\|)}.

    ``iters`` iterations from ``init`` (default: the coordinate-wise median, which
    keeps the result translation-equivariant; byzfl starts from 0 with 3
    iterations). Non-finite rows get weight 0.
    """
    x = _check_x(x)
    check_positive(nu, "nu")
    iters = check_int(iters, "iters", minimum=0)
    n = x.shape[0]
    _check_nonfinite(x, n - 1, "geometric_median")
    ok = finite_rows(x)
    xs = jnp.where(ok[:, None], x, 0.0)
    z = median(jnp.where(ok[:, None], x, jnp.inf)) if init is None else jnp.asarray(init, x.dtype)
    z = jnp.where(jnp.isfinite(z), z, 0.0)

    def body(z, _):
        dist = jnp.linalg.norm(xs - z, axis=1)
        w = jnp.where(ok, 1.0 / jnp.maximum(nu, dist), 0.0)
        return (w[:, None] * xs).sum(0) / w.sum(), None

    z, _ = jax.lax.scan(body, z, None, length=iters)
    return z


def _nearest_weights(d2_row: jax.Array, n: int, f: int, dtype: Any) -> jax.Array:
    order = jnp.argsort(d2_row, stable=True)
    return jnp.zeros((n,), dtype).at[order[: n - f]].set(1.0)


def nnm(x: jax.Array, f: int) -> jax.Array:
    r"""Nearest-neighbour mixing (Allouah et al. 2023, Alg. 1): returns (n, d) with
    row i the mean of the n−f rows nearest to :math:`x_i` (itself included; ties:
    lowest index). Requires f < n."""
    x = _check_x(x)
    n = x.shape[0]
    f = _check_f(f, n, strict_half=False)
    _check_nonfinite(x, f, f"nnm with f={f}")
    d2 = pairwise_sq_distances(x)
    w = jax.vmap(lambda r: _nearest_weights(r, n, f, x.dtype))(d2)
    picked = jnp.where(jnp.all(jnp.isfinite(x), axis=1)[:, None], x, 0.0)
    out = (w @ picked) / (n - f)
    # a selected non-finite row must show up in the output, not vanish
    bad_selected = (w * (~finite_rows(x))[None, :]).sum(1) > 0
    return jnp.where(bad_selected[:, None], jnp.nan, out)


def nna(x: jax.Array, f: int, i: Any) -> jax.Array:
    r"""Nearest-neighbour averaging at node ``i`` (MoNNA, Farhadkhani et al. 2023,
    Eq. 3): the mean of the n−f rows of ``x`` nearest to ``x[i]`` (``x[i]``
    included; ties: lowest index). Requires f < n and 0 <= i < n (eagerly)."""
    x = _check_x(x)
    n = x.shape[0]
    f = _check_f(f, n, strict_half=False)
    ic = _concrete(i)
    if ic is not None:
        if ic.ndim != 0 or not np.issubdtype(ic.dtype, np.integer):
            raise ValueError(f"i must be an integer index, got {i!r}")
        if not 0 <= int(ic) < n:
            raise ValueError(f"i must lie in [0, {n}) (the number of vectors), got {int(ic)}")
    _check_nonfinite(x, f, f"nna with f={f}")
    ok = finite_rows(x)
    xi = jnp.where(ok[i], x[i], 0.0)
    xs = jnp.where(ok[:, None], x, 0.0)
    d2 = jnp.sum((xs - xi) ** 2, axis=1)
    d2 = jnp.where(ok & ok[i], d2, jnp.inf).at[i].set(0.0)
    w = _nearest_weights(d2, n, f, x.dtype)
    return _select_mean(x, w)


def centered_clipping(
    x: jax.Array, *, center: jax.Array | None = None, tau: float = 1.0, iters: int = 1
) -> jax.Array:
    r"""Centered clipping (Karimireddy et al. 2021, Eq. 4), ``iters`` = L rounds:

    .. math::

        v \leftarrow v + \frac1n \sum_i (x_i - v)\,\min\!\Big(1, \frac{\tau}{\|x_i - v\|}\Big),

    starting from ``center`` (default 0; pass the previous aggregate, as in the
    paper, or a momentum). Non-finite rows contribute 0.
    """
    x = _check_x(x)
    check_positive(tau, "tau")
    iters = check_int(iters, "iters", minimum=0)
    n = x.shape[0]
    _check_nonfinite(x, n, "centered_clipping")
    ok = finite_rows(x)
    xs = jnp.where(ok[:, None], x, 0.0)
    v = jnp.zeros(x.shape[1], x.dtype) if center is None else jnp.asarray(center, x.dtype)

    def body(v, _):
        diff = xs - v
        norm = jnp.linalg.norm(diff, axis=1)
        scale = jnp.where(ok, jnp.minimum(1.0, tau / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)), 0.0)
        return v + (scale[:, None] * diff).sum(0) / n, None

    v, _ = jax.lax.scan(body, v, None, length=iters)
    return v

