r"""MUD-HoG: detect malicious and unreliable clients from long/short histories.

Gupta, Luo, Ngo, Das, "Long-Short History of Gradients is All You Need:
Detecting Malicious and Unreliable Clients in Federated Learning", ESORICS 2022
(Section 4, Algorithm 1); our account: ``docs/papers/mudhog-detection.md``.

Server-side, per round t (from 1) with the clients' model changes
:math:`\Delta_i^t` (n, d):

.. math::

    \text{long}_i = \sum_{s \le t} \Delta_i^s, \qquad
    \text{short}_i = \frac{1}{\min(t, w)} \sum_{s=t-w+1}^{t} \Delta_i^s \quad (w = 3),

and from round ``start_round`` (3) on, among the clients not yet flagged:

1. **sign flipping**: :math:`\cos(\text{short}_i, \mathrm{med}) < 0`, with med the
   coordinate-wise median short HoG of the unflagged clients;
2. **additive noise**: DBSCAN on the short HoGs of the rest; the largest cluster is
   "normal"; the distances :math:`\|\text{short}_i - \mathrm{med}_{\text{normal}}\|`
   are split at their largest gap; a client is a suspect if it is above the gap
   and outside the normal cluster;
3. **targeted label / multi-label flipping**: k-means (K = 2) on the long HoGs of
   the rest (optionally unit-normalised, ``normalize_long``); the minority cluster is suspect when the two centroids are separated:
   :math:`\cos(c_1, c_2) <` ``targeted_cos`` (a guard; the paper's text does not
   give one, without it an honest minority is flagged every round);
4. **unreliable**: the cosines :math:`\cos(\text{short}_i, \mathrm{med})` of the rest
   are split at their largest gap; the lower group is suspect when the gap is at
   least ``unreliable_gap`` (guard, as in 3).

A suspect is *confirmed* (flagged for good) after ``delays`` consecutive suspect
rounds: 2 for sign flipping and noise, 4 for targeted (the authors' code); the
unreliable delay is our choice, default 4 (``docs/papers/mudhog-detection.md#deviations-from-the-paper-and-why``). The server aggregates the
unflagged clients (:func:`aggregate`).

All of it is jnp (DBSCAN, 2-means and the largest-gap split are small masked
implementations here, tested against scikit-learn), so a whole federated round —
local training, detection, aggregation — jits into ``lgrad.train.run_loop``.
Classes: 0 = unflagged, 1 = sign flip, 2 = additive noise, 3 = targeted label
flip, 4 = unreliable (:data:`CLASSES`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lgrad._validation import check_int, check_positive
from lgrad.federated import Aggregator

__all__ = [
    "CLASSES",
    "MudHogState",
    "init",
    "update",
    "aggregate",
    "dbscan",
    "kmeans2",
    "largest_gap_split",
    "precision_recall",
    "aggregator",
]

CLASSES = ("benign", "sign_flip", "additive_noise", "label_flip", "unreliable")


class MudHogState(NamedTuple):
    round: jax.Array  # int32 scalar: rounds seen
    long: jax.Array  # (n, d) sum of all Delta
    recent: jax.Array  # (w, n, d) ring buffer of the last w Delta
    streak: jax.Array  # (n, 4) int32 consecutive suspect rounds per class
    flags: jax.Array  # (n,) int32 confirmed class (0 = none)


# ----------------------------------------------------------------------------- building blocks
def _masked_median(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.nan_to_num(jnp.nanmedian(jnp.where(mask[:, None], x, jnp.nan), axis=0))


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    eps = jnp.finfo(a.dtype).tiny
    return (a @ b) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b), eps)


def _sqdist(x: jax.Array) -> jax.Array:
    sq = jnp.sum(x * x, axis=1)
    return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def dbscan(x: jax.Array, eps: float, min_samples: int = 3, mask: jax.Array | None = None) -> jax.Array:
    """DBSCAN labels (n,): -1 = noise (or masked out), else the smallest index of a
    core point in the cluster. Neighbourhoods include the point itself (as
    scikit-learn); a border point joins the cluster of its nearest core point
    (scikit-learn: of the first one that reaches it)."""
    n = x.shape[0]
    mask = jnp.ones((n,), bool) if mask is None else mask
    d2 = _sqdist(x)
    adj = (d2 <= eps**2) & mask[:, None] & mask[None, :]
    core = mask & (adj.sum(1) >= min_samples)
    reach = adj & core[:, None] & core[None, :]
    reach = reach | jnp.diag(core)
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2)))))):
        reach = (reach.astype(jnp.float32) @ reach.astype(jnp.float32)) > 0
    idx = jnp.arange(n)
    core_label = jnp.where(core, jnp.min(jnp.where(reach, idx[None, :], n), axis=1), n)
    # border points: nearest core neighbour within eps
    dcore = jnp.where(adj & core[None, :], d2, jnp.inf)
    nearest = jnp.argmin(dcore, axis=1)
    has_core = jnp.isfinite(jnp.min(dcore, axis=1))
    label = jnp.where(core, core_label, jnp.where(has_core, core_label[nearest], n))
    return jnp.where(mask & (label < n), label, -1)


def kmeans2(x: jax.Array, mask: jax.Array | None = None, iters: int = 20) -> tuple[jax.Array, jax.Array]:
    """2-means (Lloyd) on the masked rows, deterministic farthest-point start (the
    row farthest from the mean, then the row farthest from it). Returns labels
    (n,) in {0, 1} (-1 masked out) and the (2, d) centroids."""
    n = x.shape[0]
    mask = jnp.ones((n,), bool) if mask is None else mask
    w = mask.astype(x.dtype)
    mu = (w[:, None] * x).sum(0) / jnp.maximum(w.sum(), 1.0)
    d_mu = jnp.where(mask, jnp.sum((x - mu) ** 2, 1), -jnp.inf)
    c0 = x[jnp.argmax(d_mu)]
    d_c0 = jnp.where(mask, jnp.sum((x - c0) ** 2, 1), -jnp.inf)
    c1 = x[jnp.argmax(d_c0)]
    cent = jnp.stack([c0, c1])

    def body(cent, _):
        d = jnp.sum((x[:, None, :] - cent[None]) ** 2, -1)
        lab = jnp.argmin(d, axis=1)
        oh = jax.nn.one_hot(lab, 2, dtype=x.dtype) * w[:, None]
        cnt = oh.sum(0)
        new = (oh.T @ x) / jnp.maximum(cnt, 1.0)[:, None]
        return jnp.where((cnt > 0)[:, None], new, cent), None

    cent, _ = jax.lax.scan(body, cent, None, length=iters)
    lab = jnp.argmin(jnp.sum((x[:, None, :] - cent[None]) ** 2, -1), axis=1)
    return jnp.where(mask, lab, -1), cent


def largest_gap_split(v: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Split the masked values at their largest consecutive gap. Returns
    ``(high, gap)``: ``high`` (n,) bool marks masked values above the gap, ``gap``
    its size (0 when fewer than 2 masked values)."""
    n = v.shape[0]
    mask = jnp.ones((n,), bool) if mask is None else mask
    s = jnp.sort(jnp.where(mask, v, jnp.inf))
    m = mask.sum()
    gaps = jnp.where(jnp.arange(n - 1) < m - 1, s[1:] - s[:-1], -jnp.inf) if n > 1 else jnp.zeros((0,))
    if n < 2:
        return jnp.zeros((n,), bool), jnp.zeros((), v.dtype)
    k = jnp.argmax(gaps)
    gap = jnp.maximum(gaps[k], 0.0)
    thr = s[k]
    return mask & (v > thr) & (m >= 2), jnp.where(m >= 2, gap, 0.0)


