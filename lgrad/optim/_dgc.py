r"""Deep Gradient Compression (DGC) as composable, jit-compatible pieces.

Reference: Y. Lin, S. Han, H. Mao, Y. Wang, W. J. Dally, "Deep Gradient
Compression: Reducing the Communication Bandwidth for Distributed Training",
ICLR 2018 (arXiv:1712.01887): Algorithm 1 / Eqs. (4)-(7) (momentum correction
and local accumulation), Section 3.2 (local gradient clipping by
:math:`N^{-1/2}`), Section 3.3 (momentum factor masking, warm-up training) and
the top-k threshold estimated on a small sample of the entries (the paper's
system-performance discussion), refined by a bounded loop (see :func:`select_topk`).

The pieces (all plain functions on pytrees, per worker):

* :func:`clip_local_gradient` - global-norm clipping with the threshold scaled by
  :math:`n^{-1/2}` (Section 3.2);
* :func:`accumulate` - momentum correction + local accumulation, plain or Nesterov;
* :func:`select_topk` - static-size top-k selection of one flat tensor, either by the
  sampled-threshold estimate (default) or exactly with ``lax.top_k``;
* :func:`exchange` - all-gather of every worker's (values, indices) over the worker
  axis with :func:`lgrad.distributed.comm.all_gather_sparse`, scatter-add, divide by
  n (index bytes are counted);
* :func:`warmup_density` / :func:`warmup_phases` - the warm-up density schedule
  (the paper's by default, the authors' code schedule as an option);

and :func:`scale_by_dgc` / :func:`dgc`, the optax transforms that chain them.

Static shapes: the number of values a leaf sends is a Python integer fixed by
``density`` and the leaf's size, so a changing density (warm-up) means a new
transform per phase. The state does not depend on the density, so one state
flows through all phases (see :func:`warmup_phases` and the ``dgc-compression``
experiment).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_in_interval, check_learning_rate, check_positive, is_concrete_number
from lgrad.distributed import comm

__all__ = [
    "SparseMessage",
    "DGCState",
    "LocalStep",
    "clip_local_gradient",
    "accumulate",
    "select_topk",
    "leaf_budget",
    "local_step",
    "exchange",
    "warmup_density",
    "warmup_phases",
    "bookkeeping_error",
    "scale_by_dgc",
    "dgc",
]

_THRESHOLDS = ("sampled", "exact")
_SCHEDULES = ("paper", "code")


# ----------------------------------------------------------------------------- selection
class SparseMessage(NamedTuple):
    """What one worker sends for one flat tensor (static size ``capacity``).

    Slots past ``count`` are padding: value 0 and index == tensor size (dropped by
    every scatter)."""

    values: jax.Array  # (capacity,)
    indices: jax.Array  # (capacity,) int32
    count: jax.Array  # int32: number of real entries sent
    estimated: jax.Array  # int32: entries over the threshold after the refinement loop


def leaf_budget(size: int, density: float, *, max_send_factor: float = 1.3, threshold: str = "sampled") -> tuple[int, int]:
    """``(k, capacity)`` for a tensor of ``size`` elements: ``k = round(density * size)``
    and the static message size (``max(k, floor(max_send_factor * k))`` for the sampled
    threshold, ``k`` for the exact one). Raises ``ValueError`` when k rounds to 0."""
    k = int(round(float(density) * int(size)))
    if k == 0:
        raise ValueError(
            f"density={density!r} gives k = round(density * {size}) = 0 selected entries for a tensor of "
            f"{size} elements; raise density or set min_compress_size > {size} to send such tensors dense"
        )
    k = min(k, int(size))
    if threshold == "exact":
        return k, k
    return k, min(int(size), max(k, int(math.floor(max_send_factor * k + 1e-9))))


def select_topk(
    x: jax.Array,
    k: int,
    *,
    threshold: str = "sampled",
    key: jax.Array | None = None,
    sample_fraction: float = 0.01,
    min_samples: int = 1000,
    max_send_factor: float = 1.3,
    low_factor: float = 0.8,
    max_tries: int = 10,
) -> SparseMessage:
    r"""Select about the ``k`` largest-magnitude entries of a flat tensor ``x``.

    ``threshold="exact"``: ``lax.top_k(|x|, k)``; exactly k entries are sent.

    ``threshold="sampled"`` (Lin et al. 2018, threshold from a sample): draw
    :math:`s = \max(\lceil \text{sample\_fraction}\cdot N\rceil, \min(N,
    \text{min\_samples}))` entries uniformly (with replacement); with
    :math:`r = \lceil s\,k/N\rceil`, the sampled magnitudes of ranks
    :math:`\mathrm{round}(f r)`, :math:`f \in \{0.7, 0.9, 1.1, 1.4, 1.8\}`, are five
    candidate thresholds, all counted in one pass over ``x``. The candidate whose count
    :math:`c` lies in :math:`[\text{low\_factor}\cdot k, \text{max\_send\_factor}\cdot
    k]` is the threshold (if several do, the one nearest
    :math:`\sqrt{\text{low\_factor}\cdot\text{max\_send\_factor}}\,k` in
    :math:`\log(1+c)`). If none does (about 5% of draws at the paper's 1%
    sample and density 0.1%), refine from the nearest: while :math:`c` is too small and
    no higher threshold has given too many, lower it by ``low_factor`` (at most
    ``max_tries`` times); while it is too large and nothing is bracketed, raise it
    towards the sample's largest magnitude; once bracketed, regula falsi on
    :math:`\log(1 + c)` (at most 40 steps; usually one). Every
    entry over the final threshold is sent, so whatever is sent is at least as large
    as everything kept; only when ties leave no threshold in range (e.g. many equal
    magnitudes) are the first ``cap`` entries over it, in index order, sent. No
    ``lax.top_k`` of ``x``: one counting pass over it, a compaction, and a further pass
    per refinement step (usually none; the loop is skipped by a ``lax.cond``). The
    message has the static size ``max(k, floor(max_send_factor * k))``.

    The paper's own rule refines one sampled threshold (its code: exact top-k among the
    candidates when more than 1.3k pass, lower by 0.8 when fewer than 0.8k do); the
    five candidates only make a refinement pass rare (docs/papers/dgc-compression.md).
    """
    if threshold not in _THRESHOLDS:
        raise ValueError(f"threshold must be one of {_THRESHOLDS}, got {threshold!r}")
    x = jnp.ravel(x)
    if threshold == "exact":
        _, idx = jax.lax.top_k(jnp.abs(x), k)
        idx = idx.astype(jnp.int32)
        kk = jnp.asarray(k, jnp.int32)
        return SparseMessage(x[idx], idx, kk, kk)
    msg, _ = _select_sampled(x, k, key=key, sample_fraction=sample_fraction, min_samples=min_samples,
                             max_send_factor=max_send_factor, low_factor=low_factor, max_tries=max_tries)
    return msg


def _select_sampled(x, k, *, key, sample_fraction, min_samples, max_send_factor, low_factor, max_tries):
    """:func:`select_topk`'s sampled path; also returns the final threshold (from which,
    with the indices, :func:`_sent_mask` rebuilds the sent set without a scatter)."""
    n = x.shape[0]
    mag = jnp.abs(x)
    _, cap = leaf_budget(n, k / n, max_send_factor=max_send_factor, threshold="sampled")
    cap = max(cap, k)
    if key is None:
        key = jax.random.PRNGKey(0)
    s, r = _sample_plan(n, k, sample_fraction, min_samples)
    sample = mag[jax.random.randint(key, (s,), 0, n)]
    thrs = _order_statistics(sample, _candidate_ranks(s, r))  # descending
    counts = _block_counts_packed(mag, thrs)  # one pass for all candidates
    hint = (jnp.max(sample), jnp.asarray(n // (s + 1), jnp.int32))
    thr, counts, cnt = _refine(x, thrs, counts, int(math.ceil(low_factor * k)), cap, low_factor, max_tries, hint)
    idx = _compact_over(mag, thr, cap, counts)
    vals = jnp.take(x, idx, mode="fill", fill_value=0)
    return SparseMessage(vals, idx, jnp.minimum(cnt, cap), cnt), thr


def _sample_plan(n: int, k: int, sample_fraction: float, min_samples: int) -> tuple[int, int]:
    """``(s, r)``: how many entries the sampled threshold draws, ``max(ceil(sample_fraction
    n), min(n, min_samples))`` (at most ``n``), and the sample rank ``ceil(s k / n)`` that
    corresponds to the ``k``-th largest of the ``n``."""
    s = min(max(int(math.ceil(sample_fraction * n)), min(n, min_samples)), n)
    return s, min(s, max(1, int(math.ceil(s * k / n))))


# Sample ranks of the candidate thresholds, as multiples of r (rounded): the spacing that
# most often puts one count in [0.8 k, 1.3 k] (simulated, 2,000 draws of a 1% sample of
# 1M normal magnitudes at density 0.1%: 96%, against 57% for rank r alone).
_CANDIDATE_SPREAD = (0.7, 0.9, 1.1, 1.4, 1.8)


def _candidate_ranks(s: int, r: int) -> tuple[int, ...]:
    """Sample ranks of the candidate thresholds: ``round(f r)`` for ``f`` in
    ``_CANDIDATE_SPREAD`` (between 1 and ``s``; ascending, so the thresholds descend).
    The count over the ``j``-th largest of ``s`` sampled magnitudes is about ``N j / s``
    with a relative spread of about ``1 / sqrt(j)`` (32% at the paper's 1% sample and
    density 0.1%, r = 10), wider than the [0.8 k, 1.3 k] window; five nested
    candidates, counted in one pass, cover it."""
    return tuple(min(s, max(1, int(round(f * r)))) for f in _CANDIDATE_SPREAD)


def _refine(x, thrs, counts, lo, cap, low_factor, max_tries, hint):
    r"""Pick the threshold whose count lies in ``[lo, cap]``, moving it if none does
    (see :func:`select_topk`); returns ``(threshold, per-block counts at it, count)``.

    ``thrs``: the candidate thresholds in descending order, ``counts``: their per-block
    counts (one row each). Among the candidates in range, the one whose
    ``log(1 + count)`` is closest to :math:`\log(1 + \sqrt{lo \cdot cap})` is taken;
    if none is, the loop starts from the nearest ones: below the range with nothing
    bracketed, lower by ``low_factor`` (at most ``max_tries`` times); above it with no
    upper bracket, interpolate towards ``hint`` = (the sample's largest magnitude, its
    expected count ``N / (s + 1)``), or raise by ``1 / low_factor`` if that is not
    higher. Once bracketed by ``a`` (count ``ca > cap``) and ``b`` (count ``cb < lo``):
    regula falsi on ``log(1 + count)`` towards :math:`\sqrt{lo \cdot cap}`, the step
    kept inside the middle 90% of the bracket, at most ``_BRACKETED`` steps; if they run
    out below the range (ties: no threshold in range), ``a`` is used and its first
    ``cap`` entries are sent.

    The loop sits in a ``lax.cond`` that skips it when a candidate is in range, and
    ``|x|`` is computed inside that branch: a while loop's operand is materialised, and
    XLA hoists loop-invariant work out of a loop, so without the cond every call would
    write ``|x|`` once more (one pass; ~0.1 of a ``lax.top_k`` at 1M entries)."""
    target = jnp.log1p(jnp.asarray(math.sqrt(lo * cap), jnp.float32))

    log1p = lambda c: jnp.log1p(c.astype(jnp.float32))  # noqa: E731

    def toward(a, ca, b, cb):
        frac = (log1p(ca) - target) / (log1p(ca) - log1p(cb))
        return a + (b - a) * jnp.clip(frac, 0.05, 0.95).astype(a.dtype)

    def refine(x, init):
        mag = jnp.abs(x)

        def state(t, a, ca, b, cb, tries, steps, counts_a):
            counts = _block_counts(mag, t)
            return t, counts, _total(counts), a, ca, b, cb, tries, steps, counts_a

        def body(c):
            t, counts, cnt, a, ca, b, cb, tries, steps, counts_a = c
            many = cnt > cap
            a, ca, counts_a = jnp.where(many, t, a), jnp.where(many, cnt, ca), jnp.where(many, counts, counts_a)
            b, cb = jnp.where(many, b, t), jnp.where(many, cb, cnt)
            h, ch = hint
            up = jnp.where(h > t, toward(t, cnt, h, ch), t / low_factor)  # too many, no upper bracket yet
            bracketed = (a >= 0) & jnp.isfinite(b)
            t = jnp.where(bracketed, toward(a, ca, b, cb), jnp.where(many, up, t * low_factor))
            lowering = ~many & (a < 0)
            return state(t, a, ca, b, cb, tries + lowering.astype(tries.dtype),
                         steps + (~lowering).astype(steps.dtype), counts_a)

        return jax.lax.while_loop(cond, body, init)

    def cond(c):
        t, _, cnt, a, _, b, _, tries, steps, _ = c
        bracketed = (a >= 0) & jnp.isfinite(b)
        room = (steps < _BRACKETED) & (jnp.nextafter(a, b) < b)
        many = (cnt > cap) & jnp.where(bracketed, room, steps < _BRACKETED)
        few = (cnt < lo) & jnp.where(a < 0, tries < max_tries, room)
        return many | few

    init = _start(thrs, counts, lo, cap, target, x.dtype)
    t, counts, cnt, a, ca, _, _, _, _, counts_a = jax.lax.cond(cond(init), refine, lambda x, init: init, x, init)
    back = (cnt < lo) & (a >= 0)  # ran out below the range after having been above it: take a
    return jnp.where(back, a, t), jnp.where(back, counts_a, counts), jnp.where(back, ca, cnt)


def _start(thrs, counts, lo, cap, target, dtype):
    """:func:`_refine`'s loop state from the candidates (thresholds descending, so the
    counts ascend): the in-range candidate nearest the target count; else the nearest
    one below the range (lowering, or regula falsi if one is above) or above it."""
    cnts = _total(counts)
    over, under = cnts > cap, cnts < lo
    m = cnts.shape[0]
    score = jnp.where(~over & ~under, jnp.abs(jnp.log1p(cnts.astype(jnp.float32)) - target), jnp.inf)
    ia = jnp.argmax(over)  # over-full candidates are a suffix: the first is the nearest
    ib = m - 1 - jnp.argmax(under[::-1])  # under-full ones a prefix: the last is the nearest
    has_a, has_b = jnp.any(over), jnp.any(under)
    i0 = jnp.where(jnp.isfinite(jnp.min(score)), jnp.argmin(score), jnp.where(has_b, ib, ia))
    a = jnp.where(has_a & has_b, thrs[ia], jnp.asarray(-1, dtype))
    ca = jnp.where(has_a & has_b, cnts[ia], 0)
    b = jnp.where(has_b, thrs[ib], jnp.asarray(jnp.inf, dtype))
    cb = jnp.where(has_b, cnts[ib], 0)
    zero = jnp.zeros([], jnp.int32)
    return thrs[i0], counts[i0], cnts[i0], a, ca, b, cb, zero, zero, counts[ia]


_BRACKETED = 40  # most refinement steps once the threshold has been too low


def _sent_mask(mag: jax.Array, thr: jax.Array, idx: jax.Array) -> jax.Array:
    """Boolean mask of the entries :func:`_compact_over` sent at ``thr`` (``idx``: the first
    ``cap`` entries with ``mag >= thr`` in index order, padded with ``n``), element-wise and
    without a scatter: over the threshold and not after the last index sent."""
    n = mag.shape[0]
    cut = jnp.where(idx[-1] < n, idx[-1], n)  # every slot used: entries after the last one sent stay
    return (mag >= thr) & (jnp.arange(mag.shape[0], dtype=jnp.int32) <= cut)


def _order_statistics(v: jax.Array, ranks: tuple[int, ...]) -> jax.Array:
    """The ``ranks``-th largest entries of the non-negative vector ``v`` (exact, either
    way): ``lax.top_k`` up to the largest rank when that is at most ``len(v) / 8``
    (XLA:CPU, 10k entries: 20 us for rank 18 against 400 us of bisection; the top-k cost
    grows with the rank), else :func:`_kth_largest`'s bisection (the warm-up's high
    densities: rank 1,125 of 10k costs 250 us by top-k, 390 us by bisection)."""
    top = max(ranks)
    if 8 * top <= v.shape[0]:
        # The barrier keeps XLA from rewriting "top-k, then pick an entry" into a full
        # sort of ``v`` (1.8 ms instead of 20 us for 10k entries on XLA:CPU).
        return jax.lax.optimization_barrier(jax.lax.top_k(v, top)[0])[np.asarray(ranks) - 1]
    return _kth_largest(v, ranks)


def _kth_largest(v: jax.Array, r: int | tuple[int, ...]) -> jax.Array:
    """The ``r``-th largest entry of the non-negative vector ``v`` (``lax.top_k(v, r)[0][-1]``
    exactly; a tuple of ranks gives one value per rank), by bisection on the float's bit
    pattern (monotone for non-negative floats): ``bits`` iterations of one
    compare-and-count pass over ``v`` per rank; its cost does not grow with the rank
    (see :func:`_order_statistics`)."""
    wide = v.dtype == jnp.float64
    ft, it = (jnp.float64, jnp.int64) if wide else (jnp.float32, jnp.int32)
    bits = jax.lax.bitcast_convert_type(v.astype(ft), it)
    ranks = jnp.asarray(r, jnp.int32)  # () or (m,)

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits >= mid[..., None], axis=-1, dtype=jnp.int32) >= ranks
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    top = jnp.max(bits) + 1  # count(>= 0) >= r > count(>= top)
    lo0, hi0 = jnp.zeros(ranks.shape, it), jnp.full(ranks.shape, top, it)
    lo, _ = jax.lax.fori_loop(0, 64 if wide else 32, body, (lo0, hi0))
    return jax.lax.bitcast_convert_type(lo, ft).astype(v.dtype)


# Entries per block of the blocked count and compaction. On XLA:CPU (jaxlib 0.10, 1M
# float32) a (n/32, 32) row count costs one element-wise pass and a (n/128, 128) one
# about 1.7 passes, and the (cap, _BLOCK) gather of the compaction shrinks with it.
_BLOCK = 32


def _total(counts: jax.Array) -> jax.Array:
    """The sum of :func:`_block_counts`. The barrier keeps XLA from fusing this sum with
    the per-block sums into one full reduction over the tensor, which XLA:CPU runs about
    3x slower than the per-block counts themselves (1M entries: 0.44 vs 0.15 of a
    ``lax.top_k``; see the ``dgc-breakdown`` rows of ``lgrad bench``)."""
    return jnp.sum(jax.lax.optimization_barrier(counts), axis=-1, dtype=jnp.int32)


def _block_sums(flags: jax.Array) -> jax.Array:
    """Per block of ``_BLOCK`` consecutive entries (the last one possibly shorter): the
    int32 sum of ``flags`` (one pass)."""
    nb, tail = divmod(flags.shape[0], _BLOCK)
    sums = jnp.sum(flags[: nb * _BLOCK].reshape(nb, _BLOCK), axis=1, dtype=jnp.int32)
    if tail:
        sums = jnp.concatenate([sums, jnp.sum(flags[nb * _BLOCK:], dtype=jnp.int32)[None]])
    return sums


def _block_counts(mag: jax.Array, thr: jax.Array) -> jax.Array:
    """Per block of ``_BLOCK`` consecutive entries: how many have ``mag >= thr`` (one
    pass; their sum is the total count)."""
    return _block_sums(mag >= thr)


_FIELD = 6  # bits per packed count: a block's count (<= _BLOCK = 32) fits, five fit in an int32


def _block_counts_packed(mag: jax.Array, thrs: jax.Array) -> jax.Array:
    """:func:`_block_counts` at up to five thresholds in one pass: each entry adds
    ``sum_j [mag >= thr_j] << (6 j)`` to its block's int32 sum, unpacked afterwards
    into one row of counts per threshold."""
    m = thrs.shape[0]
    assert m * _FIELD <= 31 and _BLOCK < 2**_FIELD
    shifts = jnp.arange(m, dtype=jnp.int32) * _FIELD
    packed = _block_sums(jnp.sum((mag[:, None] >= thrs[None, :]).astype(jnp.int32) << shifts, axis=1))
    return (packed[None, :] >> shifts[:, None]) & (2**_FIELD - 1)


def _compact_over(mag: jax.Array, thr: jax.Array, cap: int, counts: jax.Array | None = None) -> jax.Array:
    """Indices of the entries with ``mag >= thr`` in ascending order, padded with ``n``
    to ``cap`` (entries past the first ``cap`` are dropped; callers ensure at most
    ``cap`` pass).

    One pass over the tensor (none when ``counts``, :func:`_block_counts` at ``thr``, is
    given): per block of ``_BLOCK`` entries the number that pass;
    their prefix sum (n / _BLOCK long) locates, for each output slot, its block
    (``searchsorted``) and its rank inside the block, resolved on a ``(cap, _BLOCK)``
    gather. No n-long prefix sum and no n-update scatter (the costs of
    ``jnp.nonzero(size=...)`` on XLA:CPU); same indices in the same order.

    At high density (``cap * _BLOCK > 2 n``, e.g. the warm-up densities 25% or 6.25%)
    the ``(cap, _BLOCK)`` gather would read the tensor twice over or more, so the
    compaction is ``jnp.nonzero(size=cap)`` there: the same indices, in one n-long pass
    (1M entries on XLA:CPU: at 6.25%, 10.5 ms against 14.6 ms blocked; at 1.56%, 9.6 ms
    against 3.3 ms)."""
    n = mag.shape[0]
    if cap * _BLOCK > 2 * n:
        return jnp.nonzero(mag >= thr, size=cap, fill_value=n)[0].astype(jnp.int32)
    counts = _block_counts(mag, thr) if counts is None else counts
    cum = jnp.cumsum(counts, dtype=jnp.int32)  # inclusive
    slot = jnp.arange(cap, dtype=jnp.int32)
    block = jnp.minimum(jnp.searchsorted(cum, slot, side="right").astype(jnp.int32), counts.shape[0] - 1)
    rank = slot - (cum[block] - counts[block])  # 0-based rank inside the block
    pos = block[:, None] * _BLOCK + jnp.arange(_BLOCK, dtype=jnp.int32)[None, :]
    inside = pos < n
    sel = (jnp.take(mag, jnp.where(inside, pos, 0), mode="clip") >= thr) & inside
    before = jnp.cumsum(sel, axis=1, dtype=jnp.int32)  # selected entries up to each column
    col = jnp.sum(before <= rank[:, None], axis=1, dtype=jnp.int32)
    return jnp.where(slot < cum[-1], block * _BLOCK + col, n).astype(jnp.int32)


# ----------------------------------------------------------------------------- local pieces
def clip_local_gradient(grads: Any, max_norm: float, num_workers: int | jax.Array = 1) -> Any:
    r"""Clip a worker's gradient to global norm :math:`\text{max\_norm}\cdot n^{-1/2}`
    (Lin et al. 2018, Section 3.2): :math:`g \leftarrow g\,\min(1, c\,n^{-1/2}/\|g\|)`."""
    norm = optax.tree.norm(grads)
    limit = max_norm / jnp.sqrt(jnp.asarray(num_workers, jnp.float32))
    scale = jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: (g * scale.astype(g.dtype)).astype(g.dtype), grads)


def accumulate(grads: Any, u: Any, v: Any, momentum: float, *, nesterov: bool = False) -> tuple[Any, Any]:
    r"""Momentum correction and local accumulation (Lin et al. 2018, Eqs. 6-7).

    .. math::

        \text{plain:}\quad u \leftarrow m u + g,\quad v \leftarrow v + u; \qquad
        \text{Nesterov:}\quad u \leftarrow m (u + g),\quad v \leftarrow v + u + g.

    Returns the new ``(u, v)``."""
    if nesterov:
        u = jax.tree.map(lambda uu, g: momentum * (uu + g), u, grads)
        v = jax.tree.map(lambda vv, uu, g: vv + uu + g, v, u, grads)
    else:
        u = jax.tree.map(lambda uu, g: momentum * uu + g, u, grads)
        v = jax.tree.map(lambda vv, uu: vv + uu, v, u)
    return u, v


class LocalStep(NamedTuple):
    """Everything one worker's DGC step produces (before the exchange)."""

    u: Any  # momentum after masking
    v: Any  # residual (accumulation after masking)
    accumulated: Any  # v before masking (= sent + residual)
    messages: tuple  # one SparseMessage per compressed leaf (None for dense leaves)
    dense: tuple  # one flat array per dense leaf (None for compressed leaves)


