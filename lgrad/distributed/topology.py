"""Communication graphs, mixing matrices and gossip for decentralized methods.

Graphs are symmetric 0/1 adjacency matrices (``numpy``, no self loops):
:func:`complete`, :func:`ring`, :func:`torus` (2-D, wrap-around) and
:func:`erdos_renyi` (seeded, resampled until connected). :func:`metropolis_hastings`
turns a graph into a symmetric doubly stochastic mixing matrix

.. math::

    W_{ij} = \\frac{1}{1 + \\max(d_i, d_j)} \\; (i \\sim j), \\qquad
    W_{ii} = 1 - \\sum_{j \\ne i} W_{ij},

(Xiao & Boyd 2004; the choice used by Koloskova et al. 2020, Lian et al. 2017) and
:func:`spectral_gap` gives :math:`p = 1 - |\\lambda_2(W)|`, the quantity that sets how
fast gossip contracts the consensus distance (:math:`\\|X W - \\bar X\\|_F^2 \\le
(1 - p)^2 \\|X - \\bar X\\|_F^2` for symmetric W).

Gossip. :func:`gossip` is a per-worker function over the worker axis:
``x_i <- sum_j W_ij x_j``. It is expressed with one ``comm.ppermute`` per *round* of a
bipartite edge colouring of the graph's directed edges (each worker sends at most one
message and receives at most one per round; König's theorem gives exactly
``max_degree`` rounds). Bytes: a worker of degree d sends its full ``x`` to each of its
d neighbours, ``d * nbytes(x)`` per gossip step. The comm counter, which is one number
per traced step, records ``rounds * nbytes(x) = max_degree * nbytes(x)``: the busiest
worker's bytes, exact for regular graphs (complete, ring, torus); use
:func:`gossip_bytes` for each worker's exact count on irregular graphs (Erdős–Rényi).
``gossip(..., method="all_gather")`` instead gathers every worker's ``x`` and applies
its row of W (``nbytes(x)`` recorded per worker: each worker broadcasts once).

>>> import jax.numpy as jnp
>>> from lgrad.distributed import run_workers, topology
>>> W = topology.metropolis_hastings(topology.ring(8))
>>> x = jnp.arange(8.0)[:, None]
>>> y = run_workers(lambda xi: topology.gossip(xi, W), x, n_workers=8)   # y = W @ x
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lgrad.distributed import comm

__all__ = [
    "GossipPlan",
    "complete",
    "ring",
    "torus",
    "erdos_renyi",
    "is_connected",
    "metropolis_hastings",
    "check_mixing_matrix",
    "spectral_gap",
    "gossip_plan",
    "gossip",
    "gossip_bytes",
    "consensus_distance",
]


def _check_n(n: Any, name: str = "n", minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


# --- graphs ---------------------------------------------------------------------
def complete(n: int) -> np.ndarray:
    """Adjacency of the complete graph on ``n`` nodes."""
    n = _check_n(n)
    return (np.ones((n, n), np.int8) - np.eye(n, dtype=np.int8)).astype(np.int8)


def ring(n: int) -> np.ndarray:
    """Adjacency of the cycle 0-1-...-(n-1)-0 (n = 2: one edge; n = 1: no edge)."""
    n = _check_n(n)
    a = np.zeros((n, n), np.int8)
    for i in range(n):
        for j in ((i + 1) % n, (i - 1) % n):
            if j != i:
                a[i, j] = 1
    return a


def torus(rows: int, cols: int) -> np.ndarray:
    """Adjacency of the 2-D ``rows x cols`` torus (grid with wrap-around).

    Node ``r * cols + c`` is joined to its up/down/left/right neighbours (mod the
    grid size); with a side of 2 the two neighbours along it coincide.
    """
    rows, cols = _check_n(rows, "rows"), _check_n(cols, "cols")
    n = rows * cols
    a = np.zeros((n, n), np.int8)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                j = ((r + dr) % rows) * cols + (c + dc) % cols
                if j != i:
                    a[i, j] = 1
    return a


def is_connected(adjacency: np.ndarray) -> bool:
    """Whether the undirected graph is connected (breadth-first search)."""
    a = np.asarray(adjacency) != 0
    n = a.shape[0]
    seen = np.zeros(n, bool)
    seen[0] = True
    frontier = [0]
    while frontier:
        nxt = np.flatnonzero(a[frontier].any(0) & ~seen)
        seen[nxt] = True
        frontier = list(nxt)
    return bool(seen.all())


def erdos_renyi(n: int, p: float, *, seed: int = 0, max_tries: int = 1000) -> np.ndarray:
    """A connected G(n, p) graph: each edge present with probability ``p``.

    Draws are deterministic by ``seed`` and repeated until the graph is connected
    (``ValueError`` after ``max_tries`` draws: ``p`` is too small for ``n``).
    """
    n = _check_n(n)
    if not isinstance(p, (int, float, np.floating)) or not 0.0 < float(p) <= 1.0:
        raise ValueError(f"p must lie in (0, 1], got {p!r}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        upper = np.triu(rng.random((n, n)) < p, 1)
        a = (upper | upper.T).astype(np.int8)
        if is_connected(a):
            return a
    raise ValueError(f"no connected G(n={n}, p={p}) graph in {max_tries} draws; use a larger p (>~ log(n)/n)")


# --- mixing matrices ------------------------------------------------------------
def _check_adjacency(adjacency: Any) -> np.ndarray:
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"adjacency must be a non-empty square matrix, got shape {a.shape}")
    a = a != 0
    if not np.array_equal(a, a.T):
        raise ValueError("adjacency must be symmetric (an undirected graph)")
    if np.any(np.diag(a)):
        raise ValueError("adjacency must have no self loops (zero diagonal)")
    return a


def metropolis_hastings(adjacency: Any) -> np.ndarray:
    """Metropolis–Hastings weights of a graph: symmetric, doubly stochastic, float64.

    ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges, ``W_ii = 1 - sum_{j != i} W_ij``.
    """
    a = _check_adjacency(adjacency)
    deg = a.sum(1)
    w = np.where(a, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    w[np.diag_indices_from(w)] = 1.0 - w.sum(1)
    return w


def check_mixing_matrix(w: Any, *, atol: float = 1e-6) -> np.ndarray:
    """Return ``w`` as float64 if it is a doubly stochastic matrix, else ``ValueError``.

    Doubly stochastic: square, entries >= 0, every row and every column sums to 1
    (within ``atol``). Gossip with such a W preserves the workers' average.
    """
    if isinstance(w, jax.core.Tracer):
        raise ValueError("the mixing matrix must be concrete (a numpy array), not a traced value")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise ValueError(f"mixing matrix must be a non-empty square matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("mixing matrix has non-finite entries")
    if w.min() < -atol:
        raise ValueError(f"mixing matrix is not doubly stochastic: negative entry {w.min():.3g}")
    rows, cols = w.sum(1), w.sum(0)
    if np.max(np.abs(rows - 1)) > atol:
        i = int(np.argmax(np.abs(rows - 1)))
        raise ValueError(f"mixing matrix is not doubly stochastic: row {i} sums to {rows[i]:.6g}, not 1")
    if np.max(np.abs(cols - 1)) > atol:
        j = int(np.argmax(np.abs(cols - 1)))
        raise ValueError(f"mixing matrix is not doubly stochastic: column {j} sums to {cols[j]:.6g}, not 1")
    return w


def spectral_gap(w: Any) -> float:
    """``1 - |lambda_2(W)|``: one minus the second-largest eigenvalue modulus.

    1 for the complete graph's ``11^T / n``; close to 0 for poorly connected graphs
    (ring: ``O(1/n^2)``). Validates that W is doubly stochastic.
    """
    w = check_mixing_matrix(w)
    if w.shape[0] == 1:
        return 1.0
    lam = np.linalg.eigvalsh(w) if np.allclose(w, w.T) else np.linalg.eigvals(w)
    mod = np.sort(np.abs(lam))[::-1]
    return float(1.0 - mod[1])


# --- gossip ---------------------------------------------------------------------
class GossipPlan(NamedTuple):
    """A static schedule for ``x_i <- sum_j W_ij x_j`` with point-to-point messages.

    Round r sends along ``perms[r]`` (pairs ``(source, destination)``, each worker
    at most once as source and once as destination); ``weights[r, i]`` is
    ``W[i, source]`` for the message worker i receives in round r (0 if none).
    """

    self_weight: np.ndarray  # (n,) diagonal of W
    perms: tuple[tuple[tuple[int, int], ...], ...]
    weights: np.ndarray  # (rounds, n)
    degree: np.ndarray  # (n,) messages each worker sends per gossip step
    matrix: np.ndarray  # (n, n) W


def _bipartite_edge_colouring(edges: list[tuple[int, int]], n: int) -> list[list[tuple[int, int]]]:
    """Colour directed edges (u -> v) so no u sends twice and no v receives twice in
    one colour, with max-degree colours (Kempe-chain swaps; König's theorem)."""
    delta = 0
    for side in (0, 1):
        cnt = np.bincount([e[side] for e in edges], minlength=n) if edges else np.zeros(n, int)
        delta = max(delta, int(cnt.max()) if n else 0)
    # out_c[u][c] = v for edge u->v of colour c; in_c[v][c] = u
    out_c: list[dict[int, int]] = [dict() for _ in range(n)]
    in_c: list[dict[int, int]] = [dict() for _ in range(n)]

    def free(d: dict[int, int]) -> int:
        return next(c for c in range(delta) if c not in d)

    for u, v in edges:
        a, b = free(out_c[u]), free(in_c[v])
        if a not in in_c[v]:
            c = a
        elif b not in out_c[u]:
            c = b
        else:
            # Swap colours a <-> b along the alternating path that starts at the
            # right-side vertex v with its a-coloured edge; then a is free at v.
            path = []  # edges (src, dst, colour) along the path
            side, node, col = "in", v, a
            while True:
                table = in_c[node] if side == "in" else out_c[node]
                if col not in table:
                    break
                other = table[col]
                path.append((other, node, col) if side == "in" else (node, other, col))
                side, node, col = ("out" if side == "in" else "in"), other, (b if col == a else a)
            for s, d, c0 in path:
                del out_c[s][c0], in_c[d][c0]
            for s, d, c0 in path:
                c1 = b if c0 == a else a
                out_c[s][c1], in_c[d][c1] = d, s
            c = a
        out_c[u][c], in_c[v][c] = v, u
    rounds = [[(u, out_c[u][c]) for u in range(n) if c in out_c[u]] for c in range(delta)]
    return [r for r in rounds if r]


def gossip_plan(w: Any) -> GossipPlan:
    """The ppermute schedule for mixing matrix ``w`` (validated doubly stochastic)."""
    w = check_mixing_matrix(w)
    n = w.shape[0]
    edges = [(j, i) for i in range(n) for j in range(n) if i != j and w[i, j] != 0]  # j sends to i
    rounds = _bipartite_edge_colouring(edges, n)
    weights = np.zeros((len(rounds), n))
    for r, perm in enumerate(rounds):
        for src, dst in perm:
            weights[r, dst] = w[dst, src]
    degree = np.bincount([e[0] for e in edges], minlength=n) if edges else np.zeros(n, int)
    return GossipPlan(
        self_weight=np.diag(w).copy(),
        perms=tuple(tuple(p) for p in rounds),
        weights=weights,
        degree=degree,
        matrix=w,
    )


def gossip(x: Any, w: Any, *, axis_name: str = comm.AXIS, method: str = "ppermute") -> Any:
    """One gossip step for this worker: ``x_i <- sum_j W_ij x_j`` (per-worker code).

    Args:
      x: this worker's pytree of arrays.
      w: a doubly stochastic ``(n, n)`` numpy mixing matrix, or a :class:`GossipPlan`
        (precompute it with :func:`gossip_plan` to skip re-validation at trace time).
      method: ``"ppermute"`` (point-to-point, ``max_degree`` rounds) or
        ``"all_gather"`` (gather all n models, apply this worker's row of W).
    """
    plan = w if isinstance(w, GossipPlan) else None
    matrix = plan.matrix if plan is not None else check_mixing_matrix(w)
    n = comm.axis_size(axis_name)
    if matrix.shape[0] != n:
        raise ValueError(f"mixing matrix is {matrix.shape[0]}x{matrix.shape[0]} but there are {n} workers")
    me = comm.axis_index(axis_name)
    if method == "all_gather":
        row = jnp.asarray(matrix, jnp.float32)[me]
        g = comm.all_gather(x, axis_name)
        return jax.tree.map(lambda a: jnp.tensordot(row.astype(a.dtype), a, axes=1), g)
    if method != "ppermute":
        raise ValueError(f"unknown gossip method {method!r}; choose 'ppermute' or 'all_gather'")
    plan = plan if plan is not None else gossip_plan(matrix)
    self_w = jnp.asarray(plan.self_weight)[me]
    out = jax.tree.map(lambda a: self_w.astype(a.dtype) * a, x)
    for r, perm in enumerate(plan.perms):
        recv = comm.ppermute(x, perm, axis_name)
        wr = jnp.asarray(plan.weights[r])[me]
        out = jax.tree.map(lambda o, m: o + wr.astype(m.dtype) * m, out, recv)
    return out


def gossip_bytes(w: Any, x: Any, *, method: str = "ppermute") -> np.ndarray:
    """Exact bytes each worker sends in one :func:`gossip` step, shape ``(n,)``.

    ``ppermute``: ``degree_i * nbytes(x)``; ``all_gather``: ``nbytes(x)`` each.
    """
    plan = w if isinstance(w, GossipPlan) else gossip_plan(w)
    if method == "all_gather":
        return np.full(plan.matrix.shape[0], comm.nbytes(x), np.int64)
    return plan.degree.astype(np.int64) * comm.nbytes(x)


def consensus_distance(x: Any, axis_name: str = comm.AXIS) -> jax.Array:
    """``(1/n) sum_i ||x_i - xbar||^2`` over workers (per-worker code).

    A diagnostic: it uses ``comm.pmean`` twice, so evaluate it outside
    ``comm.counting()`` unless its traffic should count as the algorithm's.
    """
    mean = comm.pmean(x, axis_name)
    sq = sum(jnp.sum((a - m) ** 2) for a, m in zip(jax.tree.leaves(x), jax.tree.leaves(mean)))
    return comm.pmean(sq, axis_name)