# ----------------------------------------------------------------------------- detector
def init(n_clients: int, dim: int, *, window: int = 3, dtype=jnp.float32) -> MudHogState:
    """Empty histories for ``n_clients`` clients with ``dim``-dimensional updates."""
    n = check_int(n_clients, "n_clients", minimum=2)
    d = check_int(dim, "dim", minimum=1)
    w = check_int(window, "window", minimum=1)
    return MudHogState(
        jnp.zeros((), jnp.int32),
        jnp.zeros((n, d), dtype),
        jnp.zeros((w, n, d), dtype),
        jnp.zeros((n, 4), jnp.int32),
        jnp.zeros((n,), jnp.int32),
    )


def update(
    state: MudHogState,
    deltas: jax.Array,
    *,
    start_round: int = 3,
    delays: tuple[int, int, int, int] = (2, 2, 4, 4),
    dbscan_eps: float = 1.0,
    noise_ratio: float = 2.0,
    dbscan_min_samples: int = 3,
    targeted_cos: float = 0.8,
    unreliable_gap: float = 0.1,
    normalize_long: bool = False,
) -> tuple[MudHogState, jax.Array]:
    """One round: fold ``deltas`` (n, d) into the histories, run the four stages
    and the confirmation counters. Returns the new state and the (n,) suspect
    class of this round (0 = none). ``dbscan_eps`` is relative: the radius is
    ``dbscan_eps`` times the median pairwise distance of the candidates' short
    HoGs. ``noise_ratio``: the largest gap of stage 2 is taken on log-distances and
    must be a factor >= ``noise_ratio`` (guard). ``normalize_long``: k-means on
    unit-normalised long HoGs (off by default: on MNIST-5k at alpha = 10 it merged
    the label flippers with the honest clients)."""
    if len(delays) != 4:
        raise ValueError(f"delays needs 4 entries (sign, noise, targeted, unreliable), got {delays!r}")
    check_positive(dbscan_eps, "dbscan_eps")
    deltas = jnp.asarray(deltas, state.long.dtype)
    if deltas.shape != state.long.shape:
        raise ValueError(f"deltas must have shape {state.long.shape}, got {deltas.shape}")
    w = state.recent.shape[0]
    t = state.round + 1
    recent = state.recent.at[state.round % w].set(deltas)
    long = state.long + deltas
    short = recent.sum(0) / jnp.minimum(t, w).astype(deltas.dtype)
    active = t >= start_round

    cand = state.flags == 0
    med = _masked_median(short, cand)
    cos = _cos(short, med)
    sign_s = cand & (cos < 0)

    c2 = cand & ~sign_s
    pair = jnp.sqrt(_sqdist(short))
    off = c2[:, None] & c2[None, :] & ~jnp.eye(short.shape[0], dtype=bool)
    scale = jnp.nan_to_num(jnp.nanmedian(jnp.where(off, pair, jnp.nan)))
    lab = dbscan(short, dbscan_eps * jnp.maximum(scale, 1e-30), dbscan_min_samples, c2)
    n = short.shape[0]
    counts = jnp.zeros((n + 1,), jnp.int32).at[jnp.where(lab >= 0, lab, n)].add(1)[:n]
    normal = jnp.argmax(counts)
    in_normal = (lab == normal) & (counts[normal] > 0)
    med_n = _masked_median(short, in_normal)
    dist = jnp.linalg.norm(short - med_n, axis=1)
    high, gap = largest_gap_split(jnp.log(jnp.maximum(dist, 1e-30)), c2)
    noise_s = c2 & high & (lab == -1) & in_normal.any() & (gap >= jnp.log(noise_ratio))

    c3 = c2 & ~noise_s
    lk = long / jnp.maximum(jnp.linalg.norm(long, axis=1, keepdims=True), 1e-30) if normalize_long else long
    klab, cent = kmeans2(lk, c3)
    n0, n1 = jnp.sum(klab == 0), jnp.sum(klab == 1)
    minority = jnp.where(n0 <= n1, 0, 1)
    separated = _cos(cent[0], cent[1]) < targeted_cos
    label_s = c3 & (klab == minority) & separated & (jnp.minimum(n0, n1) < jnp.maximum(n0, n1))

    c4 = c3 & ~label_s
    med4 = _masked_median(short, c4)
    cos4 = _cos(short, med4)
    high4, gap4 = largest_gap_split(cos4, c4)
    unrel_s = c4 & ~high4 & (gap4 >= unreliable_gap)

    sus = jnp.stack([sign_s, noise_s, label_s, unrel_s], axis=1) & active
    streak = jnp.where(sus, state.streak + 1, 0)
    confirmed = streak >= jnp.asarray(delays, jnp.int32)[None, :]
    new_cls = jnp.where(confirmed.any(1), jnp.argmax(confirmed, axis=1) + 1, 0)
    flags = jnp.where(state.flags == 0, new_cls, state.flags).astype(jnp.int32)
    suspect = jnp.where(sus.any(1), jnp.argmax(sus, axis=1) + 1, 0)
    return MudHogState(t.astype(jnp.int32), long, recent, streak, flags), suspect