def _plan(params: Any, density: float, min_compress_size: int, threshold: str, max_send_factor: float):
    """Per leaf: None (sent dense) or (k, capacity)."""
    plan = []
    for leaf in jax.tree.leaves(params):
        size = int(np.prod(np.shape(leaf), dtype=np.int64))
        if size < min_compress_size or float(density) >= 1.0:
            plan.append(None if size < min_compress_size else (size, size))
        else:
            plan.append(leaf_budget(size, density, max_send_factor=max_send_factor, threshold=threshold))
    return plan


def local_step(
    grads: Any,
    u: Any,
    v: Any,
    *,
    density: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    momentum_masking: bool = True,
    threshold: str = "sampled",
    sample_fraction: float = 0.01,
    max_send_factor: float = 1.3,
    min_compress_size: int = 0,
    key: jax.Array | None = None,
) -> LocalStep:
    """One worker's DGC step without the exchange: accumulate, select per leaf, mask.

    Leaves smaller than ``min_compress_size`` are not compressed (their accumulated
    value is sent dense and their residual reset). With ``density == 1`` every entry
    is sent.
    """
    u, acc = accumulate(grads, u, v, momentum, nesterov=nesterov)
    leaves, treedef = jax.tree.flatten(acc)
    u_leaves = treedef.flatten_up_to(u)
    plan = _plan(acc, density, min_compress_size, threshold, max_send_factor)
    if key is None:
        key = jax.random.PRNGKey(0)
    msgs, dense, new_u, new_v = [], [], [], []
    for i, (leaf, ul, budget) in enumerate(zip(leaves, u_leaves, plan)):
        flat = jnp.ravel(leaf)
        if budget is None:
            msgs.append(None)
            dense.append(flat)
            new_v.append(jnp.zeros_like(leaf))
            new_u.append(jnp.zeros_like(ul) if momentum_masking else ul)
            continue
        k, cap = budget
        if k >= flat.shape[0]:
            idx = jnp.arange(flat.shape[0], dtype=jnp.int32)
            kk = jnp.asarray(k, jnp.int32)
            msg = SparseMessage(flat, idx, kk, kk)
            sent = jnp.ones(leaf.shape, jnp.bool_)
        elif threshold == "exact":
            msg = select_topk(flat, k, threshold="exact")
            sent = jnp.zeros(flat.shape, jnp.bool_).at[msg.indices].set(True, mode="drop").reshape(leaf.shape)
        else:  # the sent set from the threshold, element-wise (fused with the masking)
            msg, thr = _select_sampled(
                flat, k, key=jax.random.fold_in(key, i), sample_fraction=sample_fraction, min_samples=1000,
                max_send_factor=max_send_factor, low_factor=0.8, max_tries=10,
            )
            sent = _sent_mask(jnp.abs(flat), thr, msg.indices).reshape(leaf.shape)
        msgs.append(msg)
        dense.append(None)
        new_v.append(jnp.where(sent, jnp.zeros_like(leaf), leaf))
        new_u.append(jnp.where(sent, jnp.zeros_like(ul), ul) if momentum_masking else ul)
    return LocalStep(
        u=jax.tree.unflatten(treedef, new_u),
        v=jax.tree.unflatten(treedef, new_v),
        accumulated=acc,
        messages=tuple(msgs),
        dense=tuple(dense),
    )


