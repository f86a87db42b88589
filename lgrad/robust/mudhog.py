r"""MUD-HoG: detect malicious and unreliable clients from long/short histories.

Gupta, Luo, Ngo, Das, "Long-Short History of Gradients is All You Need:
Detecting Malicious and Unreliable Clients in Federated Learning", ESORICS 2022
(Section 4, Algorithm 1); our account: ``docs/papers/mudhog-detection.md``.

Server-side, per round t (from 1) with the clients' model changes
:math:`\Delta_i^t` (n, d):

.. math::

    \text{long}_i = \sum_{s \le t} \Delta_i^s, \qquad
    \text{short}_i = \frac{1}{\min(t, w)} \sum_{s=t-w+1}^{t} \Delta_i^s \quad (w = 3),

and from round ``start_round`` (4: the authors' ``tao_0 = 3`` rounds counted from 0) on:

1. **sign flipping**: :math:`\cos(\text{short}_i, \mathrm{med}) < 0` (every client),
   med the coordinate-wise median short HoG of the clients not confirmed malicious;
2. **additive noise**: DBSCAN on the short HoGs of the rest; the largest group is
   "normal"; the others' distances :math:`\|\text{short}_i - \mathrm{med}_{\text{normal}}\|`
   are split at the midpoint of their largest gap; suspects lie above it and are
   DBSCAN noise;
3. **targeted label / multi-label flipping**: k-means (K = 2) on the long HoGs of
   the rest; the minority cluster is suspect;
4. **unreliable**: the cosines :math:`\cos(\text{short}_i, \mathrm{med})` of the
   clients not malicious are split at their largest gap; the lower group is suspect.

Decisions, as the authors' server (``server.py``: ``add_mal_id`` and the end of
``mud_hog``; ``delay`` = their ``delay_decision`` = 2): a counter per client grows
in every round it is a stage 1-3 suspect and is reset in a clean round; sign flip and
noise are confirmed at ``delay`` suspect rounds in a row, targeted at ``2 delay``;
two clean rounds in a row **revoke** every malicious flag; a confirmed noise client
that turns clean ``delay`` times becomes unreliable. Unreliable clients have a
**decrementing counter** (+1 when suspect, -1 otherwise, floor 0) and are flagged
while it is above ``delay`` (unflagged when it is back at 0). The server averages
every client except the confirmed malicious ones and this round's targeted and
noise suspects: **unreliable clients stay in the aggregate**.

Our guards are options, off by default (the authors' code has none; :data:`GUARDS`
holds the values we used before): ``noise_ratio``, ``targeted_cos``,
``unreliable_gap`` (``docs/papers/mudhog-detection.md``).

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
DETECT_OPTIONS = ("start_round", "delay", "dbscan_eps", "dbscan_min_samples", "noise_ratio", "targeted_cos",
                  "unreliable_gap", "normalize_long")
# our three guards (not in the authors' code): the values the experiment used before it followed the authors' server (docs/papers/mudhog-detection.md)
GUARDS = {"noise_ratio": 2.0, "targeted_cos": 0.8, "unreliable_gap": 0.1}


class MudHogState(NamedTuple):
    round: jax.Array  # int32 scalar: rounds seen
    long: jax.Array  # (n, d) sum of all Delta
    recent: jax.Array  # (w, n, d) ring buffer of the last w Delta
    pre: jax.Array  # (n,) int32 the authors' pre_mal_id: suspect rounds in a row
    count_unrel: jax.Array  # (n,) int32 the authors' count_unreliable (decrementing)
    sets: jax.Array  # (n, 4) bool membership: sign flip, additive noise, targeted, unreliable
    flags: jax.Array  # (n,) int32 class of the first set a client is in (0 = none)
    keep: jax.Array  # (n,) bool the clients this round's aggregate averages


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
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n, 4), bool),
        jnp.zeros((n,), jnp.int32),
        jnp.ones((n,), bool),
    )


def _separate(v: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The authors' ``find_separate_point``: masked values above the midpoint of their
    largest gap (with fewer than two values the point is 0). Returns ``(high, gap)``."""
    high, gap = largest_gap_split(v, mask)
    few = mask.sum() < 2
    return jnp.where(few, mask & (v > 0), high), gap