def aggregate(deltas: jax.Array, flags: jax.Array) -> jax.Array:
    """Mean of the unflagged clients' deltas (all clients if every one is flagged)."""
    keep = flags == 0
    keep = jnp.where(keep.any(), keep, True).astype(deltas.dtype)
    return (keep[:, None] * deltas).sum(0) / keep.sum()


def precision_recall(flags: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Per flagged class (1..4): precision and recall of ``flags`` against ``truth``
    (precision is 0 when nothing was flagged as the class)."""
    flags, truth = np.asarray(flags), np.asarray(truth)
    out = {}
    for c in range(1, len(CLASSES)):
        tp = int(np.sum((flags == c) & (truth == c)))
        pred, real = int(np.sum(flags == c)), int(np.sum(truth == c))
        out[CLASSES[c]] = {
            "precision": tp / pred if pred else 0.0,
            "recall": tp / real if real else float("nan"),
            "flagged": pred,
            "true": real,
        }
    return out


def aggregator(*, window: int = 3, **detect: Any) -> Aggregator:
    """MUD-HoG as a stateful server :class:`lgrad.federated.Aggregator`: each round
    folds the clients' changes into the histories (:func:`update`, keyword options
    ``detect`` passed through) and returns the mean of the unflagged clients
    (:func:`aggregate`). Metrics: ``suspect`` (n,) this round's suspect classes and
    ``flags`` (n,) the confirmed ones. Needs every client in every round
    (``participation=1``): the histories are per client."""
    check_int(window, "window", minimum=1)
    if "delays" in detect and len(detect["delays"]) != 4:
        raise ValueError(f"delays needs 4 entries (sign, noise, targeted, unreliable), got {detect['delays']!r}")

    def init_fn(n_clients, dim, dtype):
        return init(n_clients, dim, window=window, dtype=dtype)

    def update_fn(state, x, weights, clients, key):
        del weights, key
        if x.shape[0] != state.long.shape[0]:
            raise ValueError(
                f"MUD-HoG needs every client each round: got {x.shape[0]} of {state.long.shape[0]} "
                "(use participation=1)"
            )
        state, suspect = update(state, x, **detect)
        return aggregate(x, state.flags), state, {"suspect": suspect, "flags": state.flags}

    return Aggregator(init_fn, update_fn)