def exchange(step: LocalStep, like: Any, *, axis_name: str | None = comm.AXIS) -> Any:
    r"""Aggregate every worker's message: :math:`\frac1n \sum_w \text{scatter}(values_w, indices_w)`.

    Must run under the worker axis ``axis_name`` (inside
    :func:`lgrad.distributed.run_workers` / ``make_program``). All compressed leaves
    travel as *one* :func:`comm.all_gather_sparse` call (the leaves' values and
    int32 indices back to back; index bytes counted); dense leaves as
    one :func:`comm.pmean`. ``axis_name=None``: a single worker (no communication;
    the local sent tensor is returned). Returns a pytree shaped like ``like``.
    """
    leaves, treedef = jax.tree.flatten(like)
    sizes = [int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves]
    comp = [i for i, m in enumerate(step.messages) if m is not None]
    dens = [i for i, m in enumerate(step.messages) if m is None]
    out: list[Any] = [None] * len(leaves)
    ct = jnp.promote_types(jnp.result_type(*leaves), jnp.float32) if leaves else jnp.float32
    if comp:
        # One message: the leaves' static-size segments back to back; indices are local
        # to their leaf (padding == the leaf's size, dropped by the scatter).
        caps = [int(step.messages[i].values.shape[0]) for i in comp]
        offsets = np.cumsum([0] + caps)
        vals = jnp.concatenate([step.messages[i].values.astype(ct) for i in comp])
        idx = jnp.concatenate([step.messages[i].indices for i in comp]).astype(jnp.int32)
        if axis_name is None:
            g_vals, g_idx, n = vals[None], idx[None], 1
        else:
            g_vals, g_idx = comm.all_gather_sparse(vals, idx, axis_name)
            n = comm.axis_size(axis_name)
        for i, o, c in zip(comp, offsets[:-1], caps):
            seg_v = jnp.ravel(g_vals[:, int(o): int(o) + c]) / n
            seg_i = jnp.ravel(g_idx[:, int(o): int(o) + c])
            flat = jnp.zeros((sizes[i],), ct).at[seg_i].add(seg_v, mode="drop")
            out[i] = flat.reshape(np.shape(leaves[i])).astype(leaves[i].dtype)
    if dens:
        cat = jnp.concatenate([step.dense[i].astype(ct) for i in dens])
        if axis_name is not None:
            cat = comm.pmean(cat, axis_name)
        offs = np.cumsum([0] + [sizes[i] for i in dens])
        for i, o in zip(dens, offs[:-1]):
            out[i] = cat[int(o): int(o) + sizes[i]].reshape(np.shape(leaves[i])).astype(leaves[i].dtype)
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- warm-up
def warmup_density(epoch: int, *, final_density: float = 0.001, schedule: str = "paper", warmup_epochs: int = 5) -> float:
    r"""Density (fraction sent) in epoch ``epoch`` (0-based) of the warm-up.

    ``"paper"`` (Lin et al. 2018, Section 3.3): sparsity 75%, 93.75%, 98.4%, 99.6%,
    99.9%, i.e. :math:`\max(0.25^{e+1}, c)` (``warmup_epochs`` unused).
    ``"code"`` (the authors' released code): :math:`\max(c^{(e+1)/(W+1)}, c)` with
    :math:`W` = ``warmup_epochs``.
    """
    check_in_interval(final_density, "final_density", 0.0, 1.0, low_closed=False, high_closed=True)
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if schedule == "paper":
        return float(max(0.25 ** (epoch + 1), final_density))
    return float(max(final_density ** ((epoch + 1) / (warmup_epochs + 1)), final_density))