def _untargeted(short, cand, eps, min_samples, noise_ratio):
    """Stage 2 (additive noise): DBSCAN on the candidates' short HoGs; the largest
    group (DBSCAN noise counted as a group, as ``Counter(labels_)``) is normal; the
    others' distances to its median are split at their largest gap; suspects are
    above it and DBSCAN noise."""
    n = short.shape[0]
    pair = jnp.sqrt(_sqdist(short))
    off = cand[:, None] & cand[None, :] & ~jnp.eye(n, dtype=bool)
    scale = jnp.nan_to_num(jnp.nanmedian(jnp.where(off, pair, jnp.nan)))
    lab = dbscan(short, eps * jnp.maximum(scale, 1e-30), min_samples, cand)
    counts = jnp.zeros((n + 1,), jnp.int32).at[jnp.where(lab >= 0, lab, n)].add(cand.astype(jnp.int32))
    n_noise = counts[n]
    best = jnp.argmax(counts[:n])
    noise_is_normal = n_noise > counts[best]
    normal = cand & jnp.where(noise_is_normal, lab == -1, lab == best)
    med = _masked_median(short, normal)
    dist = jnp.linalg.norm(short - med, axis=1)
    sus = cand & ~normal
    high, _ = _separate(dist, sus)
    lo = jnp.max(jnp.where(sus & ~high, dist, 0.0))
    hi = jnp.min(jnp.where(sus & high, dist, jnp.inf))
    ratio_ok = hi >= noise_ratio * lo
    return sus & high & (lab == -1) & ratio_ok


def _targeted(long, cand, targeted_cos, normalize_long):
    """Stage 3: 2-means on the candidates' long HoGs; the minority cluster (ties:
    cluster 1, as ``find_minority_id``) is suspect (optional guard: only when the
    centroids' cosine is below ``targeted_cos``)."""
    lk = long / jnp.maximum(jnp.linalg.norm(long, axis=1, keepdims=True), 1e-30) if normalize_long else long
    klab, cent = kmeans2(lk, cand)
    n0, n1 = jnp.sum(klab == 0), jnp.sum(klab == 1)
    minority = jnp.where(n1 > n0, 0, 1)
    sus = cand & (klab == minority)
    if targeted_cos is not None:
        sus = sus & (_cos(cent[0], cent[1]) < targeted_cos) & (jnp.minimum(n0, n1) < jnp.maximum(n0, n1))
    return sus


def _confirm(state: MudHogState, flip, uatk, tatk, delay: int):
    """The authors' ``add_mal_id``: a suspect's counter ``pre`` grows by one; a
    non-suspect's is reset, and at a second clean round in a row its flags are
    revoked; confirmed at ``pre >= delay`` (sign, noise) or ``2 delay`` (targeted);
    an additive-noise client that turns clean ``delay`` times moves to unreliable."""
    sets, cu = state.sets, state.count_unrel
    sus = flip | uatk | tatk
    revoke = ~sus & (state.pre == 0)
    reset = ~sus & (state.pre > 0)
    pre = jnp.where(sus, state.pre + 1, 0)
    cu = jnp.where(reset & sets[:, 1], cu + 1, cu)
    migrate = reset & sets[:, 1] & (cu >= delay)
    sets = sets & ~revoke[:, None]
    sets = sets.at[:, 1].set(sets[:, 1] & ~migrate).at[:, 3].set(sets[:, 3] | migrate)
    sets = sets.at[:, 0].set(sets[:, 0] | (flip & (pre >= delay)))
    sets = sets.at[:, 1].set(sets[:, 1] | (uatk & (pre >= delay)))
    sets = sets.at[:, 2].set(sets[:, 2] | (tatk & (pre >= 2 * delay)))
    return pre, cu, sets


def _unreliable(short, cand, cu, rel, delay: int, unreliable_gap: float):
    """Stage 4: cosines to the candidates' median short HoG split at their largest
    gap; the lower group is suspect. The decrementing counter ``cu`` (+1 when
    suspect, -1 otherwise, floor 0) flags above ``delay`` and unflags at 0."""
    cos = _cos(short, _masked_median(short, cand))
    high, gap = _separate(cos, cand)
    urel = cand & ~high & (gap >= unreliable_gap)
    cu = jnp.where(urel, cu + 1, cu)
    rel = (rel | (urel & (cu > delay))) & ~((cu == 0) & rel)
    cu = jnp.where(~urel & (cu > 0), cu - 1, cu)
    return cu, rel


