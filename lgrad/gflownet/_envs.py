"""Discrete GFlowNet environments as pure functions: the hypergrid and the set task.

An :class:`Environment` is a bundle of pure, jittable functions over an integer state
vector. Forward actions may include a "stop" action (the hypergrid), whose
transition goes to the terminal copy of the state; it has no backward action
(``back_action = -1``, :math:`\\log P_B = 0`). Energies :math:`E(s)` are defined on
every state, so FL-DB's transition reward :math:`\\log r(s\\to s') = -(E(s') - E(s))`
is available along the trajectory (docs/papers/flgfn-credit.md).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Environment(NamedTuple):
    """A discrete environment: sizes plus pure functions of a state (int32 vector)."""

    name: str
    n_actions: int  # forward actions (the stop action included, if any)
    n_back: int  # backward actions
    max_len: int  # upper bound on transitions per trajectory
    feature_dim: int
    init: Callable[[], jax.Array]
    features: Callable[[jax.Array], jax.Array]
    forward_mask: Callable[[jax.Array], jax.Array]
    backward_mask: Callable[[jax.Array], jax.Array]
    step: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]  # (s', back action or -1)
    is_terminal: Callable[[jax.Array], jax.Array]
    energy: Callable[[jax.Array], jax.Array]  # E(s); log R(x) = -E(x) at terminal x


# ----------------------------------------------------------------------------- hypergrid
def hypergrid_log_reward(coords, *, height: int, r0: float, r1: float, r2: float):
    """Hypergrid reward (Bengio et al. 2021), coordinates in ``[0, H-1]``:

    .. math:: R(x) = r_0 + r_1 \\prod_i 1[0.25 < |x_i/(H-1) - 0.5|]
              + r_2 \\prod_i 1[0.3 < |x_i/(H-1) - 0.5| < 0.4];

    returns :math:`\\log R` (last axis = dimensions).
    """
    a = jnp.abs(jnp.asarray(coords) / (height - 1) - 0.5)
    outer = jnp.all(a > 0.25, axis=-1)
    ring = jnp.all((a > 0.3) & (a < 0.4), axis=-1)
    return jnp.log(r0 + r1 * outer + r2 * ring)


def hypergrid(*, height: int = 8, ndim: int = 2, r0: float = 1e-3, r1: float = 0.5, r2: float = 2.0) -> Environment:
    """The ``ndim``-dimensional hypergrid of side ``height``: from the origin, action
    ``i < ndim`` increments coordinate ``i``, action ``ndim`` stops. State: the
    coordinates plus a terminated flag. Energy :math:`E(s) = -\\log R(s)` on every
    state (the terminated copy keeps it, so the stop transition has :math:`r = 1`)."""
    if not (isinstance(height, int) and height >= 2):
        raise ValueError(f"height: must be an integer >= 2, got {height!r}")
    if not (isinstance(ndim, int) and ndim >= 1):
        raise ValueError(f"ndim: must be an integer >= 1, got {ndim!r}")
    for key, v in (("r0", r0), ("r1", r1), ("r2", r2)):
        if not v >= 0 or (key == "r0" and not v > 0):
            raise ValueError(f"{key}: must be {'> 0' if key == 'r0' else '>= 0'}, got {v!r}")

    def features(s):
        return jnp.concatenate([jax.nn.one_hot(s[:ndim], height).reshape(-1), s[ndim:].astype(jnp.float32)])

    def forward_mask(s):
        return jnp.concatenate([s[:ndim] < height - 1, jnp.ones(1, bool)]) & (s[ndim] == 0)

    def backward_mask(s):
        return s[:ndim] > 0

    def step(s, a):
        stop = a == ndim
        inc = jax.nn.one_hot(a, ndim, dtype=s.dtype) * (1 - stop)
        nxt = jnp.concatenate([s[:ndim] + inc, jnp.where(stop, 1, s[ndim:])])
        return nxt, jnp.where(stop, -1, a)

    return Environment(
        name="hypergrid",
        n_actions=ndim + 1,
        n_back=ndim,
        max_len=ndim * (height - 1) + 1,
        feature_dim=ndim * height + 1,
        init=lambda: jnp.zeros(ndim + 1, jnp.int32),
        features=features,
        forward_mask=forward_mask,
        backward_mask=backward_mask,
        step=step,
        is_terminal=lambda s: s[ndim] == 1,
        energy=lambda s: -hypergrid_log_reward(s[:ndim], height=height, r0=r0, r1=r1, r2=r2),
    )


def hypergrid_states(height: int, ndim: int) -> np.ndarray:
    """All ``height**ndim`` non-terminated states (flag 0), row-major (the last coordinate fastest)."""
    grid = np.array(list(itertools.product(range(height), repeat=ndim)), dtype=np.int32).reshape(-1, ndim)
    return np.concatenate([grid, np.zeros((len(grid), 1), np.int32)], axis=1)


def hypergrid_terminal_distribution(log_pf_all, height: int, ndim: int):
    """Exact terminal distribution of a forward policy on the hypergrid (dynamic programming).

    ``log_pf_all``: ``(height**ndim, ndim + 1)`` log-probabilities of the actions at
    every state of :func:`hypergrid_states`. Returns ``(height**ndim,)``:
    :math:`P_T(x) = P(\\text{reach } x)\\,P_F(\\text{stop}|x)`.
    """
    n = height**ndim
    pf = jnp.exp(log_pf_all)
    strides = [height ** (ndim - 1 - i) for i in range(ndim)]
    coords = jnp.asarray(hypergrid_states(height, ndim)[:, :ndim])

    def body(i, reach):
        inflow = 0.0
        for d in range(ndim):
            parent = i - strides[d]
            ok = coords[i, d] > 0
            inflow = inflow + jnp.where(ok, reach[jnp.where(ok, parent, 0)] * pf[jnp.where(ok, parent, 0), d], 0.0)
        return reach.at[i].set(jnp.where(i == 0, 1.0, inflow))

    reach = jax.lax.fori_loop(0, n, body, jnp.zeros(n, pf.dtype))
    return reach * pf[:, ndim]


# ----------------------------------------------------------------------------- set task
def set_energies(n_elements: int = 30, *, n_values: int = 8, seed: int = 0) -> np.ndarray:
    """Per-element energies of the set task: ``n_values`` distinct values drawn
    uniformly in ``[-1, 1]``, each element assigned one at random (the structure of
    the authors' released small/medium/large instances; our values are our own draw)."""
    if not (isinstance(n_elements, int) and n_elements >= 1):
        raise ValueError(f"n_elements: must be an integer >= 1, got {n_elements!r}")
    if not (isinstance(n_values, int) and 1 <= n_values):
        raise ValueError(f"n_values: must be an integer >= 1, got {n_values!r}")
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1.0, 1.0, n_values)
    return values[rng.integers(0, n_values, n_elements)].astype(np.float32)