def warmup_phases(
    total_steps: int, steps_per_epoch: int, *, final_density: float = 0.001, schedule: str = "paper", warmup_epochs: int = 5
) -> list[tuple[int, float]]:
    """``[(n_steps, density), ...]`` covering ``total_steps``: one phase per warm-up
    epoch while the density still changes, then one final phase."""
    phases: list[tuple[int, float]] = []
    done, e = 0, 0
    while done < total_steps:
        d = warmup_density(e, final_density=final_density, schedule=schedule, warmup_epochs=warmup_epochs)
        n = steps_per_epoch if d > final_density else total_steps - done
        n = min(n, total_steps - done)
        if phases and phases[-1][1] == d:
            phases[-1] = (phases[-1][0] + n, d)
        else:
            phases.append((n, d))
        done += n
        e += 1
    return phases


# ----------------------------------------------------------------------------- optax transforms
# Arguments of :func:`dgc` / :func:`scale_by_dgc` that fix static shapes: under
# ``optax.inject_hyperparams`` each one passed as a number must be in ``static_args``.
_STATIC_ARGS = ("density", "sample_fraction", "max_send_factor", "min_compress_size")
_DEFAULT_SAMPLE_FRACTION = 0.01
_DEFAULT_MAX_SEND_FACTOR = 1.3