def update(
    state: MudHogState,
    deltas: jax.Array,
    *,
    start_round: int = 4,
    delay: int = 2,
    dbscan_eps: float = 1.0,
    dbscan_min_samples: int = 5,
    noise_ratio: float = 1.0,
    targeted_cos: float | None = None,
    unreliable_gap: float = 0.0,
    normalize_long: bool = False,
) -> tuple[MudHogState, jax.Array]:
    """One round of the authors' server (``server.py``, ``mud_hog``): fold ``deltas``
    (n, d) into the histories, run the four stages, the revocable confirmations and
    the unreliable counter. Returns the new state and the (n,) suspect class of this
    round (0 = none). ``dbscan_eps`` is relative: the radius is ``dbscan_eps`` times
    the median pairwise distance of the candidates' short HoGs. Guards (ours, off by
    default): ``noise_ratio`` > 1 asks the stage-2 split for a factor between the
    groups, ``targeted_cos`` a centroid cosine below it, ``unreliable_gap`` a minimum
    cosine gap. ``normalize_long``: k-means on unit-normalised long HoGs."""
    check_positive(dbscan_eps, "dbscan_eps")
    check_int(delay, "delay", minimum=1)
    deltas = jnp.asarray(deltas, state.long.dtype)
    if deltas.shape != state.long.shape:
        raise ValueError(f"deltas must have shape {state.long.shape}, got {deltas.shape}")
    w = state.recent.shape[0]
    t = state.round + 1
    recent = state.recent.at[state.round % w].set(deltas)
    long = state.long + deltas
    short = recent.sum(0) / jnp.minimum(t, w).astype(deltas.dtype)
    active = t >= start_round
    sets = state.sets
    mal = sets[:, :3].any(1)

    flip = _cos(short, _masked_median(short, ~mal)) < 0
    uatk = _untargeted(short, ~(flip | sets[:, 0]), dbscan_eps, dbscan_min_samples, noise_ratio)
    tatk = _targeted(long, ~(flip | sets[:, 0] | uatk | sets[:, 1]), targeted_cos, normalize_long)
    flip, uatk, tatk = flip & active, uatk & active, tatk & active
    pre, cu, new_sets = _confirm(state, flip, uatk, tatk, delay)
    cand4 = ~(flip | sets[:, 0] | new_sets[:, :3].any(1))
    cu4, rel = _unreliable(short, cand4, cu, new_sets[:, 3], delay, unreliable_gap)
    new_sets = new_sets.at[:, 3].set(rel)
    pre, cu = jnp.where(active, pre, state.pre), jnp.where(active, cu4, state.count_unrel)
    new_sets = jnp.where(active, new_sets, sets)
    keep = jnp.where(active, ~(new_sets[:, :3].any(1) | tatk | uatk), True)
    flags = jnp.where(new_sets.any(1), jnp.argmax(new_sets, axis=1) + 1, 0).astype(jnp.int32)
    sus = jnp.stack([flip, uatk, tatk, jnp.zeros_like(flip)], axis=1)
    suspect = jnp.where(sus.any(1), jnp.argmax(sus, axis=1) + 1, 0)
    return MudHogState(t.astype(jnp.int32), long, recent, pre, cu, new_sets, flags, keep), suspect


def aggregate(deltas: jax.Array, keep: jax.Array) -> jax.Array:
    """Mean of the kept clients' deltas (``keep`` (n,) bool, e.g. ``state.keep``;
    all clients if none is kept). The authors keep the unreliable clients."""
    keep = jnp.asarray(keep)
    if keep.dtype != jnp.bool_:
        raise ValueError(f"keep must be a boolean mask (e.g. state.keep), got dtype {keep.dtype}")
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
    ``detect`` passed through) and returns the mean of the clients the authors'
    server keeps (:func:`aggregate` of ``state.keep``: not confirmed malicious, not
    this round's targeted or additive-noise suspects; unreliable clients are kept).
    Metrics: ``suspect`` (n,) this round's suspect classes, ``flags`` (n,) the
    confirmed ones and ``keep`` (n,). Needs every client in every round
    (``participation=1``): the histories are per client."""
    check_int(window, "window", minimum=1)
    unknown = sorted(set(detect) - set(DETECT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown MUD-HoG option {unknown[0]!r}; allowed: {', '.join(DETECT_OPTIONS)}")

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
        metrics = {"suspect": suspect, "flags": state.flags, "keep": state.keep}
        return aggregate(x, state.keep), state, metrics

    return Aggregator(init_fn, update_fn)