def set_env(energies, *, set_size: int = 20) -> Environment:
    """Set generation (Pan et al. 2023): add one of ``n = len(energies)`` elements per
    step until the set holds ``set_size``; :math:`E(s) = \\sum_{u \\in s} e_u`, so
    :math:`\\log r(s \\to s \\cup \\{u\\}) = -e_u` and :math:`R(x) = e^{-E(x)}`. No stop
    action; backward action ``u`` removes ``u``."""
    e = jnp.asarray(energies, jnp.float32)
    n = int(e.shape[0])
    if not (isinstance(set_size, int) and 1 <= set_size <= n):
        raise ValueError(f"set_size: must be an integer in [1, {n}], got {set_size!r}")

    def step(s, a):
        return s.at[a].set(1), a

    return Environment(
        name="set",
        n_actions=n,
        n_back=n,
        max_len=set_size,
        feature_dim=n,
        init=lambda: jnp.zeros(n, jnp.int32),
        features=lambda s: s.astype(jnp.float32),
        forward_mask=lambda s: s == 0,
        backward_mask=lambda s: s == 1,
        step=step,
        is_terminal=lambda s: jnp.sum(s) == set_size,
        energy=lambda s: jnp.sum(e * s),
    )


def set_top_rewards(energies, set_size: int, k: int = 100) -> np.ndarray:
    """The ``k`` largest rewards :math:`e^{-E(x)}` over all sets of ``set_size``
    elements, exactly: sets are grouped by how many elements of each distinct energy
    value they hold (multiplicity = product of binomials)."""
    e = np.asarray(energies, np.float64)
    values, counts = np.unique(e, return_counts=True)
    groups = []
    for take in itertools.product(*[range(c + 1) for c in counts]):
        if sum(take) == set_size:
            mult = math.prod(math.comb(int(c), int(t)) for c, t in zip(counts, take))
            groups.append((float(np.dot(values, take)), mult))
    groups.sort()
    out: list[float] = []
    for energy, mult in groups:
        out.extend([math.exp(-energy)] * min(mult, k - len(out)))
        if len(out) >= k:
            break
    return np.asarray(out)