class DGCState(NamedTuple):
    """Per-worker state of :func:`scale_by_dgc` (independent of the density)."""

    count: chex.Array  # int32 steps taken
    momentum: optax.Updates  # u
    residual: optax.Updates  # v (the local accumulation not yet sent)
    sent: chex.Array  # int32 (num_leaves,): entries sent per leaf at the last step
    estimated: chex.Array  # int32 (num_leaves,): entries over the threshold at the last step
    bookkeeping: chex.Array  # float32: max |own sent + new residual - accumulated| at the last step (0: untracked)


def _static_number(value: Any, name: str, default: float) -> float:
    """``default`` for None; otherwise ``value``, which must be concrete (it fixes shapes)."""
    if value is None:
        return default
    if not is_concrete_number(value):
        raise ValueError(
            f"{name} must be a concrete Python number (it fixes static message sizes), got {value!r}; "
            f"with optax.inject_hyperparams pass static_args={_STATIC_ARGS!r}"
        )
    return value


def _resolve(density, momentum, clip_norm, sample_fraction, max_send_factor, min_compress_size, threshold):
    """Validate the arguments; return ``(sample_fraction, max_send_factor, min_compress_size)``."""
    if not is_concrete_number(density):
        raise ValueError(
            f"density must be a concrete Python number in (0, 1] (it fixes static message sizes), got {density!r}; "
            "with optax.inject_hyperparams pass static_args=('density',)"
        )
    check_in_interval(density, "density", 0.0, 1.0, low_closed=False, high_closed=True)
    check_in_interval(momentum, "momentum", 0.0, 1.0)
    if clip_norm is not None:
        check_positive(clip_norm, "clip_norm")
    sample_fraction = _static_number(sample_fraction, "sample_fraction", _DEFAULT_SAMPLE_FRACTION)
    check_in_interval(sample_fraction, "sample_fraction", 0.0, 1.0, low_closed=False, high_closed=True)
    max_send_factor = _static_number(max_send_factor, "max_send_factor", _DEFAULT_MAX_SEND_FACTOR)
    if not math.isfinite(float(max_send_factor)) or float(max_send_factor) < 1.0:
        raise ValueError(f"max_send_factor must be a finite number >= 1, got {max_send_factor!r}")
    min_compress_size = _static_number(min_compress_size, "min_compress_size", 0)
    if not isinstance(min_compress_size, (int, np.integer)) or isinstance(min_compress_size, bool) or min_compress_size < 0:
        raise ValueError(f"min_compress_size must be an integer >= 0, got {min_compress_size!r}")
    if threshold not in _THRESHOLDS:
        raise ValueError(f"threshold must be one of {_THRESHOLDS}, got {threshold!r}")
    return float(sample_fraction), float(max_send_factor), int(min_compress_size)


def bookkeeping_error(step: LocalStep, like: Any) -> jax.Array:
    r"""Largest :math:`|s_w + v' - (v + u')|` over every entry of every leaf (float32).

    :math:`s_w` is this worker's own sent tensor (its message scattered, no exchange),
    :math:`v'` the new residual and :math:`v + u'` the accumulation before masking:
    DGC neither loses nor duplicates gradient mass when this is 0 (to rounding)."""
    own = exchange(step, like, axis_name=None)
    errs = [
        jnp.max(jnp.abs(o.astype(jnp.float32) + r.astype(jnp.float32) - a.astype(jnp.float32)), initial=0.0)
        for o, r, a in zip(jax.tree.leaves(own), jax.tree.leaves(step.v), jax.tree.leaves(step.accumulated))
    ]
    return jnp.max(jnp.stack(errs), initial=0.0) if errs else jnp.zeros([], jnp.float32)


def scale_by_dgc(
    density: float = 0.001,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    momentum_masking: bool = True,
    clip_norm: float | None = None,
    threshold: str = "sampled",
    sample_fraction: float | None = None,
    max_send_factor: float | None = None,
    min_compress_size: int | None = None,
    seed: int = 0,
    track_bookkeeping: bool = False,
    axis_name: str | None = comm.AXIS,
) -> optax.GradientTransformation:
    r"""DGC's per-worker rule plus the exchange; returns the aggregated (positive) update.

    Per worker :math:`w`, per leaf (Lin et al. 2018, Algorithm 1 with Eqs. 6-7):

    .. math::

        g &\leftarrow g\,\min\!\big(1, c\,n^{-1/2}/\|g\|\big) \quad(\text{if clip\_norm}=c), \\
        u &\leftarrow m u + g, \qquad v \leftarrow v + u
           \qquad(\text{Nesterov: } u \leftarrow m(u+g),\ v \leftarrow v + u + g), \\
        S_w &= \text{top-}k(|v|) \ (\text{sampled threshold}), \qquad
        u_{S_w}, v_{S_w} \leftarrow 0 \ (\text{momentum factor masking}), \\
        G &= \tfrac1n \textstyle\sum_w \text{scatter}(v_{S_w}, S_w).

    ``G`` is returned; chain with ``optax.scale_by_learning_rate`` (see :func:`dgc`).

    **The update must run under the worker axis** ``axis_name`` (default
    ``"workers"``, :data:`lgrad.distributed.comm.AXIS`): inside
    :func:`lgrad.distributed.run_workers` or a program made by
    :func:`lgrad.distributed.make_program`, each worker holding its own state (the
    residual stays local). ``axis_name=None`` gives the single-worker rule (no
    exchange: ``G`` is the worker's own sent tensor).

    ``optax.inject_hyperparams``: ``density`` fixes static shapes, so pass
    ``static_args=("density",)``, plus ``"sample_fraction"``, ``"max_send_factor"``
    and ``"min_compress_size"`` when you set them ;
    ``momentum``, ``clip_norm`` and ``seed`` may be injected.

    Args:
      density: fraction of each leaf's entries sent, in (0, 1]; must be a concrete
        number (it fixes static shapes). ``round(density * size) == 0`` for a
        compressed leaf raises ``ValueError`` at ``init``.
      momentum: :math:`m \in [0, 1)`.
      nesterov: Nesterov momentum correction.
      momentum_masking: zero :math:`u` at sent entries (Section 3.3).
      clip_norm: local gradient clipping threshold before the :math:`n^{-1/2}` scale.
      threshold: ``"sampled"`` (default) or ``"exact"`` (``lax.top_k``).
      sample_fraction: fraction of entries sampled for the threshold estimate, in
        (0, 1]; None: 0.01.
      max_send_factor: the refinement's upper bound, >= 1; None: 1.3 (message
        capacity ``max(k, floor(1.3 k))`` values + int32 indices).
      min_compress_size: leaves with fewer entries are sent dense (with ``pmean``);
        None: 0.
      seed: seeds the threshold sampling (folded with the step and the worker index).
      track_bookkeeping: record in ``state.bookkeeping`` the largest
        :math:`|s_w + v' - (v + u')|` of the step (see :func:`bookkeeping_error`);
        off by default (it costs one scatter per compressed leaf).
      axis_name: the worker axis (default ``"workers"``), or None for a single worker.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from lgrad.distributed import run_workers
      >>> from lgrad.optim import dgc
      >>> tx = dgc(0.1, density=0.25)
      >>> params = {"w": jnp.ones((4, 8))}
      >>> state = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p] * 2), params))
      >>> grads = {"w": jnp.arange(64.0).reshape(2, 4, 8)}
      >>> upd, state = run_workers(tx.update, grads, state, n_workers=2)
      >>> upd["w"].shape  # one (identical) aggregated update per worker
      (2, 4, 8)
    """
    sample_fraction, max_send_factor, min_compress_size = _resolve(
        density, momentum, clip_norm, sample_fraction, max_send_factor, min_compress_size, threshold
    )

    def init_fn(params):
        _plan(params, density, min_compress_size, threshold, max_send_factor)  # validates k > 0
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        n_leaves = len(jax.tree.leaves(params))
        return DGCState(
            count=jnp.zeros([], jnp.int32),
            momentum=zeros(),
            residual=zeros(),
            sent=jnp.zeros((n_leaves,), jnp.int32),
            estimated=jnp.zeros((n_leaves,), jnp.int32),
            bookkeeping=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        grads = updates
        if clip_norm is not None:
            n = 1 if axis_name is None else comm.axis_size(axis_name)
            grads = clip_local_gradient(grads, clip_norm, n)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), state.count)
        if axis_name is not None:
            key = jax.random.fold_in(key, comm.axis_index(axis_name))
        step = local_step(
            grads, state.momentum, state.residual, density=density, momentum=momentum, nesterov=nesterov,
            momentum_masking=momentum_masking, threshold=threshold, sample_fraction=sample_fraction,
            max_send_factor=max_send_factor, min_compress_size=min_compress_size, key=key,
        )
        agg = exchange(step, updates, axis_name=axis_name)
        sizes = [int(np.prod(np.shape(x), dtype=np.int64)) for x in jax.tree.leaves(updates)]
        sent = jnp.stack([m.count if m is not None else jnp.asarray(s, jnp.int32) for m, s in zip(step.messages, sizes)])
        est = jnp.stack([m.estimated if m is not None else jnp.asarray(s, jnp.int32) for m, s in zip(step.messages, sizes)])
        book = bookkeeping_error(step, updates) if track_bookkeeping else jnp.zeros([], jnp.float32)
        return agg, DGCState(optax.safe_increment(state.count), step.u, step.v, sent, est, book)

    return optax.GradientTransformation(init_fn, update_fn)


def dgc(
    learning_rate: optax.ScalarOrSchedule,
    density: float = 0.001,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    momentum_masking: bool = True,
    clip_norm: float | None = None,
    threshold: str = "sampled",
    sample_fraction: float | None = None,
    max_send_factor: float | None = None,
    min_compress_size: int | None = None,
    seed: int = 0,
    track_bookkeeping: bool = False,
    axis_name: str | None = comm.AXIS,
) -> optax.GradientTransformation:
    r"""DGC distributed momentum SGD: :func:`scale_by_dgc` then :math:`-\eta`.

    .. math::  \theta \leftarrow \theta - \eta\, G_t

    with :math:`G_t` the aggregated sparse update of :func:`scale_by_dgc` (the
    momentum lives in the accumulation, Lin et al. 2018 Eq. 7). Every other argument
    is :func:`scale_by_dgc`'s. The update must run under the ``"workers"`` axis
    unless ``axis_name=None``. The state is ``(DGCState, <learning-rate state>)``.

    ``optax.inject_hyperparams(dgc, static_args=("density",))`` injects
    ``learning_rate``, ``momentum``, ``clip_norm`` and ``seed``; also name
    ``sample_fraction``, ``max_send_factor`` and ``min_compress_size`` in
    ``static_args`` when you set them (they fix static shapes).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from lgrad.optim import dgc
      >>> tx = dgc(0.1, density=0.5, axis_name=None)   # single worker, no exchange
      >>> state = tx.init({"w": jnp.zeros(4)})
      >>> upd, state = tx.update({"w": jnp.array([1.0, -3.0, 0.5, 2.0])}, state)
      >>> upd["w"]
      Array([-0. ,  0.3, -0. , -0.2], dtype=float32)
    """
    check_learning_rate(learning_rate)
    rule = scale_by_dgc(
        density, momentum=momentum, nesterov=nesterov, momentum_masking=momentum_masking, clip_norm=clip_norm,
        threshold=threshold, sample_fraction=sample_fraction, max_send_factor=max_send_factor,
        min_compress_size=min_compress_size, seed=seed, track_bookkeeping=track_bookkeeping, axis_name=axis_name,
    )
    return optax.chain(rule, optax.scale_by_learning_rate(learning_rate))
